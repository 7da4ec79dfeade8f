"""Serialization through Redis: orjson by default and msgpack round-trip Python types
faithfully; pickle is never read by a cache that did not ask for it (a compromised Redis must
not mean code execution); oversized and unserializable values are refused clearly."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import math
import pickle
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from hotpath.cache import (
    Cache,
    CacheConfigError,
    MemoryTier,
    SerializationError,
    ValueTooLargeError,
    register_type,
)
from hotpath.cache._entry import Entry, pack

from .conftest import MakeAsyncCache, MakeCache

pytestmark = pytest.mark.timeout(60)


@register_type
@dataclasses.dataclass(frozen=True)
class Address:
    city: str
    zip: str


@register_type
@dataclasses.dataclass
class Customer:
    id: uuid.UUID
    name: str
    since: dt.date
    balance: decimal.Decimal
    address: Address
    tags: frozenset[str]


def sample() -> dict[Any, Any]:
    return {
        "aware": dt.datetime(
            2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))
        ),
        "naive": dt.datetime(2024, 5, 6, 7, 8, 9),
        "date": dt.date(2024, 2, 29),
        "time": dt.time(23, 59, 58, 999),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "decimal": decimal.Decimal("10.50"),  # the exponent survives: not 10.5
        "tuple": (1, "two", (3.0, None)),
        "set": {1, 2, 3},
        "frozenset": frozenset({"a"}),
        "bytes": b"\x00\xffbinary",
        "customer": Customer(
            uuid.UUID(int=7),
            "Ada",
            dt.date(2020, 1, 1),
            decimal.Decimal("-0.01"),
            Address("Paris", "75001"),
            frozenset({"vip"}),
        ),
        1: "int key",
        (2, 3): "tuple key",
        None: "None key",
        "nested": {5: [dt.date(2000, 1, 1), {"$t": "a user key that looks like a tag"}]},
        "big": 2**80,
        "floats": [1.5, math.inf, -math.inf],
        "list": [True, False, 0, -1, "", [], {}],
        "unicode": "héllo ✓",
    }


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_values_round_trip_faithfully_through_redis(make_cache: MakeCache, serializer: str) -> None:
    writer = make_cache(l1=False, serializer=serializer)
    reader = make_cache(l1=False, serializer=serializer)
    value = sample()
    writer.set("v", value)
    got = reader.get("v")
    assert got == value
    for key, item in value.items():  # equal *and* of the same type (10.50, not 10.5)
        assert type(got[key]) is type(item), key
    assert str(got["decimal"]) == "10.50"
    assert got["aware"].utcoffset() == dt.timedelta(hours=2)
    assert isinstance(got["customer"].address, Address)
    assert math.isnan(reader.get_or_set("nan", lambda: math.nan))  # orjson alone: null
    assert math.isnan(writer.get("nan"))


async def test_async_round_trip(make_async_cache: MakeAsyncCache) -> None:
    writer, reader = make_async_cache(l1=False), make_async_cache(l1=False)
    value = sample()
    await writer.set("v", value)
    assert await reader.get("v") == value


class Boobytrap:
    """Unpickling it creates ``path``: a stand-in for arbitrary code execution."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_pickle_is_never_read_by_default(
    make_cache: MakeCache, raw: redis.Redis, ns: str, tmp_path: Path
) -> None:
    marker = tmp_path / "executed"
    attacker = make_cache(l1=False, serializer="pickle")
    attacker.set("profile", Boobytrap(marker))
    assert not marker.exists()
    victim = make_cache(l1=False)  # serializer="json", the default
    assert victim.get("profile", "MISS") == "MISS"
    assert victim.get_or_set("profile", lambda: "reloaded") == "reloaded"
    assert not marker.exists()
    # An entry that claims to be JSON but holds a pickle is no better.
    forged = pack(
        Entry(None, time.time() + 60, time.time() + 90, 0.0, {}),
        _ForgedJson(Boobytrap(marker)),
        1 << 20,
        "forged",
    )
    raw.set(f"{ns}:{{forged}}", forged)
    assert victim.get("forged", "MISS") == "MISS"
    assert not marker.exists()
    assert victim.stats().decode_errors == 3
    msgpack_cache = make_cache(l1=False, serializer="msgpack")
    assert msgpack_cache.get("profile", "MISS") == "MISS"
    assert not marker.exists()
    # A dataclass name in a stored value is only ever looked up among registered classes.
    raw.set(f"{ns}:{{named}}", pack_json_payload(b'T{"$t":"dataclass","c":"os:system","v":{}}'))
    assert victim.get("named", "MISS") == "MISS"
    # The unprotected path: a cache that opted into pickle runs the attacker's code on read.
    attacker.set("trap", Boobytrap(marker))
    pickle_reader = make_cache(l1=False, serializer="pickle")
    pickle_reader.get("trap")
    assert marker.exists()


