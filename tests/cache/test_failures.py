"""Redis failures never reach the caller on the read path: Redis killed mid-run (callers keep
getting values, the circuit opens, and closes after the restart) or paused (calls return
within a few socket timeouts); writes that could not reach Redis are counted and applied to
this process's L1. Redis is always restored, whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from hotpath.cache import AsyncCache, Cache, MemoryTier, RedisTier
from hotpath.stack import LocalStack, RedisServer, StackError

from ._helpers import await_until, wait_until
from .conftest import MakeAsyncCache, MakeCache

pytestmark = pytest.mark.timeout(60)

FAST_FAILING = {
    "socket_timeout": 0.1,
    "connect_timeout": 0.1,
    "failure_threshold": 3,
    "reset_timeout": 0.3,
}


@pytest.fixture
def redis_server(hotpath_local_stack: LocalStack) -> Iterator[RedisServer]:
    """The stack's Redis; running and answering again after the test, whatever it did."""
    server = hotpath_local_stack.redis
    yield server
    with contextlib.suppress(StackError):  # not running (killed): started below
        server.resume()
    server.start()
    with server.client() as client:
        assert client.ping()


def value_of(key: str) -> str:
    return f"value of {key}"


class Load:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.errors: list[BaseException] = []
        self.wrong: list[tuple[str, Any]] = []
        self.calls = 0
        self.circuits: set[str] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work) for _ in range(4)]
        self._threads.append(threading.Thread(target=self._watch))

    def _work(self) -> None:
        while not self._stop.is_set():
            key = f"k{random.randrange(30)}"
            try:
                got = self.cache.get_or_set(key, lambda key=key: value_of(key))
            except BaseException as error:
                self.errors.append(error)
                continue
            self.calls += 1
            if got != value_of(key):
                self.wrong.append((key, got))
            time.sleep(0.002)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.circuits.add(self.cache.stats().circuit)
            time.sleep(0.005)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def closes_on_a_new_key(cache: Cache, probe: int) -> bool:
    """A call on a key no L1 holds (it goes to Redis), then: is the circuit closed?"""
    cache.get_or_set(f"probe{probe}", lambda: value_of(f"probe{probe}"))
    return cache.stats().circuit == "closed"


def test_redis_killed_mid_run(
    make_cache: MakeCache, redis_server: RedisServer, raw: redis.Redis, ns: str, redis_url: str
) -> None:
    cache = make_cache(tier=FAST_FAILING)
    plain = redis.Redis.from_url(redis_url, socket_connect_timeout=0.2)
    with Load(cache) as load:
        wait_until(lambda: load.calls >= 50, timeout=10)  # served from Redis first
        redis_server.kill()
        # The unprotected path: a plain client call fails outright.
        with pytest.raises(redis.ConnectionError):
            plain.get("k1")
        wait_until(lambda: "open" in load.circuits, timeout=10)
        # Callers keep getting values while Redis is down (a hung call would stop the count).
        during = load.calls
        wait_until(lambda: load.calls >= during + 50, timeout=10)
        redis_server.start()
        # The load's keys are all in L1 by now: a new key is what sends the half-open
        # circuit's trial call to Redis.
        probes = iter(range(1_000_000))
        wait_until(lambda: closes_on_a_new_key(cache, next(probes)), timeout=10)
        wait_until(lambda: cache.stats().channel_connected, timeout=10)
        after = load.calls
        wait_until(lambda: load.calls >= after + 20, timeout=10)
    plain.close()
    stats = cache.stats()
    assert load.errors == []
    assert load.wrong == []
    assert {"closed", "open"} <= load.circuits
    assert stats.redis_errors >= 3
    assert stats.redis_skipped > 0
    assert stats.degraded_loads > 0
    # Back to normal: loads are stored in Redis again.
    assert cache.get_or_set("after", lambda: "stored") == "stored"
    assert raw.exists(f"{ns}:{{after}}") == 1


async def _now(value: bool) -> bool:
    return value


async def test_async_redis_killed_mid_run(
    make_async_cache: MakeAsyncCache, redis_server: RedisServer, raw: redis.Redis, ns: str
) -> None:
    cache: AsyncCache = make_async_cache(tier=FAST_FAILING)
    errors: list[BaseException] = []
    circuits: set[str] = set()
    stop = asyncio.Event()
    served = 0

    async def work() -> None:
        nonlocal served
        while not stop.is_set():
            key = f"k{random.randrange(30)}"
            try:
                got = await cache.get_or_set(key, lambda key=key: value_of(key))
                assert got == value_of(key)
                served += 1
            except BaseException as error:
                errors.append(error)
            circuits.add(cache.stats().circuit)
            await asyncio.sleep(0.002)

    async def reached(check: Callable[[], bool]) -> None:
        await await_until(lambda: _now(check()), timeout=10)

    tasks = [asyncio.create_task(work()) for _ in range(4)]
    try:
        await reached(lambda: served >= 50)  # served from Redis first
        await asyncio.to_thread(redis_server.kill)
        await reached(lambda: "open" in circuits)
        # Callers keep getting values while Redis is down (a hung call would stop the count).
        during = served
        await reached(lambda: served >= during + 50)
        await asyncio.to_thread(redis_server.start)
        probes = iter(range(1_000_000))

        async def closed_on_a_new_key() -> bool:  # the load's keys are all in L1 by now
            probe = f"probe{next(probes)}"
            await cache.get_or_set(probe, lambda: value_of(probe))
            return cache.stats().circuit == "closed" and cache.stats().channel_connected

        await await_until(closed_on_a_new_key, timeout=10)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert errors == []
    assert {"closed", "open"} <= circuits
    assert cache.stats().circuit == "closed"
    assert await cache.get_or_set("after", lambda: "stored") == "stored"
    assert raw.exists(f"{ns}:{{after}}") == 1


