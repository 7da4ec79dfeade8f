"""The shop's HTTP API (FastAPI on async SQLAlchemy), built for one configuration of fixes."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import orjson
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from ...concurrent import (
    CircuitBreaker,
    CircuitOpenError,
    DeadlineExceeded,
    gather_bounded,
    with_deadline,
)
from ...paging import InvalidCursor
from ...pool import PoolMetrics, PoolPlan
from ...routing import ASGITokenMiddleware, AsyncReplicaSet, async_routed_sessionmaker
from . import queries
from .caching import CATALOG_TTL_S, USER_TTL_S, ShopCache, sales_tags, user_orders_tag
from .fixes import Fixes


@dataclass
class ShopSettings:
    """Where the shop's servers are and which fixes are on; ``concurrency``: the requests in
    flight on the whole server at once, spread over ``workers`` processes."""

    primary_url: str
    payment_url: str
    fixes: Fixes = field(default_factory=Fixes)
    replica_urls: list[str] = field(default_factory=list)
    redis_url: str | None = None
    # the cache's keys and invalidation channel: servers with their own see none of each
    # other's fills and invalidations (a benchmark serving two shops side by side)
    cache_namespace: str = "shop"
    concurrency: int = 16
    workers: int = 1

    @property
    def concurrency_per_process(self) -> int:
        # the kernel hands connections to the workers about evenly; a pool's wait covers
        # the worker that gets a few more
        return -(-self.concurrency // self.workers)


T = TypeVar("T")

PAYMENT_DEADLINE_S = 0.25  # the payment provider answers in ~50 ms when healthy
RISK_CHECK_S = 0.03  # what the risk vendor's synchronous SDK takes per call


def risk_check(user_id: int) -> str:
    """The risk vendor's SDK: synchronous, no async API. Called as is from an ``async``
    handler, it blocks the event loop, and every other request waits with it."""
    time.sleep(RISK_CHECK_S)
    return "review" if user_id % 10 == 0 else "ok"


def export_json(rows: list[dict[str, Any]]) -> bytes:
    """The category export as JSON in one pass of orjson: the values converted as FastAPI's
    ``jsonable_encoder`` converts them (a ``Decimal`` with cents as a float, a ``datetime`` in
    ISO 8601), so that the bytes decode to the same data."""
    return orjson.dumps(
        [
            {**row, "price": float(row["price"]), "created_at": row["created_at"].isoformat()}
            for row in rows
        ]
    )


class OrderLine(BaseModel):
    product_id: int
    quantity: int = Field(ge=1, le=100)


class NewOrder(BaseModel):
    user_id: int
    lines: list[OrderLine] = Field(min_length=1, max_length=20)


@dataclass
class _Database:
    """The engines of one configuration and how sessions are made from them."""

    primary: AsyncEngine
    replicas: list[AsyncEngine]
    pool_metrics: list[PoolMetrics]
    replica_set: AsyncReplicaSet | None = None

    @property
    def engines(self) -> list[AsyncEngine]:
        return [self.primary, *self.replicas]

    async def close(self) -> None:
        if self.replica_set is not None:
            await self.replica_set.close()
        for engine in self.engines:
            await engine.dispose()


def _database(settings: ShopSettings) -> _Database:
    fixes = settings.fixes
    replica_urls = settings.replica_urls if fixes.replicas else []
    if fixes.pool:
        # sized from the servers' real budgets for every worker process's pool together,
        # metered (connections opened, waits, holders)
        plan = PoolPlan.for_app(
            processes=settings.workers,
            concurrency_per_process=settings.concurrency_per_process,
            server_url=settings.primary_url,
            replica_urls=replica_urls,
        )
        primary = create_async_engine(settings.primary_url, **plan.async_engine_kwargs())
        replicas = [
            create_async_engine(url, **plan.async_engine_kwargs(replica=True))
            for url in replica_urls
        ]
        metrics = [plan.instrument(engine) for engine in [primary, *replicas]]
    else:
        # naive: every session opens (and closes) its own connection
        primary = create_async_engine(settings.primary_url, poolclass=NullPool)
        replicas = [create_async_engine(url, poolclass=NullPool) for url in replica_urls]
        metrics = []
    database = _Database(primary, replicas, metrics)
    if replicas:
        database.replica_set = AsyncReplicaSet(primary, replicas, max_lag_s=1.0)
    return database


async def _profile(
    user_id: int,
    cached: Any,
    payments: httpx.AsyncClient,
    breaker: CircuitBreaker | None,
    offload: bool,
) -> dict[str, Any]:
    """A user's profile from four sources: the risk check, the user, their orders, the payment
    provider."""
    # the offload fix: the blocking SDK call in a worker thread, the loop free meanwhile
    risk = await asyncio.to_thread(risk_check, user_id) if offload else risk_check(user_id)

    async def user() -> dict[str, Any] | None:
        async def load(session: AsyncSession) -> dict[str, Any] | None:
            return await queries.user_info(session, user_id)

        return await cached(f"user:{user_id}", (f"user:{user_id}",), load, USER_TTL_S)  # type: ignore[no-any-return]

    async def orders() -> dict[str, Any]:
        async def load(session: AsyncSession) -> dict[str, Any]:
            return await queries.order_summary(session, user_id)

        tags = (user_orders_tag(user_id),)
        return await cached(f"order-summary:{user_id}", tags, load, USER_TTL_S)  # type: ignore[no-any-return]

    async def payment() -> dict[str, Any]:
        response = await payments.get(f"/payments/{user_id}")
        response.raise_for_status()
        return dict(response.json())

    paid: dict[str, Any] | None
    if breaker is not None:
        # the fanout fix: all three at once; the external one under a deadline and a circuit
        # breaker, and a profile without it (degraded) rather than no profile
        async def bounded_payment() -> dict[str, Any]:
            return await with_deadline(payment(), PAYMENT_DEADLINE_S, "the payment provider")

        async def guarded_payment() -> dict[str, Any] | None:
            try:
                return dict(await breaker.acall(bounded_payment))
            except (CircuitOpenError, DeadlineExceeded, httpx.HTTPError):
                return None

        found, summary, paid = await gather_bounded(user(), orders(), guarded_payment())
    else:
        # naive: one after another, and no deadline on the external call
        found, summary = await user(), await orders()
        try:
            paid = await payment()
        except httpx.HTTPStatusError:
            paid = None
    if found is None:
        raise HTTPException(404, f"no user {user_id}")
    return {**found, **summary, "risk": risk, "payment": paid, "degraded": paid is None}


@dataclass
class _Readers:
    """How a configuration reads: its sessions, and its cache (when it has the fix)."""

    sessions: Any
    shop_cache: ShopCache | None

    async def cached(
        self,
        key: str,
        tags: tuple[str, ...],
        loader: Callable[[AsyncSession], Awaitable[T]],
        ttl: float = CATALOG_TTL_S,
    ) -> T:
        """``loader``'s answer, through the cache when the configuration has it."""
        if self.shop_cache is not None:
            return await self.shop_cache.read(key, tags, loader, ttl)
        async with self.sessions() as session:
            return await loader(session)


