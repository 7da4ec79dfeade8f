"""Fixtures of the cache tests: this module's flushed Redis database, a raw client on it, a
fresh namespace per test, and cache factories that close what they made."""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from hotpath.cache import AsyncCache, Cache, MemoryTier, RedisTier, _acompat
from hotpath.cache._listener import Listener


@pytest.fixture(scope="module")
def redis_url(hotpath_redis: str) -> str:
    return hotpath_redis


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the module's database (to look under the cache)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A namespace of this test's own (tests share the module's Redis database)."""
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
    return f"{stem}_{secrets.token_hex(3)}"


def close_all(caches: list[Cache]) -> None:
    """Close caches side by side (each listener takes up to its health interval to stop)."""
    if caches:
        with ThreadPoolExecutor(len(caches)) as pool:
            list(pool.map(Cache.close, caches))


MakeCache = Callable[..., Cache]
MakeAsyncCache = Callable[..., AsyncCache]


def _tiers(
    redis_url: str, l1: bool | MemoryTier, l2: bool | RedisTier, tier: dict[str, Any]
) -> tuple[MemoryTier | None, RedisTier | None]:
    tier = {"health_interval": 0.1, **tier}  # listeners stop within 0.1 s at close
    memory = l1 if isinstance(l1, MemoryTier) else (MemoryTier(1000, ttl=30) if l1 else None)
    shared = l2 if isinstance(l2, RedisTier) else (RedisTier(redis_url, **tier) if l2 else None)
    return memory, shared


@pytest.fixture
def make_cache(redis_url: str, ns: str) -> Iterator[MakeCache]:
    """``make_cache(l1=True, l2=True, tier={RedisTier options}, **Cache options)``."""
    made: list[Cache] = []

    def make(
        l1: bool | MemoryTier = True,
        l2: bool | RedisTier = True,
        tier: dict[str, Any] | None = None,
        **options: Any,
    ) -> Cache:
        memory, shared = _tiers(redis_url, l1, l2, tier or {})
        options.setdefault("namespace", ns)
        cache = Cache(memory, shared, **options)
        made.append(cache)
        return cache

    yield make
    close_all(made)


@pytest.fixture
async def make_async_cache(redis_url: str, ns: str) -> AsyncIterator[MakeAsyncCache]:
    """The async twin of ``make_cache``."""
    made: list[AsyncCache] = []

    def make(
        l1: bool | MemoryTier = True,
        l2: bool | RedisTier = True,
        tier: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncCache:
        memory, shared = _tiers(redis_url, l1, l2, tier or {})
        options.setdefault("namespace", ns)
        cache = AsyncCache(memory, shared, **options)
        made.append(cache)
        return cache

    yield make
    await asyncio.gather(*(cache.aclose() for cache in made))


@pytest.fixture
def held_subscriptions(
    make_async_cache: MakeAsyncCache, monkeypatch: pytest.MonkeyPatch
) -> Iterator[threading.Event]:
    """The listeners of the caches made from now on subscribe only once the returned event is
    set (before that they have not even sent SUBSCRIBE: what is published meanwhile is
    missed), and calls do not wait for a subscription (as when it takes longer than
    ``SUBSCRIBE_WAIT_S``). Set at teardown, before ``make_async_cache`` closes the caches."""
    release = threading.Event()
    real_init = Listener.__init__

    def init(self: Listener, make_pubsub: Callable[[], Any], *args: Any, **kwargs: Any) -> None:
        def held() -> Any:
            release.wait(30)
            return make_pubsub()

        real_init(self, held, *args, **kwargs)

    monkeypatch.setattr(Listener, "__init__", init)
    monkeypatch.setattr(_acompat, "SUBSCRIBE_WAIT_S", 0.0)
    yield release
    release.set()
