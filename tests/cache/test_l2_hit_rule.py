"""The flows' L2-hit rule is one rule (``CacheCore._l2_hit``): ``stale=False`` refuses a value
past its ttl wherever the flow finds it in Redis, including the entry a caller finds once
another process's lease is gone (it used to be served there, stale)."""

from __future__ import annotations

import time

import pytest
import redis

from hotpath.cache._entry import Entry, pack
from hotpath.cache._serialize import resolve_serializer

from .conftest import MakeAsyncCache, MakeCache

pytestmark = pytest.mark.timeout(60)


def _plant_stale_entry_under_a_foreign_lease(raw: redis.Redis, ns: str, key: str) -> None:
    """A value past its soft expiry (still servable to stale readers) and another process's
    lease on the key that runs out without a fill."""
    now = time.time()
    entry = Entry("old", soft_expiry=now - 10, hard_expiry=now + 60, load_seconds=0.0, tags={})
    raw.set(f"{ns}:{{{key}}}", pack(entry, resolve_serializer("json"), 1 << 20, key), px=60_000)
    raw.set(f"{ns}:{{{key}}}:lease", "another-process", px=200)


def test_stale_false_never_gets_the_stale_entry_after_a_lease_wait(
    make_cache: MakeCache, raw: redis.Redis, ns: str
) -> None:
    cache = make_cache(l1=False)
    _plant_stale_entry_under_a_foreign_lease(raw, ns, "k")
    loads: list[int] = []

    def loader() -> str:
        loads.append(1)
        return "new"

    assert cache.get_or_set("k", loader, stale=False) == "new"
    assert len(loads) == 1
    assert cache.stats().lease_waits >= 1  # it did wait for the other process's lease
    assert cache.stats().l2_hits == 0


async def test_async_stale_false_never_gets_the_stale_entry_after_a_lease_wait(
    make_async_cache: MakeAsyncCache, raw: redis.Redis, ns: str
) -> None:
    cache = make_async_cache(l1=False)
    _plant_stale_entry_under_a_foreign_lease(raw, ns, "k")

    async def loader() -> str:
        return "new"

    assert await cache.get_or_set("k", loader, stale=False) == "new"
    assert cache.stats().lease_waits >= 1
    assert cache.stats().l2_hits == 0


def test_stale_true_still_serves_it_and_refreshes(
    make_cache: MakeCache, raw: redis.Redis, ns: str
) -> None:
    cache = make_cache(l1=False)
    _plant_stale_entry_under_a_foreign_lease(raw, ns, "k")
    assert cache.get_or_set("k", lambda: "new") == "old"  # served stale at once
    assert cache.stats().stale_served == 1
