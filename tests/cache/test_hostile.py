"""Whoever can write to Redis must not be able to make a read raise: hostile values written
with a plain client under every name hotpath uses (entries, tag versions, leases, the
invalidation channel) read as misses, are counted (``decode_errors``) and never served, and
``get_or_set`` returns the loader's value."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import redis

from hotpath.cache._entry import _HEADER
from hotpath.cache._redis import channel_name, entry_key, lease_key, tag_key
from hotpath.cache._serialize import resolve_serializer

from ._helpers import await_until, wait_until
from .conftest import MakeAsyncCache, MakeCache

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

SERIALIZERS = ["json", "msgpack"]


def entry_bytes(serializer: str, payload: bytes, tags: bytes = b"") -> bytes:
    """An entry with a well-formed header (fresh for a minute) around ``payload``/``tags``."""
    now = time.time()
    ident = resolve_serializer(serializer).ident
    return _HEADER.pack(1, ident, now + 60, now + 120, 0.0, len(tags)) + tags + payload


def deep(serializer: str, depth: int) -> bytes:
    """A value nested ``depth`` levels, in the form that makes the serializer walk it."""
    nested = b"[" * depth + b'{"$t":"tuple","v":[]}' + b"]" * depth
    if serializer == "json":
        return b"T" + nested
    packed: bytes = msgpack.packb(msgpack.ExtType(1, nested))
    return packed


def hostile_entries(serializer: str) -> dict[str, bytes]:
    value = resolve_serializer(serializer).dumps("hostile")
    return {
        "nested 400 deep": entry_bytes(serializer, deep(serializer, 400)),
        "nested 1000 deep": entry_bytes(serializer, deep(serializer, 1000)),
        "nested 5000 deep": entry_bytes(serializer, deep(serializer, 5000)),
        "tags a list": entry_bytes(serializer, value, b'["t", "1"]'),
        "tags a string": entry_bytes(serializer, value, b'"t"'),
        "tag versions not strings": entry_bytes(serializer, value, b'{"t": [1]}'),
        "tags not JSON": entry_bytes(serializer, value, b"{{{"),
        "truncated": b"\x01\x01\x00",
        "garbage": b"\xff" * 64,
        "NaN expiry": _HEADER.pack(1, 1, float("nan"), float("nan"), 0.0, 0) + value,
    }


def write_hostile(raw: redis.Redis, ns: str, key: str, what: str, value: bytes) -> None:
    raw.delete(entry_key(ns, key))
    if what == "another Redis type":
        raw.rpush(entry_key(ns, key), b"x")
    else:
        raw.set(entry_key(ns, key), value)


CASES = [*hostile_entries("json"), "another Redis type"]


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize("case", CASES)
def test_a_hostile_entry_is_a_counted_miss(
    make_cache: MakeCache, raw: redis.Redis, ns: str, serializer: str, case: str
) -> None:
    value = hostile_entries(serializer).get(case, b"")
    for tiers in ({"l1": True}, {"l1": False}):
        cache = make_cache(serializer=serializer, namespace=f"{ns}{int(tiers['l1'])}", **tiers)
        space = f"{ns}{int(tiers['l1'])}"
        write_hostile(raw, space, "k", case, value)
        assert cache.get("k", default="miss") == "miss"
        assert cache.stats().decode_errors == 1
        write_hostile(raw, space, "k", case, value)
        assert cache.get_or_set("k", lambda: "loaded") == "loaded"
        assert cache.stats().decode_errors == 2
        # The load replaced the hostile value: served from here on.
        assert cache.get("k") == "loaded"
        assert cache.get_or_set("k", lambda: "not again") == "loaded"


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize("case", CASES)
async def test_async_a_hostile_entry_is_a_counted_miss(
    make_async_cache: MakeAsyncCache, raw: redis.Redis, ns: str, serializer: str, case: str
) -> None:
    value = hostile_entries(serializer).get(case, b"")
    cache = make_async_cache(serializer=serializer)
    write_hostile(raw, ns, "k", case, value)
    assert await cache.get("k", default="miss") == "miss"
    write_hostile(raw, ns, "k", case, value)
    assert await cache.get_or_set("k", lambda: "loaded") == "loaded"
    assert cache.stats().decode_errors == 2
    assert await cache.get("k") == "loaded"


def hostile_tag_keys(raw: redis.Redis, ns: str) -> list[Callable[[], Any]]:
    key = tag_key(ns, "t")
    return [
        lambda: raw.set(key, b"not a version"),
        lambda: raw.set(key, b"\xff\xfe"),
        lambda: raw.set(key, b"1e300"),
        lambda: raw.set(key, b"99999999999999999999999"),
        lambda: raw.rpush(key, b"x"),
        lambda: raw.hset(key, "a", "b"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_hostile_tag_versions_neither_raise_nor_serve_stale(
    make_cache: MakeCache, raw: redis.Redis, ns: str, case: int
) -> None:
    cache, other = make_cache(), make_cache()
    raw.delete(tag_key(ns, "t"))
    hostile_tag_keys(raw, ns)[case]()
    assert cache.get_or_set("k", lambda: "v1", tags=("t",)) == "v1"
    assert other.get("k", default="miss") in ("v1", "miss")
    cache.invalidate_tags("t")  # replaces the hostile value with a version of its own
    assert cache.get("k", default="miss") == "miss"
    assert cache.get_or_set("k", lambda: "v2", tags=("t",)) == "v2"
    wait_until(lambda: other.get("k", default="miss") == "v2")
    cache.invalidate_tags("t")
    assert cache.get_or_set("k", lambda: "v3", tags=("t",)) == "v3"
    wait_until(lambda: other.get("k", default="miss") == "v3")


@pytest.mark.parametrize("case", range(6))
async def test_async_hostile_tag_versions(
    make_async_cache: MakeAsyncCache, raw: redis.Redis, ns: str, case: int
) -> None:
    cache = make_async_cache()
    hostile_tag_keys(raw, ns)[case]()
    assert await cache.get_or_set("k", lambda: "v1", tags=("t",)) == "v1"
    await cache.invalidate_tags("t")
    assert await cache.get("k", default="miss") == "miss"
    assert await cache.get_or_set("k", lambda: "v2", tags=("t",)) == "v2"


def hostile_leases(raw: redis.Redis, ns: str) -> list[Callable[[], Any]]:
    key = lease_key(ns, "k")
    return [
        lambda: raw.set(key, b"forever"),  # no expiry: no hotpath lease is without one
        lambda: raw.set(key, b"a year", px=365 * 86400 * 1000),  # longer than any lease
        lambda: raw.rpush(key, b"x"),  # another type
    ]


@pytest.mark.parametrize("case", range(3))
def test_a_hostile_lease_blocks_nobody(
    make_cache: MakeCache, raw: redis.Redis, ns: str, case: int
) -> None:
    cache = make_cache(tier={"lease_ttl": 5}, wait_timeout=10)
    hostile_leases(raw, ns)[case]()
    assert cache.get_or_set("k", lambda: "loaded") == "loaded"
    stats = cache.stats()
    # Taken over at once: no wait for it, and the value was stored (not a load without storing).
    assert (stats.lease_waits, stats.wait_timeouts, stats.loads) == (0, 0, 1)
    assert make_cache().get("k") == "loaded"


@pytest.mark.parametrize("case", range(3))
async def test_async_a_hostile_lease_blocks_nobody(
    make_async_cache: MakeAsyncCache, raw: redis.Redis, ns: str, case: int
) -> None:
    cache = make_async_cache(tier={"lease_ttl": 5}, wait_timeout=10)
    hostile_leases(raw, ns)[case]()
    assert await cache.get_or_set("k", lambda: "loaded") == "loaded"
    stats = cache.stats()
    assert (stats.lease_waits, stats.wait_timeouts, stats.loads) == (0, 0, 1)


HOSTILE_MESSAGES = [
    b"\xff\xfe\xfd",
    b"",
    b"no separators",
    b"a\x1fb",
    b"origin\x1fx\x1fk\x1fv",  # an unknown kind
    b"origin\x1fk\x1fk\x1fv\x1fextra",
]
# Well-formed but not hotpath's: applied harmlessly (an extra invalidation, a tag forgotten).
ODD_MESSAGES = [b"origin\x1ft\x1ft\x1fnot a version", b"origin\x1fk\x1fk\x1f"]


def test_hostile_messages_leave_the_channel_up_and_are_counted(
    make_cache: MakeCache, raw: redis.Redis, ns: str
) -> None:
    cache = make_cache()
    cache.set("k", "v", tags=("t",))
    wait_until(lambda: cache.stats().invalidations_received == 1)  # the set's own message
    assert cache.get("k") == "v"
    for message in HOSTILE_MESSAGES + ODD_MESSAGES:
        raw.publish(channel_name(ns), message)
    wait_until(
        lambda: (
            cache.stats().invalidations_received == 1 + len(ODD_MESSAGES)
            and cache.stats().decode_errors == len(HOSTILE_MESSAGES)
        )
    )
    stats = cache.stats()
    assert (stats.channel_connected, stats.channel_drops) == (True, 0)
    assert cache.get("k") == "v"  # from Redis again: the odd messages dropped the L1 copy
    cache.invalidate_tags("t")
    assert cache.get("k", default="miss") == "miss"


async def test_async_hostile_messages(
    make_async_cache: MakeAsyncCache, raw: redis.Redis, ns: str
) -> None:
    cache = make_async_cache()
    await cache.set("k", "v")
    for message in HOSTILE_MESSAGES:
        raw.publish(channel_name(ns), message)

    async def counted() -> bool:
        return cache.stats().decode_errors == len(HOSTILE_MESSAGES)

    await await_until(counted)
    assert cache.stats().channel_drops == 0
    assert await cache.get("k") == "v"
