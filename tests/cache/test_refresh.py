"""Early refresh: between the soft and the hard TTL one caller refreshes while every caller gets
the current value at once (stale-while-revalidate); XFetch refreshes early, using the measured
load time; a failing loader is papered over with the stale value until the hard TTL."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hotpath.cache._entry import Entry

from ._helpers import wait_until
from .conftest import MakeAsyncCache, MakeCache

pytestmark = pytest.mark.timeout(60)

TIMING = {"jitter": 0, "xfetch_beta": 0}


def test_stale_while_revalidate_one_refresh_across_processes(make_cache: MakeCache) -> None:
    # The refresh is held until every caller has answered (however long a busy machine takes
    # for that): its lease must outlive it, or the other cache would rightly refresh too.
    held = {"tier": {"lease_ttl": 60}}
    a = make_cache(default_ttl=0.3, stale_ttl=5, **TIMING, **held)
    b = make_cache(default_ttl=0.3, stale_ttl=5, **TIMING, **held)
    assert a.get_or_set("k", lambda: "v1") == "v1"
    assert b.get_or_set("k", lambda: "unused") == "v1"
    time.sleep(0.35)  # past the soft TTL, well within the hard one
    calls: list[int] = []
    release = threading.Event()

    def refresh() -> str:
        calls.append(threading.get_ident())
        release.wait(10)  # the refresh is still loading while every caller is answered
        return "v2"

    answers: list[object] = []
    start = threading.Barrier(20)

    def call(cache: object) -> None:
        start.wait()
        answers.append(cache.get_or_set("k", refresh))  # type: ignore[attr-defined]

    threads = [threading.Thread(target=call, args=(c,)) for c in (a, b) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    answered_while_loading = list(answers)
    release.set()
    assert answered_while_loading == ["v1"] * 20  # the current value, without waiting
    wait_until(lambda: a.get("k") == "v2" and b.get("k") == "v2")
    assert len(calls) == 1  # one refresh for both caches (the other found the lease held)
    stats = [a.stats(), b.stats()]
    assert all(s.stale_served >= 1 for s in stats)  # the rest joined those in-process calls
    assert sum(s.stale_served + s.stampede_joins for s in stats) == 20
    assert sum(s.loads for s in stats) == 2  # the first load and the refresh


def test_without_a_stale_window_callers_wait_for_the_load(make_cache: MakeCache) -> None:
    """The unprotected path: once the TTL is over, a caller pays the whole load."""
    cache = make_cache(default_ttl=0.2, stale_ttl=0.001, **TIMING)
    cache.get_or_set("k", lambda: "v1")
    time.sleep(0.25)  # past the TTL and the stale window
    loaded_by: list[int] = []

    def load() -> str:
        loaded_by.append(threading.get_ident())
        return "v2"

    assert cache.get_or_set("k", load) == "v2"
    assert loaded_by == [threading.get_ident()]  # the load ran in the caller, who waited for it


async def test_async_stale_while_revalidate(make_async_cache: MakeAsyncCache) -> None:
    held = {"tier": {"lease_ttl": 60}}  # the lease outlives the held refresh (see above)
    a = make_async_cache(default_ttl=0.3, stale_ttl=5, **TIMING, **held)
    b = make_async_cache(default_ttl=0.3, stale_ttl=5, **TIMING, **held)
    assert await a.get_or_set("k", lambda: "v1") == "v1"
    assert await b.get_or_set("k", lambda: "unused") == "v1"
    await asyncio.sleep(0.35)
    calls = 0
    release = asyncio.Event()

    async def refresh() -> str:
        nonlocal calls
        calls += 1
        await release.wait()  # still loading while every caller is answered
        return "v2"

    got = await asyncio.gather(*(c.get_or_set("k", refresh) for c in (a, b) for _ in range(10)))
    assert got == ["v1"] * 20
    assert not release.is_set()  # answered before the refresh could finish
    release.set()
    for _ in range(300):
        if await a.get("k") == "v2" and await b.get("k") == "v2":
            break
        await asyncio.sleep(0.01)
    assert await a.get("k") == "v2"
    assert await b.get("k") == "v2"
    assert calls == 1
    assert a.stats().refreshes + b.stats().refreshes >= 1


@pytest.mark.parametrize("beta", [3.0, 0.0])
def test_xfetch_refreshes_before_the_soft_ttl_using_the_load_time(
    make_cache: MakeCache, beta: float
) -> None:
    cache = make_cache(default_ttl=1.0, stale_ttl=5, jitter=0, xfetch_beta=beta)
    loads: list[float] = []

    def load() -> int:
        loads.append(time.time())
        time.sleep(0.1)  # measured: XFetch's delta
        return len(loads)

    cache.get_or_set("k", load)
    stored_at = loads[0] + 0.1
    while len(loads) < 2 and time.time() < stored_at + 1.3:
        cache.get_or_set("k", load)
        time.sleep(0.01)
    assert len(loads) == 2
    early = stored_at + 1.0 - loads[1]
    print(f"\nbeta={beta}: second load {early * 1000:+.0f} ms before the soft TTL")
    if beta:
        assert early > 0.02  # picked early; probability of missing it is ~e^-30
    else:
        assert early <= 0.0  # never before the soft TTL without XFetch


def test_xfetch_probability_follows_the_formula() -> None:
    """P(early) = exp(-(expiry - now) / (delta * beta)) (Vattani et al.)."""
    entry = Entry("v", soft_expiry=100.0, hard_expiry=200.0, load_seconds=1.0, tags={})
    draws = 20_000
    early = sum(not entry.is_fresh(99.5, beta=1.0) for _ in range(draws)) / draws
    assert abs(early - 0.6065) < 0.02  # exp(-0.5)
    early = sum(not entry.is_fresh(99.0, beta=2.0) for _ in range(draws)) / draws
    assert abs(early - 0.6065) < 0.02  # beta scales the margin
    assert all(entry.is_fresh(80.0, beta=1.0) for _ in range(1000))  # far from expiry
    assert all(entry.is_fresh(99.9, beta=0.0) for _ in range(1000))  # turned off
    assert not entry.is_fresh(100.0, beta=0.0)
    assert entry.is_servable(150.0)
    assert not entry.is_servable(200.0)
    quick = Entry("v", 100.0, 200.0, load_seconds=0.0, tags={})
    assert all(quick.is_fresh(99.99, beta=1.0) for _ in range(1000))


def test_stale_served_on_loader_error_until_the_hard_ttl(make_cache: MakeCache) -> None:
    cache = make_cache(default_ttl=0.2, stale_ttl=0.6, **TIMING)
    cache.get_or_set("k", lambda: "good")
    stored = time.monotonic()

    def broken() -> str:
        raise RuntimeError("database down")

    time.sleep(0.25)
    assert cache.get_or_set("k", broken) == "good"  # no exception: the stale value
    wait_until(lambda: cache.stats().stale_on_error == 1)
    assert cache.get_or_set("k", broken) == "good"
    wait_until(lambda: cache.stats().stale_on_error == 2)  # the lease was given back
    other = make_cache(default_ttl=0.2, stale_ttl=0.6, **TIMING)  # no L1 copy: from Redis
    assert other.get_or_set("k", broken) == "good"
    wait_until(lambda: other.stats().stale_on_error == 1)
    stats = cache.stats()
    assert stats.stale_served == 2
    assert stats.load_errors == 2
    time.sleep(max(0.0, stored + 0.85 - time.monotonic()))  # past the hard TTL
    with pytest.raises(RuntimeError, match="database down"):
        cache.get_or_set("k", broken)
    with pytest.raises(RuntimeError, match="database down"):
        other.get_or_set("k", broken)
    assert cache.get_or_set("k", lambda: "recovered") == "recovered"


async def test_async_stale_served_on_loader_error_until_the_hard_ttl(
    make_async_cache: MakeAsyncCache,
) -> None:
    cache = make_async_cache(default_ttl=0.2, stale_ttl=0.5, **TIMING)
    await cache.get_or_set("k", lambda: "good")

    async def broken() -> str:
        raise RuntimeError("database down")

    await asyncio.sleep(0.25)
    assert await cache.get_or_set("k", broken) == "good"
    for _ in range(300):
        if cache.stats().stale_on_error == 1:
            break
        await asyncio.sleep(0.01)
    assert cache.stats().stale_on_error == 1
    await asyncio.sleep(0.5)
    with pytest.raises(RuntimeError, match="database down"):
        await cache.get_or_set("k", broken)
