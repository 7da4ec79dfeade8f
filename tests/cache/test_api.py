"""The API on real Redis: get/set/delete/get_or_set, None as a value, TTLs and jitter, L1-only
and L2-only caches, ``@cached`` key and tag templates, namespaces, hashed keys, counters."""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass

import pytest
import redis
import redis.asyncio

from hotpath.cache import (
    AsyncCache,
    Cache,
    CacheConfigError,
    CacheError,
    CacheKeyError,
    MemoryTier,
    RedisTier,
    register_type,
)
from hotpath.cache._entry import unpack
from hotpath.cache._serialize import JsonSerializer

from ._helpers import wait_until
from .conftest import MakeAsyncCache, MakeCache

pytestmark = pytest.mark.timeout(60)


class Loader:
    """Counts its calls; returns ``value`` (or ``value(n)`` for a callable)."""

    def __init__(self, value: object = "v") -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.value(self.calls) if callable(self.value) else self.value


def stored(raw: redis.Redis, ns: str, name: str) -> bytes | None:
    """The raw entry of ``name`` in Redis (``name`` as the cache spells it)."""
    value = raw.get(f"{ns}:{{{name}}}")
    assert value is None or isinstance(value, bytes)
    return value


# -- basics -----------------------------------------------------------------------------------


def test_get_set_delete_and_default_on_miss(
    make_cache: MakeCache, raw: redis.Redis, ns: str
) -> None:
    cache = make_cache()
    assert cache.get("user:1") is None
    assert cache.get("user:1", default="nothing") == "nothing"
    cache.set("user:1", {"name": "ada", "id": 1})
    assert cache.get("user:1") == {"name": "ada", "id": 1}
    assert stored(raw, ns, "user:1") is not None  # written through to Redis
    other = make_cache()  # another process's view: its L1 is empty, L2 has it
    assert other.get("user:1") == {"name": "ada", "id": 1}
    assert other.stats().l2_hits == 1
    cache.delete("user:1")
    assert stored(raw, ns, "user:1") is None
    assert cache.get("user:1", "gone") == "gone"
    wait_until(lambda: other.get("user:1", "gone") == "gone")  # its L1 copy: once told


def test_get_or_set_loads_once_then_hits_l1_then_l2(make_cache: MakeCache) -> None:
    cache = make_cache()
    loader = Loader({"n": 1})
    assert cache.get_or_set("k", loader) == {"n": 1}
    assert cache.get_or_set("k", loader) == {"n": 1}
    assert loader.calls == 1
    fresh = make_cache()
    assert fresh.get_or_set("k", loader) == {"n": 1}
    assert loader.calls == 1
    first, second = cache.stats(), fresh.stats()
    assert (first.misses, first.loads, first.l1_hits) == (1, 1, 1)
    assert (second.misses, second.loads, second.l2_hits) == (0, 0, 1)
    assert first.load_seconds >= 0
    assert first.hit_ratio == 0.5


async def test_async_get_set_delete_get_or_set(make_async_cache: MakeAsyncCache) -> None:
    cache = make_async_cache()
    assert await cache.get("a", "miss") == "miss"
    await cache.set("a", [1, 2])
    assert await cache.get("a") == [1, 2]
    await cache.delete("a")
    assert await cache.get("a", "miss") == "miss"
    calls = 0

    async def load() -> str:
        nonlocal calls
        calls += 1
        return "loaded"

    assert await cache.get_or_set("b", load) == "loaded"
    assert await cache.get_or_set("b", load) == "loaded"
    assert await cache.get_or_set("c", lambda: "sync loader") == "sync loader"
    assert calls == 1
    other = make_async_cache()
    assert await other.get("b") == "loaded"
    assert other.stats().l2_hits == 1


def test_none_is_cached_distinct_from_a_miss_with_a_shorter_ttl(make_cache: MakeCache) -> None:
    cache = make_cache(default_ttl=30, negative_ttl=0.3, jitter=0)
    loader = Loader(None)
    assert cache.get_or_set("absent", loader) is None
    assert cache.get_or_set("absent", loader) is None
    assert loader.calls == 1  # None was cached: no second load
    assert cache.get("absent", "MISS") is None  # a hit on None, not the default
    assert make_cache().get("absent", "MISS") is None  # also in Redis
    cache.set("present", "x")
    time.sleep(0.35)
    assert cache.get("absent", "MISS") == "MISS"  # negative_ttl over
    assert make_cache().get("absent", "MISS") == "MISS"
    assert cache.get("present") == "x"  # default_ttl still running