class _ForgedJson:
    ident = 1
    name = "json"

    def __init__(self, value: object) -> None:
        self.value = value

    def dumps(self, value: object) -> bytes:
        return pickle.dumps(self.value)

    def loads(self, data: bytes) -> object:
        raise AssertionError("not used")


def pack_json_payload(payload: bytes) -> bytes:
    class Raw:
        ident = 1
        name = "json"

        def dumps(self, value: object) -> bytes:
            return payload

        def loads(self, data: bytes) -> object:
            raise AssertionError("not used")

    return pack(Entry(None, time.time() + 60, time.time() + 90, 0.0, {}), Raw(), 1 << 20, "x")


@pytest.mark.parametrize("tiers", ["l1+l2", "l1"])
def test_values_over_max_value_bytes_are_refused(
    make_cache: MakeCache, raw: redis.Redis, ns: str, tiers: str
) -> None:
    cache = make_cache(l2=tiers == "l1+l2", max_value_bytes=1000)
    cache.set("small", "x" * 500)
    with pytest.raises(ValueTooLargeError, match=r"'big' is 2,0\d\d bytes.*max_value_bytes=1,000"):
        cache.set("big", "x" * 2000)
    assert cache.get("big", "MISS") == "MISS"
    assert raw.exists(f"{ns}:{{big}}") == 0
    with pytest.raises(ValueTooLargeError):
        cache.get_or_set("loaded", lambda: "y" * 5000)
    assert cache.get_or_set("loaded", lambda: "small now") == "small now"
    stats = cache.stats()
    assert (stats.lease_waits, stats.wait_timeouts) == (0, 0)  # the lease was given back
    assert cache.get("small") == "x" * 500


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_unserializable_values_raise_serialization_error(
    make_cache: MakeCache, serializer: str
) -> None:
    cache = make_cache(serializer=serializer)

    class Opaque:
        pass

    with pytest.raises(SerializationError, match="Opaque"):
        cache.set("k", {"nested": [Opaque()]})
    with pytest.raises(SerializationError):
        cache.get_or_set("k", object)
    assert cache.get("k", "MISS") == "MISS"
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    if serializer == "json":  # orjson stops at 255 levels (msgpack at 512)
        with pytest.raises(SerializationError, match="JSON"):
            cache.set("deep", deep)
    else:
        cache.set("deep", deep)
        assert make_cache(serializer=serializer).get("deep") == deep


def test_l1_only_cache_checks_serializability_too() -> None:
    with Cache(MemoryTier(10), namespace="l1ser") as cache:
        with pytest.raises(SerializationError):
            cache.get_or_set("k", object)
        with pytest.raises(SerializationError):
            cache.set("k", object())


def test_serializer_options_are_checked() -> None:
    class Bad:
        ident = 0
        name = "bad"

        def dumps(self, value: object) -> bytes:
            return b""

        def loads(self, data: bytes) -> object:
            return None

    with pytest.raises(CacheConfigError, match="ident"):
        Cache(MemoryTier(), serializer=Bad())
    with pytest.raises(CacheConfigError, match="not a dataclass"):
        register_type(int)
