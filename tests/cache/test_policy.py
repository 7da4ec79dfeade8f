"""L1 eviction: bounded by entry count (and optionally bytes); W-TinyLFU beats LRU at the same
size on a Zipf(1.0) trace and keeps its hot set through a one-off scan that flushes LRU."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from hotpath.cache import CacheConfigError, MemoryTier
from hotpath.cache._entry import Entry

from .conftest import MakeCache

KEYS, REQUESTS = 10_000, 100_000


def zipf_trace(seed: int, s: float = 1.0) -> list[str]:
    weights = itertools.accumulate(1 / (rank + 1) ** s for rank in range(KEYS))
    ranks = random.Random(seed).choices(range(KEYS), cum_weights=list(weights), k=REQUESTS)
    return [f"key:{r}" for r in ranks]


def hit_ratio(policy: str, size: int, trace: list[str]) -> float:
    tier = MemoryTier(size, ttl=3600, policy=policy)  # type: ignore[arg-type]
    now = time.time()
    entry = Entry("v", now + 3600, now + 7200, 0.0, {})
    hits = 0
    for key in trace:
        if tier.get(key, now) is not None:
            hits += 1
        else:
            tier.fill(key, entry)
        assert len(tier) <= size
    return hits / len(trace)


@pytest.mark.parametrize("size", [100, 500])
def test_tinylfu_beats_lru_on_zipf(size: int) -> None:
    trace = zipf_trace(seed=size)
    tinylfu, lru = hit_ratio("tinylfu", size, trace), hit_ratio("lru", size, trace)
    print(f"\nZipf(1.0), {KEYS:,} keys, L1 of {size}: W-TinyLFU {tinylfu:.3f}, LRU {lru:.3f}")
    assert tinylfu > lru + 0.03


def test_tinylfu_keeps_its_hot_set_through_a_scan() -> None:
    now = time.time()
    entry = Entry("v", now + 3600, now + 7200, 0.0, {})
    results = {}
    for policy in ("tinylfu", "lru"):
        tier = MemoryTier(100, ttl=3600, policy=policy)  # type: ignore[arg-type]
        hot = [f"hot:{i}" for i in range(50)]
        for _ in range(20):
            for key in hot:
                if tier.get(key, now) is None:
                    tier.fill(key, entry)
        for i in range(1000):  # a one-off scan of cold keys
            tier.fill(f"scan:{i}", entry)
        results[policy] = sum(tier.get(key, now) is not None for key in hot)
        assert tier.evictions >= 900
    assert results["tinylfu"] >= 45
    assert results["lru"] == 0


def test_memory_tier_options() -> None:
    with pytest.raises(CacheConfigError):
        MemoryTier(0)
    with pytest.raises(CacheConfigError):
        MemoryTier(10, ttl=0)
    with pytest.raises(CacheConfigError, match="policy"):
        MemoryTier(10, policy="fifo")  # type: ignore[arg-type]
    with pytest.raises(CacheConfigError, match="max_bytes"):
        MemoryTier(10, max_bytes=0)


@pytest.mark.parametrize("policy", ["tinylfu", "lru"])
def test_max_bytes_bounds_the_total_size(policy: str) -> None:
    tier = MemoryTier(1000, ttl=60, policy=policy, max_bytes=10_000)  # type: ignore[arg-type]
    far = time.time() + 60
    for n in range(200):
        assert isinstance(tier.fill(f"k{n}", Entry(n, far, far, 0.0, {}, size=300)), bool)
        assert tier.bytes <= 10_000
    assert 30 <= len(tier) <= 33  # 10,000 / 300, whatever the count bound allows
    assert tier.bytes == 300 * len(tier)
    assert tier.evictions == 200 - len(tier)
    big = Entry("big", far, far, 0.0, {}, size=10_001)
    assert tier.fill("big", big) is False  # over the whole bound: not kept here
    assert tier.get("big", time.time()) is None
    tier.invalidate("k199")
    tier.clear()
    assert tier.bytes == 0


def test_a_value_too_big_for_l1_is_still_served_from_redis(make_cache: MakeCache) -> None:
    cache = make_cache(l1=MemoryTier(100, ttl=30, max_bytes=2_000))
    cache.set("small", "x" * 100)
    cache.set("large", "x" * 5_000)
    assert cache.get("large") == "x" * 5_000
    assert cache.get("small") == "x" * 100
    stats = cache.stats()
    assert stats.l2_hits >= 1  # "large" came from Redis each time
    assert stats.l1_hits >= 1  # "small" from memory
