"""Bad numbers and URLs are refused where they enter (constructors, ``set``, ``get_or_set``,
``@cached``) with hotpath's own error naming the option, the value and a fix: NaN passes
every comparison and infinity overflows later, so neither may get in."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pytest

from hotpath import HotpathError
from hotpath.cache import CacheConfigError, MemoryTier, RedisTier

from .conftest import MakeAsyncCache, MakeCache

pytestmark = pytest.mark.timeout(60)

NAN, INF = math.nan, math.inf
BAD_SECONDS = [NAN, INF, -INF, 0, -10, 1e300, "30", True]


def refused(option: str, build: Callable[[], Any]) -> CacheConfigError:
    with pytest.raises(CacheConfigError) as caught:
        build()
    error = caught.value
    assert isinstance(error, ValueError)
    assert isinstance(error, HotpathError)
    assert option in str(error), str(error)
    assert "e.g." in str(error), str(error)
    return error


@pytest.mark.parametrize("value", BAD_SECONDS)
def test_memory_tier_ttl(value: Any) -> None:
    error = refused("ttl", lambda: MemoryTier(ttl=value))
    assert repr(value) in str(error)


@pytest.mark.parametrize("value", [NAN, 0, -1, 1.5, "10"])
def test_memory_tier_counts(value: Any) -> None:
    for option in ("maxsize", "max_tags", "max_bytes"):
        refused(option, functools.partial(MemoryTier, **{option: value}))


@pytest.mark.parametrize(
    ("option", "value"),
    [
        *(("default_ttl", v) for v in BAD_SECONDS),
        *(("negative_ttl", v) for v in BAD_SECONDS),
        *(("stale_ttl", v) for v in [NAN, INF, -10, -0.001, "5"]),
        *(("wait_timeout", v) for v in [NAN, INF, -1]),
        *(("jitter", v) for v in [NAN, INF, -0.1, 1.0, 1.5]),
        *(("xfetch_beta", v) for v in [NAN, INF, -1.0]),
        *(("max_value_bytes", v) for v in [NAN, 0, 1.5]),
        ("refresh_workers", 0),
    ],
)
def test_cache_options(make_cache: MakeCache, option: str, value: Any) -> None:
    error = refused(option, lambda: make_cache(**{option: value}))
    assert repr(value) in str(error)


@pytest.mark.parametrize(
    ("option", "value"),
    [("default_ttl", NAN), ("stale_ttl", -10), ("xfetch_beta", NAN), ("jitter", INF)],
)
async def test_async_cache_options(
    make_async_cache: MakeAsyncCache, option: str, value: Any
) -> None:
    refused(option, lambda: make_async_cache(**{option: value}))


def test_zero_is_a_valid_stale_ttl_and_wait_timeout(make_cache: MakeCache) -> None:
    cache = make_cache(stale_ttl=0, wait_timeout=0)
    assert cache.get_or_set("k", lambda: "v") == "v"


@pytest.mark.parametrize("value", BAD_SECONDS)
def test_per_call_ttl(make_cache: MakeCache, value: Any) -> None:
    cache = make_cache()
    refused("ttl", lambda: cache.set("k", "v", ttl=value))
    refused("ttl", lambda: cache.get_or_set("k", lambda: "v", ttl=value))
    refused("ttl", lambda: cache.cached(ttl=value))
    assert cache.get("k", default="miss") == "miss"  # nothing was stored


@pytest.mark.parametrize("value", [NAN, INF, -1])
async def test_async_per_call_ttl(make_async_cache: MakeAsyncCache, value: Any) -> None:
    cache = make_async_cache()
    with pytest.raises(CacheConfigError, match="ttl"):
        await cache.set("k", "v", ttl=value)
    with pytest.raises(CacheConfigError, match="ttl"):
        await cache.get_or_set("k", lambda: "v", ttl=value)
    refused("ttl", lambda: cache.cached(ttl=value))
    assert await cache.get("k", default="miss") == "miss"


@pytest.mark.parametrize("url", ["not a url", "http://localhost:6379", "redis://h:port/0", ""])
def test_redis_tier_url(url: str) -> None:
    error = refused("RedisTier", lambda: RedisTier(url))
    assert "redis://host:6379/0" in str(error)


def test_a_password_in_a_bad_url_is_not_shown() -> None:
    error = refused("RedisTier", lambda: RedisTier("redis://me:s3cret@host:notaport/0"))
    assert "s3cret" not in str(error)


@pytest.mark.parametrize(
    "option",
    ["socket_timeout", "connect_timeout", "lease_ttl", "reset_timeout", "health_interval"],
)
@pytest.mark.parametrize("value", [NAN, INF, 0, -1])
def test_redis_tier_numbers(redis_url: str, option: str, value: Any) -> None:
    refused(option, lambda: RedisTier(redis_url, **{option: value}))


def test_redis_tier_failure_threshold(redis_url: str) -> None:
    refused("failure_threshold", lambda: RedisTier(redis_url, failure_threshold=0))
