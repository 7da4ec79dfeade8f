"""The cache on a real 3-master Redis Cluster: get_or_set, set/delete, tags (tag versions live
in other slots than the entries), L1 coherence, and one load for a cold key across processes,
sync and async."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio.cluster
import redis.cluster

from hotpath.cache import AsyncCache, Cache, MemoryTier, RedisTier

from ._helpers import await_until, wait_until
from .test_stampede import CALLERS, PROCESSES, run_stampede

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def cluster_ns(request: pytest.FixtureRequest) -> str:
    return f"cl{secrets.token_hex(4)}"


def tier(url: str, **options: Any) -> RedisTier:
    return RedisTier(url, cluster=True, health_interval=0.1, **options)


@pytest.fixture
def make_cluster_cache(redis_cluster_stack: str, cluster_ns: str) -> Iterator[Callable[..., Cache]]:
    made: list[Cache] = []

    def make(**options: Any) -> Cache:
        cache = Cache(MemoryTier(1000), tier(redis_cluster_stack), namespace=cluster_ns, **options)
        made.append(cache)
        return cache

    yield make
    threads = [threading.Thread(target=c.close) for c in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)


@pytest.fixture
async def make_async_cluster_cache(
    redis_cluster_stack: str, cluster_ns: str
) -> AsyncIterator[Callable[..., AsyncCache]]:
    made: list[AsyncCache] = []

    def make(**options: Any) -> AsyncCache:
        cache = AsyncCache(
            MemoryTier(1000), tier(redis_cluster_stack), namespace=cluster_ns, **options
        )
        made.append(cache)
        return cache

    yield make
    await asyncio.gather(*(c.aclose() for c in made))


def test_cluster_get_or_set_delete_and_tags(
    make_cluster_cache: Callable[..., Cache], redis_cluster_stack: str, cluster_ns: str
) -> None:
    cache, other = make_cluster_cache(), make_cluster_cache()
    calls: list[str] = []

    def load(key: str) -> Callable[[], dict[str, str]]:
        def run() -> dict[str, str]:
            calls.append(key)
            return {"key": key}

        return run

    keys = [f"user:{i}" for i in range(30)]  # spread over the three masters
    for key in keys:
        assert cache.get_or_set(key, load(key), tags=(f"org:{int(key[5:]) % 3}", "users")) == {
            "key": key
        }
    assert [other.get_or_set(k, load(k)) for k in keys] == [{"key": k} for k in keys]
    assert len(calls) == 30
    client = redis.cluster.RedisCluster.from_url(redis_cluster_stack)
    try:
        slots = {client.keyslot(f"{cluster_ns}:{{{k}}}") for k in keys}
        nodes = {client.nodes_manager.get_node_from_slot(s).name for s in slots}
        assert len(nodes) == 3  # the entries really live on every master
    finally:
        client.close()
    other.invalidate_tags("org:1")
    wait_until(lambda: cache.get("user:1", "MISS") == "MISS")
    assert cache.get("user:2") == {"key": "user:2"}
    assert cache.get_or_set("user:4", load("user:4"), tags=("org:1", "users")) == {"key": "user:4"}
    assert calls[-1] == "user:4"
    cache.delete("user:2")
    assert cache.get("user:2", "MISS") == "MISS"
    wait_until(lambda: other.get("user:2", "MISS") == "MISS")
    cache.set("user:3", "new")
    wait_until(lambda: other.get("user:3") == "new")  # pub/sub across the cluster
    cache.invalidate_tags("users")
    wait_until(lambda: all(other.get(k, "MISS") == "MISS" for k in keys if k != "user:3"))
    assert other.get("user:3") == "new"  # set without tags after the invalidation
    assert cache.stats().redis_errors == other.stats().redis_errors == 0


async def test_async_cluster_get_or_set_delete_and_tags(
    make_async_cluster_cache: Callable[..., AsyncCache],
) -> None:
    cache, other = make_async_cluster_cache(), make_async_cluster_cache()
    for i in range(20):
        assert await cache.get_or_set(f"k{i}", lambda i=i: i, tags=(f"t{i % 2}",)) == i
    assert [await other.get(f"k{i}") for i in range(20)] == list(range(20))
    await cache.invalidate_tags("t0")

    async def evens_gone() -> bool:
        values = [await other.get(f"k{i}", "MISS") for i in range(20)]
        return values == [("MISS" if i % 2 == 0 else i) for i in range(20)]

    await await_until(evens_gone)
    await other.delete("k1")

    async def k1_gone() -> bool:
        return bool(await cache.get("k1", "MISS") == "MISS")

    await await_until(k1_gone)
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return "once"

    got = await asyncio.gather(*(c.get_or_set("cold", slow) for c in (cache, other) * 25))
    assert got == ["once"] * 50
    assert calls == 1
    assert cache.stats().redis_errors == other.stats().redis_errors == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cluster_cold_key_is_loaded_once_across_processes(
    redis_cluster_stack: str, cluster_ns: str, mode: str
) -> None:
    reports, calls = run_stampede(redis_cluster_stack, cluster_ns, mode, cluster=True)
    assert [e for r in reports for e in r["errors"]] == []
    assert len([v for r in reports for v in r["values"]]) == PROCESSES * CALLERS
    assert calls == 1
    stats = [r["stats"] for r in reports]
    assert sum(s["redis_errors"] for s in stats) == 0
    assert sum(s["loads"] for s in stats) == 1
    assert sum(1 for s in stats if s["lease_waits"] > 0) == PROCESSES - 1


async def test_cluster_clients_can_be_passed_in(redis_cluster_stack: str, cluster_ns: str) -> None:
    sync_client = redis.cluster.RedisCluster.from_url(redis_cluster_stack, socket_timeout=0.5)
    async_client = redis.asyncio.cluster.RedisCluster.from_url(
        redis_cluster_stack, socket_timeout=0.5
    )
    sync_tier = RedisTier(sync_client, health_interval=0.1)
    async_tier = RedisTier(async_client, health_interval=0.1)
    assert sync_tier.cluster
    assert async_tier.cluster
    with Cache(MemoryTier(10), sync_tier, namespace=cluster_ns) as cache:
        async with AsyncCache(MemoryTier(10), async_tier, namespace=cluster_ns) as acache:
            cache.set("k", "from sync", tags=("t",))
            assert await acache.get("k") == "from sync"
            await acache.invalidate_tags("t")
            wait_until(lambda: cache.get("k", "MISS") == "MISS")
            assert await acache.get_or_set("k", lambda: "loaded") == "loaded"
            assert cache.get("k") == "loaded"
            assert acache.stats().channel_connected
            assert cache.stats().redis_errors == acache.stats().redis_errors == 0
    sync_client.close()
    await async_client.aclose()
