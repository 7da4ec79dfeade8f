"""Tags are version stamps: invalidating one is one script call whatever the number of entries
under it, leaves one small key in Redis, and bounded memory in L1."""

from __future__ import annotations

import time

import pytest
import redis

from hotpath.cache import MemoryTier
from hotpath.cache._entry import Entry

from ._helpers import await_until, commands, wait_until
from .conftest import MakeAsyncCache, MakeCache

pytestmark = pytest.mark.timeout(60)


def test_invalidate_tags_costs_one_script_call_for_10_or_1000_entries(
    make_cache: MakeCache, raw: redis.Redis, ns: str
) -> None:
    cache = make_cache(l1=MemoryTier(100))  # most entries live in Redis only
    cache.invalidate_tags("warm-up")  # the first call loads the script (NOSCRIPT, SCRIPT LOAD)
    costs = {}
    for count in (10, 1_000):
        tag = f"big{count}"
        for i in range(count):
            cache.set(f"{tag}:{i}", i, tags=(tag, f"item:{i}"))
        cache.set(f"{tag}:untagged", "stays")
        before = commands(raw)
        cache.invalidate_tags(tag)
        costs[count] = commands(raw) - before
        reader = make_cache()  # another process: learns the tag version from Redis
        assert all(reader.get(f"{tag}:{i}", "MISS") == "MISS" for i in range(count))
        assert all(cache.get(f"{tag}:{i}", "MISS") == "MISS" for i in range(0, count, 97))
        assert reader.get(f"{tag}:untagged") == "stays"
    assert costs[10]["evalsha"] == 1
    assert costs[10] == costs[1_000]  # the same commands (those the script ran too): O(1)
    # One small key per invalidated tag, no expiry (so no entry outlives its tag), no member sets.
    tag_keys = sorted(k.decode() for k in raw.scan_iter(f"{ns}:tag:*", count=1000))
    assert tag_keys == [f"{ns}:tag:{{big1000}}", f"{ns}:tag:{{big10}}", f"{ns}:tag:{{warm-up}}"]
    assert raw.ttl(tag_keys[0]) == -1
    assert int(raw.memory_usage(tag_keys[0]) or 0) < 200


def test_a_tag_set_costs_grow_with_its_entries(raw: redis.Redis, ns: str) -> None:
    """The unprotected path (a Redis set of member keys per tag, cashews' ``delete_tags``):
    memory and invalidation commands grow with the number of entries."""
    tag = f"{ns}:tagset"
    with raw.pipeline(transaction=False) as pipe:
        for i in range(10_000):
            pipe.set(f"{ns}:e{i}", i)
            pipe.sadd(tag, f"{ns}:e{i}")
        pipe.execute()
    size = int(raw.memory_usage(tag) or 0)
    before = commands(raw)
    while members := raw.spop(tag, 100):
        raw.unlink(*members)
    spent = commands(raw) - before
    print(f"\ntag set of 10,000 entries: {size:,} bytes, {spent.total()} commands to invalidate")
    assert size > 100_000
    assert spent.total() > 100


def test_tag_semantics(make_cache: MakeCache) -> None:
    cache, other = make_cache(), make_cache()
    cache.set("a", 1, tags=("t1", "t2"))
    cache.set("b", 2, tags=("t2",))
    cache.set("c", 3, tags=("t3",), ttl=0.2)  # a short-lived entry under a tag...
    cache.set("d", 4, tags=("t3",), ttl=30)  # ...does not shorten the tag for long ones
    assert [other.get(k) for k in "abcd"] == [1, 2, 3, 4]
    cache.invalidate_tags("t1")
    wait_until(lambda: other.get("a", "MISS") == "MISS")  # other's L1 copy: once told
    assert other.get("b") == 2
    cache.set("a", 10, tags=("t1",))  # stored under the new version: valid
    assert other.get("a") == 10
    time.sleep(0.3)
    other.invalidate_tags("t3", "t2")
    wait_until(lambda: [cache.get(k, "MISS") for k in "abcd"] == [10, "MISS", "MISS", "MISS"])
    assert cache.get_or_set("b", lambda: 20, tags=("t2",)) == 20
    assert other.get("b") == 20


async def test_async_tags_across_caches(make_async_cache: MakeAsyncCache) -> None:
    cache, other = make_async_cache(), make_async_cache()
    await cache.set("a", 1, tags=("t",))
    assert await other.get_or_set("b", lambda: 2, tags=("t",)) == 2
    assert await cache.get("b") == 2
    await other.invalidate_tags("t")
    assert await other.get("a", "MISS") == "MISS"  # at once where it was invalidated

    async def gone() -> bool:
        return await cache.get("a", "MISS") == await cache.get("b", "MISS") == "MISS"

    await await_until(gone)  # in the other cache's L1 once the message lands


def test_l1_tag_memory_is_bounded() -> None:
    tier = MemoryTier(100, ttl=30, max_tags=50)
    entry = Entry("v", time.time() + 30, time.time() + 60, 0.0, {"t0": "1"})
    tier.set_tag("t0", "1")
    assert tier.fill("k", entry)
    for i in range(1, 120):
        tier.set_tag(f"t{i}", "1")
    known = sum(tier.tag_versions([f"t{i}"]) is not None for i in range(120))
    assert known <= 50
    # Forgetting t0 must not make an entry stored under it look valid: it went too.
    assert tier.tag_versions(["t0"]) is None
    assert tier.get("k", time.time()) is None