async def test_async_none_is_cached(make_async_cache: MakeAsyncCache) -> None:
    cache = make_async_cache(negative_ttl=0.3, jitter=0)
    loader = Loader(None)
    assert await cache.get_or_set("absent", loader) is None
    assert await cache.get_or_set("absent", loader) is None
    assert loader.calls == 1
    assert await cache.get("absent", "MISS") is None
    assert await cache.get("never", "MISS") == "MISS"


@pytest.mark.parametrize("tiers", ["l1+l2", "l2"])
def test_ttl_expires_in_every_tier(
    make_cache: MakeCache, raw: redis.Redis, ns: str, tiers: str
) -> None:
    cache = make_cache(l1=tiers == "l1+l2", jitter=0, stale_ttl=0.2)
    cache.set("short", "s", ttl=0.3)
    cache.set("long", "l", ttl=30)
    pttl = raw.pttl(f"{ns}:{{short}}")
    assert 0 < pttl <= 500  # Redis drops it at the hard expiry: ttl + stale_ttl
    assert cache.get("short") == "s"
    time.sleep(0.35)
    assert cache.get("short", "expired") == "expired"  # past the soft TTL: get never serves it
    time.sleep(0.2)
    assert stored(raw, ns, "short") is None  # past the hard TTL: gone from Redis too
    assert cache.get("long") == "l"


def test_jitter_spreads_expiries(make_cache: MakeCache, raw: redis.Redis, ns: str) -> None:
    def soft_expiries(cache: Cache, prefix: str) -> list[float]:
        began = time.time()
        for i in range(40):
            cache.set(f"{prefix}{i}", i, ttl=100)
        out = []
        for i in range(40):
            data = stored(raw, ns, f"{prefix}{i}")
            assert data is not None
            out.append(unpack(data, JsonSerializer()).soft_expiry - began)
        return out

    plain = soft_expiries(make_cache(l1=False, jitter=0), "p")
    spread = soft_expiries(make_cache(l1=False, jitter=0.2), "j")
    assert max(plain) - min(plain) < 1.0  # without jitter: all within the loop's own time
    assert all(79 < s < 121 for s in spread)  # +-20%
    assert max(spread) - min(spread) > 10
    assert statistics.pstdev(spread) > 5 * statistics.pstdev(plain) + 2


# -- configurations ------------------------------------------------------------------------------


def test_l1_only_cache_needs_no_redis() -> None:
    with Cache(l1=MemoryTier(100, ttl=30), namespace="l1only") as cache:
        loader = Loader("v")
        assert cache.get_or_set("k", loader) == "v"
        assert cache.get_or_set("k", loader) == "v"
        cache.set("x", 1, tags=("t",))
        assert cache.get("x") == 1
        cache.invalidate_tags("t")
        assert cache.get("x", "gone") == "gone"
        cache.delete("k")
        assert cache.get("k", "gone") == "gone"
        stats = cache.stats()
        assert loader.calls == 1
        assert stats.l1_hits >= 2
        assert stats.l2_hits == 0
        assert stats.circuit == "n/a"
        assert stats.writes_failed == 0


async def test_async_l1_only_cache() -> None:
    async with AsyncCache(l1=MemoryTier(100, ttl=30), namespace="l1only") as cache:
        loader = Loader("v")
        assert await cache.get_or_set("k", loader) == "v"
        assert await cache.get_or_set("k", loader) == "v"
        assert loader.calls == 1


def test_l2_only_cache_reads_redis_every_time(make_cache: MakeCache) -> None:
    writer, reader = make_cache(l1=False), make_cache(l1=False)
    writer.set("k", "one")
    assert reader.get("k") == "one"
    writer.set("k", "two")
    assert reader.get("k") == "two"  # no L1 copy to go stale
    assert reader.get_or_set("k", Loader("unused")) == "two"
    stats = reader.stats()
    assert (stats.l1_hits, stats.l2_hits, stats.l1_size) == (0, 3, 0)


def test_a_cache_needs_a_tier_and_sane_options(redis_url: str) -> None:
    with pytest.raises(CacheConfigError, match="at least one tier"):
        Cache()
    with pytest.raises(CacheConfigError, match="default_ttl"):
        Cache(MemoryTier(), default_ttl=0)
    with pytest.raises(CacheConfigError, match="jitter"):
        Cache(MemoryTier(), jitter=1.5)
    with pytest.raises(CacheConfigError, match="serializer"):
        Cache(MemoryTier(), serializer="yaml")
    with pytest.raises(CacheConfigError, match="AsyncCache"):
        Cache(l2=RedisTier(redis.asyncio.Redis.from_url(redis_url)))


