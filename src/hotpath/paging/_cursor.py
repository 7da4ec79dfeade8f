"""Opaque, tamper-evident page cursors: the last row's key values, typed, signed with HMAC.

A cursor names the sort it belongs to, so a cursor from one ordering is refused by another.
The secret is ``HOTPATH_PAGING_SECRET`` (bytes of its UTF-8) if set, else random per process:
set it when several processes serve the same API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson

from .._errors import HotpathError

_PROCESS_SECRET = secrets.token_bytes(32)


class InvalidCursor(HotpathError, ValueError):
    """A cursor that was altered, belongs to another sort order, or was signed elsewhere."""


def _secret(explicit: bytes | None) -> bytes:
    if explicit is not None:
        return explicit
    configured = os.environ.get("HOTPATH_PAGING_SECRET")
    return configured.encode() if configured else _PROCESS_SECRET


def _tag(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, datetime):
        return ["dt", value.isoformat()]
    if isinstance(value, date):
        return ["d", value.isoformat()]
    if isinstance(value, Decimal):
        return ["dec", str(value)]
    if isinstance(value, uuid.UUID):
        return ["uuid", str(value)]
    if isinstance(value, float):
        return ["f", repr(value)]
    raise InvalidCursor(f"cannot page on a value of type {type(value).__name__}")


def _untag(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    kind, text = value
    decode: dict[str, Callable[[str], Any]] = {
        "dt": datetime.fromisoformat,
        "d": date.fromisoformat,
        "dec": Decimal,
        "uuid": uuid.UUID,
        "f": float,
    }
    if kind not in decode:
        raise InvalidCursor("the cursor holds a value of an unknown type")
    return decode[kind](text)


def encode_cursor(values: list[Any], sort_key: str, secret: bytes | None = None) -> str:
    payload = orjson.dumps({"s": sort_key, "v": [_tag(v) for v in values]})
    body = base64.urlsafe_b64encode(payload).rstrip(b"=")
    mac = hmac.new(_secret(secret), body, hashlib.sha256).digest()[:16]
    return (body + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


def decode_cursor(cursor: str, sort_key: str, secret: bytes | None = None) -> list[Any]:
    try:
        body, _, mac = cursor.encode().partition(b".")
        expected = hmac.new(_secret(secret), body, hashlib.sha256).digest()[:16]
        given = base64.urlsafe_b64decode(mac + b"=" * (-len(mac) % 4))
        if not hmac.compare_digest(expected, given):
            raise InvalidCursor("the cursor was altered or signed with another secret")
        data = orjson.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
    except InvalidCursor:
        raise
    except Exception as exc:
        raise InvalidCursor("not a cursor of this API") from exc
    if data.get("s") != sort_key:
        raise InvalidCursor("the cursor belongs to another sort order of this list")
    return [_untag(v) for v in data["v"]]
