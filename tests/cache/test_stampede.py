"""Stampede protection: one loader call per key across threads, tasks and processes; a crashed
lease holder blocks nobody for longer than the lease; waiters sleep until woken instead of
polling Redis."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis
import redis.cluster

from hotpath.cache import Cache, MemoryTier, RedisTier
from tests.helpers import eventually_async

from . import _workers
from ._helpers import commands, wait_until
from .conftest import MakeAsyncCache, MakeCache

pytestmark = pytest.mark.timeout(90)

PROCESSES, CALLERS = 4, 50


def run_stampede(
    redis_url: str, ns: str, mode: str, *, cluster: bool = False
) -> tuple[list[dict[str, Any]], int]:
    """PROCESSES spawned processes x CALLERS threads or tasks on one cold key; returns each
    process's report and how many times the loader ran in total (counted in Redis)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    counter = f"{ns}:loader-calls"
    procs = [
        ctx.Process(
            target=_workers.stampede,
            args=(redis_url, ns, "cold", counter, CALLERS, mode, barrier, results, cluster),
        )
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        reports = [results.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    client: Any = (
        redis.cluster.RedisCluster.from_url(redis_url)
        if cluster
        else redis.Redis.from_url(redis_url)
    )
    try:
        calls = int(client.get(counter) or 0)
    finally:
        client.close()
    return reports, calls


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cold_key_is_loaded_once_across_processes(redis_url: str, ns: str, mode: str) -> None:
    reports, calls = run_stampede(redis_url, ns, mode)
    values = [v for r in reports for v in r["values"]]
    assert [e for r in reports for e in r["errors"]] == []
    assert len(values) == PROCESSES * CALLERS
    assert calls == 1, f"loader ran {calls} times for one cold key"
    assert len({(v["pid"], v["call"]) for v in values}) == 1  # everyone got that one load
    stats = [r["stats"] for r in reports]
    assert sum(s["loads"] for s in stats) == 1
    # In each process the other callers joined the in-process flight, and the processes that
    # did not load waited on the Redis lease.
    assert sum(s["stampede_joins"] for s in stats) >= 0.9 * PROCESSES * (CALLERS - 1)
    assert sum(1 for s in stats if s["lease_waits"] > 0) == PROCESSES - 1
    assert sum(s["wait_timeouts"] for s in stats) == 0
    print(f"\n{mode}: {PROCESSES}x{CALLERS} callers, loader calls: {calls}")


def test_in_process_callers_share_one_load(make_cache: MakeCache) -> None:
    cache = make_cache()
    calls = Counter[str]()
    start = threading.Barrier(50)
    got: list[object] = []

    def load() -> str:
        calls["k"] += 1
        time.sleep(0.2)
        return "v"

    def call() -> None:
        start.wait()
        got.append(cache.get_or_set("k", load))

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got == ["v"] * 50
    assert calls["k"] == 1
    assert cache.stats().stampede_joins >= 45  # the rest may find it in L1 already


# Redis timeouts a busy machine meets: with the default 0.25 s connect timeout a fresh
# client's first connection, on a loop starved of CPU, can time out, and a cache that finds
# Redis unavailable loads without a lease (Redis down is test_failures' subject). That, not
# the subscription, was what loaded a key more than once here on a busy machine.
BUSY_MACHINE = {"connect_timeout": 5.0, "socket_timeout": 5.0}


async def test_async_tasks_share_one_load_across_caches(make_async_cache: MakeAsyncCache) -> None:
    # four "processes" (separate L1s), made together and hit at once: their subscriptions
    # may come up before, during or after the load
    caches = [make_async_cache(tier=BUSY_MACHINE) for _ in range(4)]
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        # until the other three "processes" wait on this load's lease
        await eventually_async(
            lambda: sum(c.stats().lease_waits > 0 for c in caches) == 3, 30, "lease waits"
        )
        return "v"

    got = await asyncio.gather(*(c.get_or_set("k", load) for c in caches for _ in range(50)))
    assert got == ["v"] * 200
    assert calls == 1


async def test_subscriptions_coming_up_mid_load_cost_no_second_load(
    make_async_cache: MakeAsyncCache, held_subscriptions: threading.Event
) -> None:
    """The channel's first connection flushes L1 and refuses the L1 fills begun before it
    (see test_coherence): the load in flight still counts once across the caches, its
    joiners and the other caches' callers waiting on its lease all get its value."""
    caches = [make_async_cache(tier=BUSY_MACHINE) for _ in range(4)]
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        held_subscriptions.set()  # every cache's channel comes up while this load runs
        await eventually_async(
            lambda: all(c.stats().channel_connected for c in caches), 30, "every cache subscribed"
        )
        return "v"

    got = await asyncio.gather(*(c.get_or_set("k", load) for c in caches for _ in range(50)))
    assert got == ["v"] * 200
    assert calls == 1
    assert all(c.stats().l1_flushes == 1 for c in caches)  # the first connection's
    assert [await c.get_or_set("k", load) for c in caches] == ["v"] * 4
    assert calls == 1


def test_a_failing_loader_releases_its_lease_at_once(make_cache: MakeCache) -> None:
    holder = make_cache(tier={"lease_ttl": 30})
    # The waiter gives up after 20 s: had it waited for the lease to expire (30 s), it would
    # count a wait timeout.
    waiter = make_cache(tier={"lease_ttl": 30}, wait_timeout=20)
    entered = threading.Event()

    def fail() -> str:
        entered.set()
        time.sleep(0.2)
        raise RuntimeError("database down")

    failure: list[BaseException] = []

    def hold() -> None:
        try:
            holder.get_or_set("k", fail)
        except RuntimeError as error:
            failure.append(error)

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(5)
    assert waiter.get_or_set("k", lambda: "second try") == "second try"
    thread.join(5)
    assert len(failure) == 1
    # Woken when the lease was given back, not when it expired (30 s on).
    assert waiter.stats().lease_waits >= 1
    assert waiter.stats().wait_timeouts == 0


def test_a_crashed_lease_holder_blocks_nobody_past_the_lease(
    redis_url: str, ns: str, make_cache: MakeCache, raw: redis.Redis
) -> None:
    ctx = multiprocessing.get_context("spawn")
    holding = ctx.Event()
    naive_lock = f"{ns}:naive-lock"
    proc = ctx.Process(
        target=_workers.die_holding_the_lease, args=(redis_url, ns, "k", naive_lock, holding)
    )
    proc.start()
    try:
        assert holding.wait(30), "the holder never took the lease"
        proc.join(10)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 17
    assert raw.exists(f"{ns}:{{k}}:lease") == 1  # the dead process's lease is still there

    # waiting up to 10 s: the 0.6 s lease's expiry is what lets them on
    caches = [make_cache(wait_timeout=10) for _ in range(5)]
    calls = Counter[str]()
    got: list[object] = []

    def load() -> str:
        calls["k"] += 1
        return "reloaded"

    def call(cache: Cache) -> None:
        got.append(cache.get_or_set("k", load))

    threads = [threading.Thread(target=call, args=(c,)) for c in caches for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got == ["reloaded"] * 50
    assert calls["k"] == 1
    # Unblocked by the lease's expiry (the one load above is stored: nobody gave up waiting).
    assert sum(c.stats().wait_timeouts for c in caches) == 0
    # The unprotected path: a lock without an expiry (dogpile's default lock_timeout=None)
    # outlives its crashed holder, so a waiter never gets it.
    deadline = time.monotonic() + 0.5
    acquired = False
    while time.monotonic() < deadline and not acquired:
        acquired = bool(raw.set(naive_lock, "me", nx=True))
        time.sleep(0.01)
    assert not acquired
    assert raw.ttl(naive_lock) == -1


def test_a_lease_taken_with_a_short_ttl_expires_for_waiters(
    make_cache: MakeCache, raw: redis.Redis, ns: str
) -> None:
    raw.set(f"{ns}:{{k}}:lease", "someone-gone", px=400)
    cache = make_cache()
    began = time.monotonic()
    assert cache.get_or_set("k", lambda: "mine") == "mine"
    waited = time.monotonic() - began
    assert waited > 0.3, waited  # it waited for the lease to expire...
    stats = cache.stats()
    assert stats.lease_waits >= 1
    assert (stats.wait_timeouts, stats.loads) == (0, 1)  # ...then took it and stored its load


WAITERS = 50


def waiters_commands(redis_url: str, ns: str, raw: redis.Redis, hold_s: float) -> Counter[str]:
    """Redis commands (scripts' included) while WAITERS caches (as if WAITERS processes) wait
    for one holder's load of a cold key, which returns ``hold_s`` seconds after every waiter
    is waiting."""
    tier: dict[str, Any] = {"health_interval": 0.1, "lease_ttl": 60.0}  # no lease expires
    caches = [
        Cache(MemoryTier(10), RedisTier(redis_url, **tier), namespace=f"{ns}{hold_s}")
        for _ in range(WAITERS + 1)
    ]
    holder, waiters = caches[0], caches[1:]
    try:
        for cache in caches:
            # Connected and scripts loaded now: HELLO, CLIENT SETINFO and SCRIPT LOAD are not
            # waiting (nor are the listeners' PINGs, which commands() leaves out).
            cache.get_or_set("warm-up", str)
        wait_until(lambda: all(c.stats().channel_connected for c in caches), timeout=30)
        taken, everyone_waits = threading.Event(), threading.Event()

        def load() -> str:
            taken.set()
            assert everyone_waits.wait(30)
            time.sleep(hold_s)  # the load's length: what must not change the count
            return "v"

        loading = threading.Thread(target=holder.get_or_set, args=("k", load))
        loading.start()
        assert taken.wait(10)
        before = commands(raw)
        got: list[object] = []
        threads = [
            threading.Thread(target=lambda c=c: got.append(c.get_or_set("k", str))) for c in waiters
        ]
        for t in threads:
            t.start()
        wait_until(lambda: sum(c.stats().lease_waits for c in waiters) == WAITERS, timeout=30)
        everyone_waits.set()
        for t in threads:
            t.join(30)
        loading.join(30)
        spent = commands(raw) - before
        assert got == ["v"] * WAITERS
        assert sum(c.stats().lease_waits for c in waiters) == WAITERS
        assert sum(c.stats().loads for c in waiters) == 0
        return spent
    finally:
        closers = [threading.Thread(target=c.close) for c in caches]
        for t in closers:
            t.start()
        for t in closers:
            t.join(10)


def test_waiters_are_woken_not_polling(redis_url: str, ns: str, raw: redis.Redis) -> None:
    """A waiter sleeps until the holder's fill message wakes it: the commands it sends do not
    depend on how long the load takes (a poll loop's grow with it), and are exactly: one GET
    (L1 miss), the lease script before sleeping (finds the lease held), and the lease script
    again once woken (finds the value). The holder adds its fill script."""
    short = waiters_commands(redis_url, ns, raw, 0.0)
    long = waiters_commands(redis_url, ns, raw, 1.0)
    print(
        f"\nRedis commands while {WAITERS} waiters wait: {dict(short)} (instant load), "
        f"{dict(long)} (1 s load)"
    )
    assert short == long
    assert short["evalsha"] == 2 * WAITERS + 1
    # Per waiter: its GET, the first script's GET, SET NX and PTTL, the second script's GET;
    # the fill's GET of the lease, SET, DEL and PUBLISH.
    assert short["get"] == 3 * WAITERS + 1
    assert short["set"] == WAITERS + 1
    assert short["pttl"] == WAITERS
    assert (short["del"], short["publish"]) == (1, 1)
    assert short.total() == 7 * WAITERS + 5


def test_plain_cache_aside_stampedes(raw: redis.Redis, ns: str) -> None:
    """The unprotected path: GET, load on a miss, SET; every concurrent caller loads."""
    calls = Counter[str]()
    start = threading.Barrier(50)

    def call() -> None:
        start.wait()
        if raw.get(f"{ns}:plain") is None:
            calls["k"] += 1
            time.sleep(0.2)
            raw.set(f"{ns}:plain", "v")

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert calls["k"] > 10, calls


async def test_a_cancelled_async_loader_cancels_nobody_else_and_gives_its_lease_back(
    make_async_cache: MakeAsyncCache, raw: redis.Redis, ns: str
) -> None:
    """A request whose load is cancelled (a client gone, a timeout) must not cancel the other
    requests that joined its load, nor leave its lease to block other processes."""
    cache, elsewhere = make_async_cache(tier={"lease_ttl": 30}), make_async_cache()
    loading = asyncio.Event()

    async def slow() -> str:
        loading.set()
        await asyncio.sleep(60)
        return "slow"

    leader = asyncio.create_task(cache.get_or_set("k", slow))
    await loading.wait()  # the leader holds the lease and runs the loader
    joiner = asyncio.create_task(cache.get_or_set("k", lambda: "joiner's own load"))
    while cache.stats().stampede_joins == 0:
        await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert await asyncio.wait_for(joiner, 20) == "joiner's own load"
    assert await elsewhere.get_or_set("k2", lambda: "x") == "x"
    loading.clear()
    other = asyncio.create_task(cache.get_or_set("k3", slow))
    await loading.wait()
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
    assert raw.exists(f"{ns}:{{k3}}:lease") == 0  # given back at once, not after lease_ttl
    assert await elsewhere.get_or_set("k3", lambda: "loaded elsewhere") == "loaded elsewhere"
    assert elsewhere.stats().lease_waits == 0  # found no lease to wait for


class Interrupted(BaseException):
    """Like gevent's Timeout or KeyboardInterrupt: not an Exception."""


def test_a_loader_interrupted_by_a_base_exception_gives_its_lease_back(
    make_cache: MakeCache, raw: redis.Redis, ns: str
) -> None:
    cache = make_cache(tier={"lease_ttl": 5})

    def interrupted() -> str:
        raise Interrupted

    with pytest.raises(Interrupted):
        cache.get_or_set("k", interrupted)
    assert raw.exists(f"{ns}:{{k}}:lease") == 0  # not left to block others for lease_ttl
    elsewhere = make_cache()
    assert elsewhere.get_or_set("k", lambda: "loaded elsewhere") == "loaded elsewhere"
    assert elsewhere.stats().lease_waits == 0
