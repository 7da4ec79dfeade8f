"""The shop's data access: one function per endpoint, the same code for every
configuration. Each fix changes *how* the data is fetched, never *what* is returned: every
function returns plain JSON-ready values, compared across configurations by the tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from ...paging import keyset_page_async
from .fixes import Fixes
from .models import Order, OrderEvent, OrderItem, Product, Review, User

PAGE_SIZE = 20


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def _row(product: Product, category: str, reviews: int, rating_sum: int) -> dict[str, Any]:
    return {
        "id": product.id,
        "name": product.name,
        "price": _money(product.price),
        "category": category,
        "reviews": reviews,
        "rating": round(rating_sum / reviews, 2) if reviews else None,
    }


async def _product_rows(
    session: AsyncSession, fixes: Fixes, products: list[Product]
) -> list[dict[str, Any]]:
    """The list/detail row of each product: its category and its reviews' count and rating.

    Naive: each product's category and every one of its reviews are lazy-loaded (the N+1
    observe reports, and thousands of review rows for a popular product). The eager fix: the
    categories come joined with the products, and one grouped query sums the page's reviews.
    """
    if not fixes.eager:
        rows = []
        for product in products:
            category = await product.awaitable_attrs.category
            ratings = [r.rating for r in await product.awaitable_attrs.reviews]
            rows.append(_row(product, category.name, len(ratings), sum(ratings)))
        return rows
    query = (
        select(Review.product_id, func.count(), func.sum(Review.rating))
        .where(Review.product_id.in_([p.id for p in products]))
        .group_by(Review.product_id)
    )
    if fixes.cache:
        query = query.execution_options(hotpath_cache=True)
    totals = {pid: (n, int(total)) for pid, n, total in await session.execute(query)}
    return [_row(p, p.category.name, *totals.get(p.id, (0, 0))) for p in products]


def product_list_query(
    category_id: int, min_price: Decimal | None, max_price: Decimal | None, fixes: Fixes
) -> Select[Any]:
    query = select(Product).where(Product.category_id == category_id, Product.is_active)
    if min_price is not None:
        query = query.where(Product.price >= min_price)
    if max_price is not None:
        query = query.where(Product.price <= max_price)
    if fixes.eager:
        query = query.options(joinedload(Product.category))
    return query


NEWEST_FIRST = (Product.created_at.desc(), Product.id.desc())


async def list_products(
    session: AsyncSession,
    fixes: Fixes,
    category_id: int,
    min_price: Decimal | None = None,
    max_price: Decimal | None = None,
    page: int = 0,
    after: str | None = None,
) -> dict[str, Any]:
    """A page of a category's active products, newest first.

    Naive: OFFSET paging (``page``), which reads every earlier row. The keyset fix: the
    "next" link carries a cursor (``after``), and every page costs the same.
    """
    query = product_list_query(category_id, min_price, max_price, fixes)
    follow: dict[str, Any] | None
    if fixes.keyset and page == 0:
        found = await keyset_page_async(session, query, NEWEST_FIRST, after, PAGE_SIZE)
        products = found.items
        follow = {"after": found.next_cursor} if found.next_cursor else None
    else:
        query = query.order_by(*NEWEST_FIRST).offset(page * PAGE_SIZE).limit(PAGE_SIZE)
        products = list((await session.scalars(query)).all())
        follow = {"page": page + 1} if len(products) == PAGE_SIZE else None
    items = await _product_rows(session, fixes, products)
    return {"items": items, "next": follow}


async def product_detail(
    session: AsyncSession, fixes: Fixes, product_id: int
) -> dict[str, Any] | None:
    query = select(Product).where(Product.id == product_id)
    if fixes.eager:
        query = query.options(joinedload(Product.category))
    if fixes.cache:
        # the ORM query cache: invalidated when products, categories or reviews are written
        query = query.execution_options(hotpath_cache=True)
    product = (await session.scalars(query)).first()
    if product is None:
        return None
    [row] = await _product_rows(session, fixes, [product])
    row["description"] = product.description
    if fixes.eager:  # the newest five, not every review of the product
        latest = (
            select(Review)
            .where(Review.product_id == product_id)
            .order_by(Review.created_at.desc(), Review.id.desc())
            .limit(5)
        )
        if fixes.cache:
            latest = latest.execution_options(hotpath_cache=True)
        reviews = list((await session.scalars(latest)).all())
    else:
        every = await product.awaitable_attrs.reviews  # already loaded for the row
        reviews = sorted(every, key=lambda r: (r.created_at, r.id), reverse=True)[:5]
    row["latest_reviews"] = [{"rating": r.rating, "body": r.body} for r in reviews]
    return row


async def user_orders(session: AsyncSession, fixes: Fixes, user_id: int) -> list[dict[str, Any]]:
    """A user's latest 10 orders with their items and product names."""
    query = (
        select(Order)
        .where(Order.user_id == user_id)
        .order_by(Order.created_at.desc(), Order.id.desc())
        .limit(10)
    )
    if fixes.eager:
        query = query.options(selectinload(Order.items).joinedload(OrderItem.product))
    orders = (await session.scalars(query)).all()
    result = []
    for order in orders:
        items = []
        for item in await order.awaitable_attrs.items:
            product = await item.awaitable_attrs.product
            items.append(
                {
                    "product": product.name,
                    "quantity": item.quantity,
                    "unit_price": _money(item.unit_price),
                }
            )
        result.append(
            {
                "id": order.id,
                "status": order.status,
                "total": _money(order.total),
                "created_at": order.created_at.isoformat(),
                "items": items,
            }
        )
    return result


