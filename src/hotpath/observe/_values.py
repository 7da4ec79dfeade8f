"""The values an operation sent and got back, as text, to tell dependent operations from
independent ones: B depends on A when B sent a value that A returned (and that was not
known before A: the request's own path, an earlier operation's parameters).

Only operations long enough to be worth running concurrently pay for this, and only the
first rows and bytes are read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import islice
from typing import Any

_MAX_ROWS = 10  # a value one query hands the next is in its first rows
_MAX_VALUES = 512
_MAX_BODY = 16_384
# identifiers, numbers, UUIDs, e-mails, slugs: what one call hands the next
_TOKEN = re.compile(rb"[A-Za-z0-9_\-.@:]{1,128}")
_TEXT_TOKEN = re.compile(r"[A-Za-z0-9_\-.@:]{1,128}")


def _scalar(value: Any, into: set[str]) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in list(value)[:_MAX_VALUES]:
            _scalar(item, into)
        return
    if isinstance(value, dict):
        for item in list(value.values())[:_MAX_VALUES]:
            _scalar(item, into)
        return
    if isinstance(value, (bytes, bytearray, memoryview)):
        return
    into.add(str(value))


def parameter_values(parameters: Any) -> frozenset[str]:
    """A statement's bound values (a dict, a sequence, or executemany's list of them)."""
    values: set[str] = set()
    if parameters:
        _scalar(parameters, values)
    return frozenset(values)


def _row_values(rows: list[Any]) -> frozenset[str]:
    values: set[str] = set()
    for row in rows:
        for value in row:
            _scalar(value, values)
    return frozenset(values)


def not_read(_: Any = None) -> None:
    """What an operation returned, when it was not read: not known."""


def no_values(_: Any = None) -> frozenset[str]:
    return frozenset()


def _given(values: frozenset[str] | None) -> frozenset[str] | None:
    return values


def result_values(cursor: Any) -> tuple[Callable[[Any], frozenset[str] | None], Any]:
    """What gives the values in the first rows of ``cursor``'s result (``None``: cannot be
    read), and its argument. The rows are taken now, their values read when first asked for.

    Taken without consuming the rows the application will fetch: SQLAlchemy's async adapters
    (asyncpg, psycopg async) buffer them in ``_rows``; a psycopg cursor exposes its result
    as ``pgresult`` (public), read now: the cursor's next statement replaces it. Checked on
    SQLAlchemy 2.0.30-2.1.9, psycopg 3.2-3.3.
    """
    rows = getattr(cursor, "_rows", None)
    if rows is not None:
        return _row_values, list(islice(rows, _MAX_ROWS))
    return _given, _pgresult_values(cursor)


def _pgresult_values(cursor: Any) -> frozenset[str] | None:
    values: set[str] = set()
    result = getattr(cursor, "pgresult", None)
    if result is None:
        inner = getattr(cursor, "_cursor", None)
        result = getattr(inner, "pgresult", None)
    if result is None:
        return None if getattr(cursor, "description", None) else frozenset()
    try:
        for row in range(min(result.ntuples, _MAX_ROWS)):
            for column in range(result.nfields):
                raw = result.get_value(row, column)
                if raw is not None:
                    values.add(bytes(raw).decode("utf-8", "replace"))
    except Exception:  # a result we cannot read is unknown, never an error
        return None
    return frozenset(values)


def text_values(text: str) -> frozenset[str]:
    """The tokens of a URL, a query string or a JSON request body."""
    return frozenset(_TEXT_TOKEN.findall(text[:_MAX_BODY]))


def body_values(body: bytes | None) -> frozenset[str] | None:
    """The tokens of a response body (``None`` when it was not read: a stream)."""
    if body is None:
        return None
    return frozenset(token.decode() for token in _TOKEN.findall(body[:_MAX_BODY]))
