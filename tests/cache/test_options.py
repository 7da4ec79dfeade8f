"""A cache's options are one validated frozen object (``CacheOptions``), given as keywords
or as ``options=`` (keywords override its fields), the same for both twins."""

from __future__ import annotations

import dataclasses

import pytest
import redis

from hotpath.cache import CacheConfigError, CacheOptions, ValueTooLargeError

from .conftest import MakeAsyncCache, MakeCache

pytestmark = pytest.mark.timeout(60)

# The fixtures pass namespace=<the test's own> as a keyword: it overrides the object's.
SMALL = CacheOptions(namespace="not-this-one", max_value_bytes=64, negative_ttl=None)


def test_an_options_object_configures_the_cache(
    make_cache: MakeCache, raw: redis.Redis, ns: str
) -> None:
    cache = make_cache(options=SMALL)
    with pytest.raises(ValueTooLargeError, match="max_value_bytes=64"):
        cache.set("big", "x" * 100)
    cache.set("small", "v")
    assert raw.exists(f"{ns}:{{small}}") == 1  # the keyword's namespace, not the object's
    assert raw.exists("not-this-one:{small}") == 0
    assert cache.get("small") == "v"


async def test_the_async_twin_takes_the_same_object(
    make_async_cache: MakeAsyncCache, raw: redis.Redis, ns: str
) -> None:
    cache = make_async_cache(options=SMALL)
    with pytest.raises(ValueTooLargeError, match="max_value_bytes=64"):
        await cache.set("big", "x" * 100)
    await cache.set("small", "v")
    assert raw.exists(f"{ns}:{{small}}") == 1
    assert await cache.get("small") == "v"


@pytest.mark.faults
def test_a_misspelt_option_names_itself_and_the_known_ones(make_cache: MakeCache) -> None:
    with pytest.raises(CacheConfigError, match=r"defualt_ttl=3: not an option of a cache"):
        make_cache(defualt_ttl=3)


@pytest.mark.faults
def test_a_bad_option_is_refused_when_the_object_is_built() -> None:
    with pytest.raises(CacheConfigError, match=r"jitter must be a finite number in \[0, 1\)"):
        CacheOptions(jitter=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SMALL.default_ttl = 1.0  # type: ignore[misc]
