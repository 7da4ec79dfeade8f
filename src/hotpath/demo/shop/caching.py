"""The shop's cache fix: which answers are cached, under which tags, and who invalidates them.

- Catalog answers (product pages, search) are cached by key under the ``catalog`` tag; the
  product detail query goes through the ORM query cache (``hotpath.cache.orm``), invalidated
  by table version stamps whenever products, categories or reviews are written.
- Per-user answers (orders, order summary, user) are tagged ``user-orders:{id}`` /
  ``user:{id}``; placing an order queues ``user-orders:{id}`` and ``sales-day:{date}`` on the
  order's session, applied after its COMMIT (dropped if it rolls back).
- The sales report is tagged with every day it covers, so an order today invalidates only
  the reports that include today.

Fills read from the primary when replicas are on: a replica that has not replayed a write
would otherwise store the old value under the tag version that write's invalidation created.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from ...cache import AsyncCache, MemoryTier, RedisTier
from ...cache import orm as cache_orm

T = TypeVar("T")

CATALOG_TTL_S = 120.0
USER_TTL_S = 60.0


class ShopCache:
    """An L1 + Redis cache bound to the shop's sessions."""

    def __init__(
        self, redis_url: str, sessions: Any, fill_sessions: Any, namespace: str = "shop"
    ) -> None:
        self.cache = AsyncCache(
            l1=MemoryTier(maxsize=20_000, ttl=30.0),
            l2=RedisTier(redis_url),
            namespace=namespace,
            default_ttl=CATALOG_TTL_S,
        )
        self.binding = cache_orm.bind(sessions, self.cache)
        self.fill_sessions = fill_sessions

    async def read(
        self,
        key: str,
        tags: tuple[str, ...],
        loader: Callable[[AsyncSession], Awaitable[T]],
        ttl: float = CATALOG_TTL_S,
    ) -> T:
        """The cached answer, or ``loader``'s on a fill session."""

        async def fill() -> T:
            async with self.fill_sessions() as session:
                return await loader(session)

        return await self.cache.get_or_set(key, fill, ttl, tags)

    @staticmethod
    def order_placed(session: AsyncSession, user_id: int, day: date) -> None:
        """Queue the invalidations of a new order on its session (applied at COMMIT)."""
        cache_orm.invalidate_tags(session, user_orders_tag(user_id), sales_day_tag(day))

    def stats(self) -> dict[str, Any]:
        tiers = self.cache.stats()
        return {
            "l1_hits": tiers.l1_hits,
            "l2_hits": tiers.l2_hits,
            "misses": tiers.misses,
            "stampede_joins": tiers.stampede_joins,
            "stale_sets_refused": tiers.stale_sets_refused,
            "redis_errors": tiers.redis_errors,
            "query_hits": self.binding.stats.hits,
            "query_misses": self.binding.stats.misses,
        }

    async def close(self) -> None:
        self.binding.unbind()
        await self.cache.aclose()


def user_orders_tag(user_id: int) -> str:
    return f"user-orders:{user_id}"


def sales_day_tag(day: date) -> str:
    return f"sales-day:{day.isoformat()}"


def sales_tags(start: date, days: int) -> tuple[str, ...]:
    return tuple(sales_day_tag(start + timedelta(days=n)) for n in range(max(days, 0)))