# -- @cached ----------------------------------------------------------------------------------


@register_type
@dataclass
class User:
    id: int
    name: str


def test_cached_decorator_with_key_and_tag_templates(
    make_cache: MakeCache, raw: redis.Redis, ns: str
) -> None:
    cache = make_cache()
    calls: list[int] = []

    @cache.cached(ttl=30, key="user:{user_id}", tags=("user:{user_id}", "users"))
    def get_user(user_id: int, verbose: bool = False) -> User:
        calls.append(user_id)
        return User(user_id, f"u{user_id}")

    assert get_user(42) == User(42, "u42")
    assert get_user(user_id=42, verbose=True) == User(42, "u42")  # same key
    assert get_user(7) == User(7, "u7")
    assert calls == [42, 7]
    assert stored(raw, ns, "user:42") is not None
    assert raw.exists(f"{ns}:tag:{{user:42}}") == 0  # tags exist in Redis once invalidated
    cache.invalidate_tags("user:42")
    assert raw.exists(f"{ns}:tag:{{user:42}}") == 1
    assert get_user(42) == User(42, "u42")
    assert get_user(7) == User(7, "u7")
    assert calls == [42, 7, 42]
    cache.invalidate_tags("users")
    get_user(42)
    get_user(7)
    assert calls == [42, 7, 42, 42, 7]


def test_cached_without_template_keys_by_arguments(make_cache: MakeCache) -> None:
    cache = make_cache()
    calls: list[tuple[int, int]] = []

    class Service:
        @cache.cached(ttl=30)
        def add(self, a: int, b: int = 1) -> int:
            calls.append((a, b))
            return a + b

    one, two = Service(), Service()
    assert one.add(1) == 2
    assert two.add(1) == 2
    assert one.add(1, b=1) == 2
    assert one.add(2, 3) == 5
    assert calls == [(1, 1), (2, 3)]  # self is not part of the key


def test_a_bad_template_names_the_parameter(make_cache: MakeCache) -> None:
    cache = make_cache()
    with pytest.raises(CacheKeyError, match=r"\{usr_id\}.*user_id"):

        @cache.cached(key="user:{usr_id}")
        def get_user(user_id: int) -> int:
            return user_id

    with pytest.raises(CacheKeyError, match=r"\{org\}"):

        @cache.cached(key="user:{user_id}", tags=("org:{org}",))
        def get_member(user_id: int) -> int:
            return user_id


async def test_async_cached_decorates_async_def(make_async_cache: MakeAsyncCache) -> None:
    cache = make_async_cache()
    calls: list[int] = []

    @cache.cached(ttl=30, key="item:{item_id}", tags=("item:{item_id}",))
    async def get_item(item_id: int) -> dict[str, int]:
        calls.append(item_id)
        return {"id": item_id}

    assert await get_item(1) == {"id": 1}
    assert await get_item(item_id=1) == {"id": 1}
    assert calls == [1]
    await cache.invalidate_tags("item:1")
    assert await get_item(1) == {"id": 1}
    assert calls == [1, 1]
    with pytest.raises(CacheKeyError, match="item_id"):

        @cache.cached(key="item:{id}")
        async def broken(item_id: int) -> int:
            return item_id


# -- keys -------------------------------------------------------------------------------------


def test_namespaces_keep_caches_apart(make_cache: MakeCache, raw: redis.Redis, ns: str) -> None:
    shop = make_cache(namespace=f"{ns}shop")
    blog = make_cache(namespace=f"{ns}blog")
    shop.set("k", "shop value")
    blog.set("k", "blog value")
    assert (shop.get("k"), blog.get("k")) == ("shop value", "blog value")
    assert {k.decode() for k in raw.scan_iter(f"{ns}*")} == {f"{ns}shop:{{k}}", f"{ns}blog:{{k}}"}
    shop.delete("k")
    assert blog.get("k") == "blog value"
    for bad in ("a:b", "", "sp ace", "x" * 65, "{x}"):
        with pytest.raises(CacheKeyError, match="namespace"):
            Cache(MemoryTier(), namespace=bad)


