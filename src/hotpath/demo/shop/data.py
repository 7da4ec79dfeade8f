"""Deterministic shop data: the same seed and scale always give the same rows.

Popularity follows a Zipf law (a few products and users get most of the traffic and the
orders), as real shops do; the load generator uses the same distribution.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg

from .models import Base

EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)
DAYS = 365
_WORDS = (
    "alpine",
    "amber",
    "basic",
    "bold",
    "cedar",
    "classic",
    "cobalt",
    "compact",
    "copper",
    "crisp",
    "deluxe",
    "eco",
    "ember",
    "fjord",
    "granite",
    "harbor",
    "indigo",
    "ivory",
    "juniper",
    "linen",
    "lunar",
    "maple",
    "marble",
    "meadow",
    "nimbus",
    "nova",
    "oak",
    "onyx",
    "orbit",
    "pacific",
    "pebble",
    "pine",
    "prism",
    "quartz",
    "raven",
    "river",
    "sage",
    "slate",
    "solar",
    "spruce",
    "stone",
    "summit",
    "terra",
    "tidal",
    "urban",
    "velvet",
    "willow",
    "zephyr",
)
_THINGS = (
    "backpack",
    "bottle",
    "chair",
    "desk",
    "headphones",
    "jacket",
    "kettle",
    "lamp",
    "mug",
    "notebook",
    "pan",
    "pillow",
    "shoes",
    "speaker",
    "tent",
    "watch",
)


@dataclass(frozen=True)
class Scale:
    """How big the generated shop is."""

    name: str
    users: int
    categories: int
    products: int
    orders: int
    max_items_per_order: int = 4
    reviews: int = 0


SCALES: dict[str, Scale] = {
    "tiny": Scale("tiny", users=500, categories=20, products=2_000, orders=5_000, reviews=2_000),
    "small": Scale(
        "small", users=20_000, categories=50, products=100_000, orders=500_000, reviews=100_000
    ),
    "medium": Scale(
        "medium", users=100_000, categories=100, products=300_000, orders=2_000_000, reviews=500_000
    ),
}


class Zipf:
    """Ranks 1..n drawn with probability proportional to 1 / rank^s."""

    def __init__(self, n: int, s: float = 1.1) -> None:
        self.n = n
        self._cumulative = list(itertools.accumulate(1.0 / (k**s) for k in range(1, n + 1)))

    def draw(self, rng: random.Random) -> int:
        return rng.choices(range(1, self.n + 1), cum_weights=self._cumulative, k=1)[0]

    def draws(self, rng: random.Random, k: int) -> list[int]:
        return rng.choices(range(1, self.n + 1), cum_weights=self._cumulative, k=k)


def _timestamp(rng: random.Random) -> datetime:
    return EPOCH + timedelta(seconds=rng.randrange(DAYS * 86_400))


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} {rng.choice(_THINGS)}"


def _price(product_id: int) -> Decimal:
    return Decimal(500 + (product_id * 7919) % 49_500) / 100  # 5.00 .. 499.99, stable per id


def generate(scale: Scale, seed: int = 42) -> dict[str, Callable[[], Iterator[tuple[Any, ...]]]]:
    """Row generators per table (in load order); each yields tuples in the table's columns."""

    def users() -> Iterator[tuple[Any, ...]]:
        rng = random.Random(f"{seed}:users")
        for i in range(1, scale.users + 1):
            yield (i, f"User {i}", f"user{i}@example.com", _timestamp(rng))

    def categories() -> Iterator[tuple[Any, ...]]:
        for i in range(1, scale.categories + 1):
            yield (i, f"{_WORDS[i % len(_WORDS)].title()} {_THINGS[i % len(_THINGS)]}s")

    def products() -> Iterator[tuple[Any, ...]]:
        rng = random.Random(f"{seed}:products")
        for i in range(1, scale.products + 1):
            name = _name(rng)
            yield (
                i,
                1 + (i * 31) % scale.categories,
                name,
                f"The {name}: {rng.choice(_WORDS)} finish, {rng.choice(_WORDS)} feel.",
                _price(i),
                rng.random() < 0.9,
                _timestamp(rng),
            )

    def orders_and_items() -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
        rng = random.Random(f"{seed}:orders")
        buyers, goods = Zipf(scale.users), Zipf(scale.products)
        item_id = itertools.count(1)
        for order_id in range(1, scale.orders + 1):
            products_bought = goods.draws(rng, rng.randint(1, scale.max_items_per_order))
            items = [
                (next(item_id), order_id, p, rng.randint(1, 3), _price(p)) for p in products_bought
            ]
            total = sum((q * price for _, _, _, q, price in items), Decimal("0"))
            status = rng.choice(("paid", "paid", "paid", "shipped", "delivered", "cancelled"))
            yield (order_id, buyers.draw(rng), status, total, _timestamp(rng)), items

    def orders() -> Iterator[tuple[Any, ...]]:
        return (order for order, _ in orders_and_items())

    def order_items() -> Iterator[tuple[Any, ...]]:
        return (item for _, items in orders_and_items() for item in items)

    def reviews() -> Iterator[tuple[Any, ...]]:
        rng = random.Random(f"{seed}:reviews")
        goods, writers = Zipf(scale.products), Zipf(scale.users)
        for i in range(1, scale.reviews + 1):
            yield (
                i,
                goods.draw(rng),
                writers.draw(rng),
                rng.randint(1, 5),
                f"{rng.choice(_WORDS)} and {rng.choice(_WORDS)}",
                _timestamp(rng),
            )

    return {
        "users": users,
        "categories": categories,
        "products": products,
        "orders": orders,
        "order_items": order_items,
        "reviews": reviews,
    }


def expected_rows(scale: Scale) -> int:
    """About how many rows :func:`load_shop` writes (order items are drawn at random)."""
    items = scale.orders * (1 + scale.max_items_per_order) // 2
    return scale.users + scale.categories + scale.products + scale.orders + items + scale.reviews


def columns_of(table: str) -> Sequence[str]:
    return [c.name for c in Base.metadata.tables[table].columns]


def load_shop(
    dsn: str,
    scale: Scale,
    seed: int = 42,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Create the schema (primary keys only) and fill it with ``hotpath.bulk``'s COPY;
    returns rows per table. ``progress(table, rows_so_far)`` is called every 10,000 rows."""
    from sqlalchemy import create_engine, text  # noqa: PLC0415

    from ...bulk import copy_rows  # noqa: PLC0415
    from ...partitions import ensure_partitions  # noqa: PLC0415

    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        counts: dict[str, int] = {}
        with engine.begin() as conn:
            for table, rows in generate(scale, seed).items():
                counts[table] = copy_rows(
                    conn,
                    Base.metadata.tables[table],
                    _reporting(table, rows(), progress),
                    columns_of(table),
                )
                # COPY wrote explicit ids: move the SERIAL sequence past them for new rows
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                        f" (SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
                    )
                )
        # order events are range-partitioned by month: this month's and the next three
        ensure_partitions(engine, "order_events", "month", ahead=3)
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()
    return counts


def _reporting(
    table: str, rows: Iterator[tuple[Any, ...]], progress: Callable[[str, int], None] | None
) -> Iterator[tuple[Any, ...]]:
    count = 0
    for row in rows:
        yield row
        count += 1
        if progress is not None and count % 10_000 == 0:
            progress(table, count)
    if progress is not None:
        progress(table, count)
