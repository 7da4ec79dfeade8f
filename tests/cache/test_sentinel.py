"""Sentinel-managed clients (sync and async ``master_for``) as the Redis tier: a real
``redis-server --sentinel`` monitoring the stack's Redis; loads, hits and L1 coherence over the
invalidation channel, whose connection is derived from the client."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel

from hotpath.cache import AsyncCache, Cache, MemoryTier, RedisTier
from hotpath.cache._redis import _sync_sentinel_master
from hotpath.stack import LocalStack
from hotpath.stack._process import LOOPBACK, free_ports

from ._helpers import wait_until

SERVICE = "hotpath"


@pytest.fixture(scope="module")
def sentinel(
    hotpath_local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    """A real Sentinel process monitoring the stack's Redis as ``hotpath``."""
    server = hotpath_local_stack.redis
    directory: Path = tmp_path_factory.mktemp("sentinel")
    port = free_ports(1)[0]
    conf = directory / "sentinel.conf"
    conf.write_text(
        f"bind {LOOPBACK}\nport {port}\ndir {directory}\n"
        f"sentinel monitor {SERVICE} {LOOPBACK} {server.port} 1\n"
    )
    process = subprocess.Popen(
        [str(server.binary), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = redis.sentinel.Sentinel([(LOOPBACK, port)], socket_timeout=0.5)

        def knows_the_master() -> bool:
            try:
                return probe.discover_master(SERVICE) == (LOOPBACK, server.port)
            except (redis.RedisError, OSError):
                return False

        wait_until(knows_the_master, timeout=15)
        yield LOOPBACK, port
    finally:
        process.terminate()
        process.wait(10)


def _db(redis_url: str) -> int:
    return int(urlsplit(redis_url).path.strip("/") or 0)


def test_sync_sentinel_master_client(sentinel: tuple[str, int], redis_url: str, ns: str) -> None:
    manager = redis.sentinel.Sentinel([sentinel], socket_timeout=0.5)
    tiers = [
        RedisTier(manager.master_for(SERVICE, db=_db(redis_url), socket_timeout=0.2))
        for _ in range(2)
    ]
    here = Cache(MemoryTier(100), tiers[0], namespace=ns)
    there = Cache(MemoryTier(100), tiers[1], namespace=ns)
    try:
        loads: list[int] = []

        def load(value: str) -> str:
            loads.append(1)
            return value

        assert here.get_or_set("k", lambda: load("v1")) == "v1"
        assert there.get_or_set("k", lambda: load("other")) == "v1"  # from Redis
        assert here.get("k") == "v1"  # from L1
        assert loads == [1]
        there.set("k", "v2")
        # here's L1 hears it over the channel its Sentinel-managed client subscribed to
        wait_until(lambda: here.get("k") == "v2", timeout=2)
        assert here.stats().l1_hits >= 1
        assert here.stats().redis_errors == 0
    finally:
        here.close()
        there.close()


async def test_async_sentinel_master_client(
    sentinel: tuple[str, int], redis_url: str, ns: str
) -> None:
    manager = redis.asyncio.sentinel.Sentinel([sentinel], socket_timeout=0.5)
    tiers = [
        RedisTier(manager.master_for(SERVICE, db=_db(redis_url), socket_timeout=0.2))
        for _ in range(2)
    ]
    here = AsyncCache(MemoryTier(100), tiers[0], namespace=ns)
    there = AsyncCache(MemoryTier(100), tiers[1], namespace=ns)
    try:
        assert await here.get_or_set("k", lambda: "v1") == "v1"
        assert await there.get_or_set("k", lambda: "other") == "v1"
        await there.set("k", "v2")
        deadline = time.monotonic() + 2
        while await here.get("k") != "v2":
            assert time.monotonic() < deadline, "the async Sentinel client's L1 never heard"
            await asyncio.sleep(0.01)
        assert here.stats().redis_errors == 0
        assert there.stats().loads == 0
    finally:
        await here.aclose()
        await there.aclose()


def test_the_listeners_sync_client_of_an_async_sentinel_takes_no_async_option(
    sentinel: tuple[str, int], redis_url: str
) -> None:
    # redis-py 8 puts its async Retry in an async Sentinel's sentinel_kwargs; a sync
    # connection given it calls call_with_retry and never awaits the coroutine it returns
    manager = redis.asyncio.sentinel.Sentinel([sentinel], socket_timeout=0.5)
    client = manager.master_for(SERVICE, db=_db(redis_url))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sync = _sync_sentinel_master(client.connection_pool, {})
        assert sync.ping()
        sync.close()
        gc.collect()  # an unawaited coroutine warns when it is collected
    unawaited = [w for w in caught if "never awaited" in str(w.message)]
    assert unawaited == []