def test_long_and_unsafe_keys_are_hashed(make_cache: MakeCache, raw: redis.Redis, ns: str) -> None:
    cache = make_cache()
    long_a, long_b = "a" * 300, "a" * 299 + "b"
    odd = ["with space", "brace{slot}", "new\nline", "tab\t", long_a, long_b]
    for i, key in enumerate(odd):
        cache.set(key, i)
    other = make_cache()
    assert [other.get(key) for key in odd] == list(range(len(odd)))  # no collisions
    names = sorted(k.decode() for k in raw.scan_iter(f"{ns}:*"))
    assert len(names) == len(odd)
    for name in names:
        assert name.startswith(f"{ns}:{{h:"), name
        assert len(name) == len(ns) + 37, name
    cache.set("plain:key-1", 1)
    assert raw.exists(f"{ns}:{{plain:key-1}}")
    for bad in ("", 42, None):
        with pytest.raises(CacheKeyError):
            cache.get(bad)  # type: ignore[arg-type]


def hashed_name(text: str) -> str:
    return "h:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@pytest.mark.parametrize("tiers", ["l1+l2", "l2", "l1"])
def test_a_key_spelled_like_a_hashed_one_is_another_key(
    make_cache: MakeCache, raw: redis.Redis, ns: str, tiers: str
) -> None:
    """A hashed name is "h:" + a digest; a user key that starts with "h:" is hashed too, so
    no key can name another key's (or tag's) entry."""
    cache = make_cache(l1=tiers != "l2", l2=tiers != "l1")
    long_key = "user-report:" + "x" * 300
    cache.set(long_key, "long key's value", tags=(long_key,))
    for forged in (hashed_name(long_key), "h:" + "0" * 32, "h:"):
        assert cache.get(forged, default="miss") == "miss"
        assert cache.get_or_set(forged, lambda: "forged key's own") == "forged key's own"
    assert cache.get(long_key) == "long key's value"
    # Tags live in the same two spaces: invalidating the forged spelling leaves the long tag.
    cache.invalidate_tags(hashed_name(long_key))
    assert cache.get(long_key) == "long key's value"
    if tiers != "l1":
        assert raw.get(f"{ns}:{{{hashed_name(hashed_name(long_key))}}}") is not None


async def test_async_a_key_spelled_like_a_hashed_one_is_another_key(
    make_async_cache: MakeAsyncCache,
) -> None:
    cache = make_async_cache()
    long_key = "k" * 201
    await cache.set(long_key, "long key's value")
    assert await cache.get(hashed_name(long_key), default="miss") == "miss"
    assert await cache.get(long_key) == "long key's value"


def test_stats_count_every_path(make_cache: MakeCache) -> None:
    cache = make_cache(l1=False)
    cache.get("missing")
    cache.get_or_set("k", lambda: time.sleep(0.02) or "v")
    cache.get("k")
    with pytest.raises(ZeroDivisionError):
        cache.get_or_set("bad", lambda: 1 / 0)
    stats = cache.stats()
    assert (stats.misses, stats.loads, stats.l2_hits, stats.load_errors) == (3, 1, 1, 1)
    assert stats.load_seconds >= 0.02
    assert stats.hits == 1
    assert stats.hit_ratio == 0.25
    assert stats.circuit == "closed"
    assert stats.channel_connected
    as_dict = stats.as_dict()
    assert as_dict["hits"] == 1
    assert "stampede_joins" in as_dict
    assert "writes_failed" in as_dict


def test_redis_tier_accepts_ready_clients(redis_url: str, ns: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=0.5)
    with Cache(MemoryTier(10), RedisTier(client, health_interval=0.1), namespace=ns) as one:
        one.set("k", "v")
        with Cache(MemoryTier(10), RedisTier(client, health_interval=0.1), namespace=ns) as two:
            assert two.get("k") == "v"
            assert two.stats().channel_connected
            one.delete("k")
            wait_until(lambda: two.get("k", "MISS") == "MISS")
    assert client.ping()  # a client the caller passed in is left open for the caller
    client.close()


async def test_async_redis_tier_accepts_ready_clients(redis_url: str, ns: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=0.5)
    async with AsyncCache(MemoryTier(10), RedisTier(client), namespace=ns) as one:
        await one.set("k", "v")
        async with AsyncCache(MemoryTier(10), RedisTier(client), namespace=ns) as two:
            assert await two.get("k") == "v"
            assert two.stats().channel_connected  # pub/sub on a connection derived from it
    assert await client.ping()
    await client.aclose()


def test_a_loader_asking_for_its_own_key_fails_fast(make_cache: MakeCache) -> None:
    cache = make_cache()

    def recursive() -> object:
        return cache.get_or_set("k", recursive)

    with pytest.raises(CacheError, match="wait for itself"):
        cache.get_or_set("k", recursive)
    assert cache.get_or_set("k", lambda: "fine") == "fine"  # and the lease was given back
