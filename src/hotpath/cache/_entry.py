"""What a cached entry is: its value, soft and hard expiry, measured load time and the tag
versions it was stored under; how it is packed for Redis; when it is fresh, stale or due for
an early (XFetch) refresh; and how keys and tags become safe Redis names.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from ._errors import CacheKeyError, SerializationError, ValueTooLargeError
from ._serialize import Serializer

# version, serializer ident, soft expiry, hard expiry (unix seconds), load seconds, tags length
_HEADER = struct.Struct("<BBddfI")
_FORMAT = 1
_MAX_PLAIN_KEY = 200
# Hashed names start with this; a user key or tag that does too is hashed as well, so no
# plain name can ever equal a hashed one (get("h:<digest>") cannot read another key's entry).
_HASHED = "h:"
_MAX_VERSION_DIGITS = 18  # tag versions are microseconds since 1970: 16 digits until 2286
_UNSAFE = re.compile(r"[\s{}\x00-\x1f\x7f]")

TagVersions = dict[str, str]


@dataclass(slots=True)
class Entry:
    """A value with its timing and the tag versions it is valid under."""

    value: Any
    soft_expiry: float
    hard_expiry: float
    load_seconds: float
    tags: TagVersions
    size: int = 0  # bytes as stored in Redis (set when packed or unpacked): L1's byte bound

    def is_fresh(self, now: float, beta: float) -> bool:
        """Before the soft expiry and not picked for an XFetch early refresh.

        XFetch (Vattani et al.): refresh early when ``now - delta * beta * ln(rand) >= expiry``;
        the chance rises as expiry nears and with the load time ``delta``. When ``-ln(rand)``
        would have to exceed 12 (probability 6e-6) the draw is skipped: most hits pay nothing.
        """
        if now >= self.soft_expiry:
            return False
        margin = self.load_seconds * beta
        if margin <= 0.0 or now + margin * 12.0 < self.soft_expiry:
            return True
        return now - margin * math.log(random.random() or 1e-300) < self.soft_expiry

    def is_servable(self, now: float) -> bool:
        return now < self.hard_expiry


def pack(entry: Entry, serializer: Serializer, max_bytes: int, key: str) -> bytes:
    payload = serializer.dumps(entry.value)
    tags = orjson.dumps(entry.tags) if entry.tags else b""
    size = len(payload) + len(tags) + _HEADER.size
    if size > max_bytes:
        raise ValueTooLargeError(
            f"value for key {key!r} is {size:,} bytes serialized, over max_value_bytes="
            f"{max_bytes:,}; cache a smaller projection of it or raise max_value_bytes"
        )
    header = _HEADER.pack(
        _FORMAT,
        serializer.ident,
        entry.soft_expiry,
        entry.hard_expiry,
        entry.load_seconds,
        len(tags),
    )
    return header + tags + payload


def unpack(data: bytes, serializer: Serializer) -> Entry:
    """The entry in ``data``; :class:`SerializationError` if it is not one this cache wrote."""
    if len(data) < _HEADER.size:
        raise SerializationError("stored entry is truncated")
    version, ident, soft, hard, seconds, tag_length = _HEADER.unpack_from(data)
    if version != _FORMAT or ident != serializer.ident:
        raise SerializationError(
            f"stored entry was written with format {version} / serializer {ident}, this cache "
            f"reads format {_FORMAT} / {serializer.name} ({serializer.ident}); give caches "
            "with different serializers different namespaces"
        )
    if not (math.isfinite(soft) and math.isfinite(hard) and math.isfinite(seconds)):
        raise SerializationError("stored entry has non-finite expiries or load time")
    start = _HEADER.size
    tags = orjson.loads(data[start : start + tag_length]) if tag_length else {}
    if type(tags) is not dict or any(type(v) is not str for v in tags.values()):
        raise SerializationError("stored entry's tag versions are not a map of strings")
    value = serializer.loads(data[start + tag_length :])
    return Entry(value, soft, hard, seconds, tags, len(data))


def version_order(version: str) -> int | None:
    """Where a tag version stands in its tag's order (``""``: never invalidated), or None if
    it is not a version hotpath writes. Versions only grow (see ``BUMP_TAG``)."""
    if not version:
        return 0
    if len(version) > _MAX_VERSION_DIGITS or not version.isascii() or not version.isdigit():
        return None
    return int(version)


def expiries(now: float, ttl: float, stale_ttl: float, jitter: float) -> tuple[float, float]:
    """Soft and hard expiry for a value stored now (jitter spreads expiries of a batch)."""
    if jitter:
        ttl *= 1.0 + random.uniform(-jitter, jitter)
    soft = now + ttl
    return soft, soft + stale_ttl


def safe_name(text: str, what: str) -> str:
    """``text`` as it appears in Redis names: hashed when long, holding unsafe characters
    (whitespace, control characters, and braces, which would change the Cluster hash slot) or
    starting like a hashed name."""
    if not isinstance(text, str):
        raise CacheKeyError(f"cache {what}s must be str, got {type(text).__name__}: {text!r}")
    if not text:
        raise CacheKeyError(f"empty cache {what}; pass a non-empty string")
    if len(text) > _MAX_PLAIN_KEY or _UNSAFE.search(text) or text.startswith(_HASHED):
        digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        return f"{_HASHED}{digest}"
    return text


def check_namespace(namespace: str) -> str:
    if not namespace or _UNSAFE.search(namespace) or ":" in namespace or len(namespace) > 64:
        raise CacheKeyError(
            f"namespace {namespace!r} must be 1-64 characters without ':', braces, whitespace "
            "or control characters, e.g. namespace='shop'"
        )
    return namespace