async def place_order(
    session: AsyncSession,
    user_id: int,
    lines: list[tuple[int, int]],
    before_commit: Callable[[AsyncSession, Order], None] | None = None,
) -> dict[str, Any]:
    """Create an order for ``lines`` of (product id, quantity) at today's prices;
    ``before_commit`` may queue work that must happen only if the order commits."""
    prices = dict(
        (
            await session.execute(
                select(Product.id, Product.price).where(Product.id.in_([p for p, _ in lines]))
            )
        ).all()
    )
    missing = [p for p, _ in lines if p not in prices]
    if missing:
        raise LookupError(f"unknown products: {missing}")
    order = Order(
        user_id=user_id,
        status="paid",
        created_at=datetime.now(timezone.utc),
        total=sum((prices[p] * q for p, q in lines), Decimal("0")),
        items=[OrderItem(product_id=p, quantity=q, unit_price=prices[p]) for p, q in lines],
    )
    session.add(order)
    await session.flush()
    session.add(OrderEvent(order_id=order.id, kind="placed", created_at=order.created_at))
    if before_commit is not None:
        before_commit(session, order)
    await session.commit()
    return {"id": order.id, "total": _money(order.total)}


async def search_products(session: AsyncSession, q: str) -> list[dict[str, Any]]:
    """Full-text search on product names (the same predicate with or without its index)."""
    rows = await session.execute(
        text(
            "SELECT id, name, price FROM products"
            " WHERE to_tsvector('simple', name) @@ plainto_tsquery('simple', :q)"
            " ORDER BY id LIMIT 20"
        ),
        {"q": q},
    )
    return [{"id": i, "name": n, "price": _money(p)} for i, n, p in rows]


async def sales_report(session: AsyncSession, start: date, days: int) -> list[dict[str, Any]]:
    """Orders and revenue per day over ``days`` days from ``start``."""
    begin = datetime(start.year, start.month, start.day, tzinfo=timezone.utc)
    day = func.date_trunc("day", Order.created_at)
    rows = await session.execute(
        select(day, func.count(), func.sum(Order.total))
        .where(Order.created_at >= begin, Order.created_at < begin + timedelta(days=days))
        .group_by(day)
        .order_by(day)
    )
    return [
        {"day": d.date().isoformat(), "orders": n, "revenue": _money(total)} for d, n, total in rows
    ]


async def user_info(session: AsyncSession, user_id: int) -> dict[str, Any] | None:
    user = await session.get(User, user_id)
    return None if user is None else {"id": user.id, "name": user.name}


async def order_summary(session: AsyncSession, user_id: int) -> dict[str, Any]:
    totals = select(func.count(), func.coalesce(func.sum(Order.total), 0))
    count, spent = (await session.execute(totals.where(Order.user_id == user_id))).one()
    return {"orders": count, "spent": _money(spent)}


async def category_export(session: AsyncSession, category_id: int) -> list[dict[str, Any]]:
    """Every product of a category, description included (a feed for a partner): one cheap
    query and a large result, so the response's time is mostly its serialization. The values
    stay Python's (``Decimal``, ``datetime``); how they become JSON is the endpoint's choice."""
    columns = (
        Product.id,
        Product.category_id,
        Product.name,
        Product.description,
        Product.price,
        Product.is_active,
        Product.created_at,
    )
    query = select(*columns).where(Product.category_id == category_id).order_by(Product.id)
    return [dict(row._mapping) for row in await session.execute(query)]
