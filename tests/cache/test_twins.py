"""The twins written once: what the async twin gained from being the one source (refresh
workers; a constructor that never blocks its event loop), against a real Redis."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from hotpath.cache import CacheConfigError
from hotpath.cache import _listener as listener_module

from .conftest import MakeAsyncCache, MakeCache


class _SpiedEvent(threading.Event):
    """The listener's ``connected`` event, noting which threads waited on it."""

    def __init__(self, waiters: set[int]) -> None:
        super().__init__()
        self._waiters = waiters

    def wait(self, timeout: float | None = None) -> bool:
        self._waiters.add(threading.get_ident())
        return super().wait(timeout)


@pytest.fixture
def subscription_waiters(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    waiters: set[int] = set()
    real_init = listener_module.Listener.__init__

    def init(self: listener_module.Listener, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self.connected = _SpiedEvent(waiters)

    monkeypatch.setattr(listener_module.Listener, "__init__", init)
    return waiters


async def test_async_cache_subscribes_without_blocking_its_event_loop(
    make_async_cache: MakeAsyncCache, subscription_waiters: set[int]
) -> None:
    cache = make_async_cache()
    # The constructor returned without waiting on the loop's thread for the subscription
    # (it used to wait up to 1 s there, in CacheCore.start_channel).
    assert threading.get_ident() not in subscription_waiters
    # ... and the first calls still wait for it (elsewhere), so they use L1 at once.
    await cache.set("k", {"v": 1})
    assert await cache.get("k") == {"v": 1}
    stats = cache.stats()
    assert stats.channel_connected
    assert stats.l1_hits == 1
    # whoever waited for the subscription (a worker thread, if it was not up yet) was not
    # the loop's thread
    assert threading.get_ident() not in subscription_waiters


def test_sync_cache_still_subscribes_in_its_constructor(
    make_cache: MakeCache, subscription_waiters: set[int]
) -> None:
    cache = make_cache()
    assert threading.get_ident() in subscription_waiters
    assert cache.stats().channel_connected
    cache.set("k", 1)
    assert cache.get("k") == 1
    assert cache.stats().l1_hits == 1


async def test_async_refresh_workers_bound_the_background_refreshes(
    make_async_cache: MakeAsyncCache,
) -> None:
    cache = make_async_cache(
        default_ttl=0.05, stale_ttl=60, jitter=0, xfetch_beta=0, refresh_workers=1
    )
    keys = ["a", "b", "c"]
    for key in keys:
        assert await cache.get_or_set(key, lambda: "first") == "first"
    await asyncio.sleep(0.1)  # past the ttl: each entry is now stale (served, then refreshed)

    running, most = 0, 0
    started = asyncio.Event()
    release = asyncio.Event()
    done: list[str] = []
    all_done = asyncio.Event()

    def loader_of(key: str) -> Any:
        async def load() -> str:
            nonlocal running, most
            running += 1
            most = max(most, running)
            started.set()
            await release.wait()
            running -= 1
            done.append(key)
            if len(done) == len(keys):
                all_done.set()
            return "second"

        return load

    for key in keys:  # stale values at once; one refresh each goes to the background
        assert await cache.get_or_set(key, loader_of(key)) == "first"
    await started.wait()
    for _ in range(100):  # every other refresh task gets its turns to start, if it may
        await asyncio.sleep(0)
    assert running == 1
    release.set()
    await asyncio.wait_for(all_done.wait(), 30)
    assert most == 1
    assert sorted(done) == keys
    for key in keys:
        assert await cache.get_or_set(key, lambda: "third") == "second"


@pytest.mark.faults
async def test_async_refresh_workers_must_be_a_positive_count(
    make_async_cache: MakeAsyncCache,
) -> None:
    with pytest.raises(CacheConfigError, match="refresh_workers must be an integer >= 1, got 0"):
        make_async_cache(refresh_workers=0)