def _readers(settings: ShopSettings, database: _Database) -> _Readers:
    if database.replica_set is not None:
        # reads on replicas that have replayed this user's last write (token in a cookie)
        sessions: Any = async_routed_sessionmaker(database.replica_set, expire_on_commit=False)
        fill_sessions: Any = functools.partial(sessions, writing=True)
    else:
        sessions = fill_sessions = async_sessionmaker(database.primary, expire_on_commit=False)
    if not settings.fixes.cache:
        return _Readers(sessions, None)
    if settings.redis_url is None:
        raise ValueError("the cache fix needs a Redis: pass ShopSettings(redis_url=...)")
    cache = ShopCache(settings.redis_url, sessions, fill_sessions, settings.cache_namespace)
    return _Readers(sessions, cache)


def create_app(settings: ShopSettings) -> FastAPI:
    fixes = settings.fixes
    database = _database(settings)
    readers = _readers(settings, database)
    sessions, shop_cache, cached = readers.sessions, readers.shop_cache, readers.cached
    # idle connections dropped by the client before the server's keep-alive (uvicorn's 5 s)
    # closes them: a connection reused as the server closed it failed the call ("Server
    # disconnected without sending a response", twice in a make demo run)
    payments = httpx.AsyncClient(
        base_url=settings.payment_url, timeout=None, limits=httpx.Limits(keepalive_expiry=2.0)
    )
    breaker = CircuitBreaker(failure_threshold=5, reset_timeout=5.0, name="payments")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if database.replica_set is not None:
            await database.replica_set.start()
        yield
        await payments.aclose()
        if shop_cache is not None:
            await shop_cache.close()
        await database.close()

    app = FastAPI(title=f"hotpath shop ({fixes.label})", lifespan=lifespan)
    app.state.breaker = breaker
    app.state.engine = database.primary
    app.state.database = database
    app.state.cache = shop_cache
    if database.replica_set is not None:
        app.add_middleware(ASGITokenMiddleware)
    app.state.settings = settings

    @app.get("/categories/{category_id}/products")
    async def list_products(
        category_id: int,
        min_price: Decimal | None = None,
        max_price: Decimal | None = None,
        page: int = 0,
        after: str | None = None,
    ) -> dict[str, Any]:
        async def load(session: AsyncSession) -> dict[str, Any]:
            return await queries.list_products(
                session, fixes, category_id, min_price, max_price, page, after
            )

        key = f"products:{category_id}:{min_price}:{max_price}:{page}:{after}"
        try:
            return await cached(key, ("catalog",), load)
        except InvalidCursor as exc:
            raise HTTPException(400, f"bad 'after' cursor: {exc}") from exc

    @app.get("/products/{product_id}")
    async def product_detail(product_id: int) -> dict[str, Any]:
        async with sessions() as session:  # cached by the ORM query cache (see queries)
            found = await queries.product_detail(session, fixes, product_id)
        if found is None:
            raise HTTPException(404, f"no product {product_id}")
        return found

    @app.get("/users/{user_id}/orders")
    async def user_orders(user_id: int) -> list[dict[str, Any]]:
        async def load(session: AsyncSession) -> list[dict[str, Any]]:
            return await queries.user_orders(session, fixes, user_id)

        return await cached(f"orders:{user_id}", (user_orders_tag(user_id),), load, USER_TTL_S)

    def order_placed(session: AsyncSession, order: Any) -> None:
        if shop_cache is not None:
            shop_cache.order_placed(session, order.user_id, order.created_at.date())

    @app.post("/orders", status_code=201)
    async def place_order(order: NewOrder) -> dict[str, Any]:
        async with sessions() as session:
            try:
                return await queries.place_order(
                    session,
                    order.user_id,
                    [(line.product_id, line.quantity) for line in order.lines],
                    order_placed,
                )
            except LookupError as exc:
                raise HTTPException(422, str(exc)) from exc

    @app.get("/search")
    async def search(q: str) -> list[dict[str, Any]]:
        async def load(session: AsyncSession) -> list[dict[str, Any]]:
            return await queries.search_products(session, q)

        return await cached(f"search:{q}", ("catalog",), load)

    @app.get("/reports/sales")
    async def sales(start: date, days: int = Query(7, ge=1, le=366)) -> list[dict[str, Any]]:
        async def load(session: AsyncSession) -> list[dict[str, Any]]:
            return await queries.sales_report(session, start, days)

        return await cached(f"sales:{start}:{days}", sales_tags(start, days), load)

    @app.get("/users/{user_id}/profile")
    async def profile(user_id: int) -> dict[str, Any]:
        return await _profile(
            user_id, cached, payments, breaker if fixes.fanout else None, fixes.offload
        )

    _add_export(app, sessions, fixes)
    return app


def _add_export(app: FastAPI, sessions: Any, fixes: Fixes) -> None:
    @app.get("/categories/{category_id}/export", response_model=None)
    async def category_export(category_id: int) -> Any:
        async with sessions() as session:
            rows = await queries.category_export(session, category_id)
        if fixes.lean:
            return Response(export_json(rows), media_type="application/json")
        # naive: the rows handed to FastAPI, whose generic jsonable_encoder walks every value
        # of every row in Python before json.dumps
        return rows