def test_paused_redis_costs_socket_timeouts_not_hangs(
    make_cache: MakeCache, redis_server: RedisServer, redis_url: str
) -> None:
    cache = make_cache(tier={**FAST_FAILING, "reset_timeout": 5.0})
    other = make_cache(tier=FAST_FAILING)
    for i in range(5):
        cache.set(f"cached{i}", i, tags=("group",))
    hung_client = redis.Redis.from_url(redis_url)  # redis-py's default: no socket timeout
    hung_client.ping()
    redis_server.pause()
    hung = threading.Thread(target=hung_client.get, args=("anything",), daemon=True)
    hung.start()
    try:
        for i in range(10):
            assert cache.get_or_set(f"new{i}", lambda i=i: f"loaded {i}") == f"loaded {i}"
            assert cache.get(f"cached{i % 5}") == i % 5
        waited = cache.stats()
        # Writes that cannot reach Redis: counted, and applied to this process's L1.
        cache.set("cached0", "written during the outage")
        cache.delete("cached1")
        cache.invalidate_tags("group")
        cache.set("fresh", "kept", tags=("group",))
        stats = cache.stats()
        local_view = [cache.get(f"cached{i}", "MISS") for i in range(5)]
        fresh = cache.get("fresh")
        # The unprotected path: a client without a socket timeout is still stuck.
        hung.join(1.0)
        still_hung = hung.is_alive()
    finally:
        redis_server.resume()
    hung.join(5)
    hung_client.close()
    # Each call returned; only the calls before the circuit opened waited for a socket
    # timeout, the rest did not try Redis.
    assert waited.redis_errors == FAST_FAILING["failure_threshold"]
    assert waited.redis_skipped >= 10 - FAST_FAILING["failure_threshold"]
    assert stats.circuit == "open"
    assert stats.writes_failed == 4
    # set, delete and the tag invalidation all applied locally (cached0 lost its tag)
    assert local_view == ["written during the outage", "MISS", "MISS", "MISS", "MISS"]
    assert fresh == "kept"
    assert still_hung
    # Once Redis answers, the channel comes back and the other process reads Redis again.
    wait_until(lambda: other.stats().channel_connected, timeout=5)
    assert other.get("cached2", "MISS") in (2, "MISS")


async def test_async_paused_redis_costs_socket_timeouts_not_hangs(
    make_async_cache: MakeAsyncCache, redis_server: RedisServer
) -> None:
    cache = make_async_cache(tier={**FAST_FAILING, "reset_timeout": 5.0})
    await cache.set("cached", "v")
    redis_server.pause()
    try:
        for i in range(10):
            assert await cache.get_or_set(f"new{i}", lambda i=i: i) == i
        waited = cache.stats()
        await cache.set("cached", "during")
        await cache.invalidate_tags("t")
        stats = cache.stats()
        during = await cache.get("cached")
    finally:
        redis_server.resume()
    # Each call returned; only the calls before the circuit opened waited for a socket timeout.
    assert waited.redis_errors == FAST_FAILING["failure_threshold"]
    assert waited.redis_skipped >= 10 - FAST_FAILING["failure_threshold"]
    assert stats.circuit == "open"
    assert stats.writes_failed == 2
    assert during == "during"


class _BrokenGet(redis.Redis):
    """A real client whose GET fails the way redis-py's async cluster client once did: with
    an AttributeError from deep inside, not a RedisError."""

    def get(self, name: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")


def test_a_client_bug_on_the_read_path_is_redis_unavailable_not_an_exception(
    redis_url: str, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = Cache(None, RedisTier(_BrokenGet.from_url(redis_url)), namespace=ns)
    try:
        assert cache.get("k", "default") == "default"
        assert cache.get_or_set("k", lambda: "loaded") == "loaded"
        assert cache.get_or_set("k", lambda: "again") == "again"
        stats = cache.stats()
        assert stats.redis_errors >= 3
        assert stats.loads == 2
        logged = [r for r in caplog.records if "the Redis client raised" in r.getMessage()]
        assert len(logged) == 1  # once per kind, with its traceback
        assert logged[0].exc_info is not None
    finally:
        cache.close()


def test_a_delete_while_the_circuit_is_open_is_replayed_once_redis_answers(
    make_cache: MakeCache, raw: redis.Redis
) -> None:
    """Found in review: a delete or tag invalidation that could not reach Redis used to be
    lost there: once Redis answered again, every process (the writer too, after its L1 TTL)
    served the old entry for its whole TTL."""
    tier = {"reset_timeout": 0.5}
    writer = make_cache(l1=MemoryTier(ttl=1), tier=tier, default_ttl=300)
    other = make_cache(l1=MemoryTier(ttl=1), tier=tier, default_ttl=300)
    writer.set("user:1", "old")
    writer.set("user:2", "old", tags=("user:2",))
    raw.execute_command("CLIENT", "PAUSE", "400", "ALL")  # a short Redis stall
    for n in range(3):
        writer.get(f"probe:{n}")  # timeouts: the circuit opens
    assert writer.stats().circuit == "open"
    writer.delete("user:1")
    writer.invalidate_tags("user:2")
    assert writer.stats().writes_failed == 2
    assert (writer.get("user:1"), writer.get("user:2")) == (None, None)  # at once, here
    time.sleep(1.2)  # Redis answers again, the circuit may close, L1 copies have expired
    assert (writer.get("user:1"), writer.get("user:2")) == (None, None)  # replayed first
    assert writer.stats().writes_replayed == 2
    assert (other.get("user:1"), other.get("user:2")) == (None, None)  # and for everyone
