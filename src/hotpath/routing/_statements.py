"""Which statements must run on the primary: writes, locking reads (row locks and advisory
locks), SELECTs with a data-modifying CTE, DDL, and unknown text."""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any

from sqlalchemy import TextClause
from sqlalchemy.sql import visitors
from sqlalchemy.sql.selectable import CTE

_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*\n?|/\*.*?\*/|\()*", re.S)
_LOCKING = re.compile(r"\bfor\s+(?:update|share|no\s+key\s+update|key\s+share)\b", re.I)
_MODIFYING = re.compile(r"\b(?:insert|update|delete|merge)\b", re.I)
_SELECT_INTO = re.compile(r"\binto\b", re.I)
_ANALYZE = re.compile(r"\banaly[sz]e\b", re.I)
# Hot standby grants advisory locks, each server its own: a lock meant to exclude other
# writers must be taken on the primary.
_ADVISORY = re.compile(r"\bpg_(?:try_)?advisory_", re.I)
_READ_VERBS = {"select", "with", "show", "values", "table", "explain"}
# SELECT shapes (SQLAlchemy cache keys) already judged for data-modifying CTEs.
_MAX_SHAPES = 2048
_SHAPES: dict[Any, bool] = {}
_SHAPES_LOCK = threading.Lock()


def is_write(statement: Any) -> bool:
    """True when ``statement`` (a SQLAlchemy executable or SQL text) must go to the primary.

    Unknown kinds count as writes: sending a read to the primary costs a little load, sending
    a write to a replica fails.
    """
    if statement is None:
        return True
    if isinstance(statement, str):
        return text_is_write(statement)
    if isinstance(statement, TextClause):
        return text_is_write(statement.text)
    element = getattr(statement, "element", None)
    if isinstance(element, TextClause):  # text(...).columns(...): whatever the text says
        return text_is_write(element.text)
    if getattr(statement, "is_dml", False):
        return True
    if getattr(statement, "is_select", False):
        # SQLAlchemy keeps with_for_update() here (the documented routing recipes read it too).
        if getattr(statement, "_for_update_arg", None) is not None:
            return True
        if any(
            _ADVISORY.match(getattr(column, "name", "") or "")
            for column in getattr(statement, "_raw_columns", ())
        ):
            return True
        return _modifies_in_cte(statement)
    return True


def _modifies_in_cte(statement: Any) -> bool:
    """Does a SELECT carry a data-modifying CTE (``WITH x AS (INSERT ... RETURNING ...)``),
    anywhere in it (PostgreSQL runs it, wherever it is referenced from)?

    Judged once per statement shape: by SQLAlchemy's cache key, which its statement cache
    computes for the execution anyway (memoized on the statement, so not computed twice).
    """
    generate = getattr(statement, "_generate_cache_key", None)
    cache_key = generate() if callable(generate) else None
    if cache_key is None:  # a statement SQLAlchemy cannot cache either: walk it each time
        return _has_modifying_cte(statement)
    shape = cache_key.key
    known = _SHAPES.get(shape)
    if known is None:
        known = _has_modifying_cte(statement)
        with _SHAPES_LOCK:
            if len(_SHAPES) >= _MAX_SHAPES:
                del _SHAPES[next(iter(_SHAPES))]  # the oldest
            _SHAPES[shape] = known
    return known


def _has_modifying_cte(statement: Any) -> bool:
    for element in visitors.iterate(statement):
        if not isinstance(element, CTE):
            continue
        inner = element.element
        if getattr(inner, "is_dml", False):
            return True
        body = getattr(inner, "element", inner)  # text(...).columns(...).cte(): its text
        if isinstance(body, TextClause) and text_is_write(body.text):
            return True
    return False


@lru_cache(maxsize=2048)
def text_is_write(sql: str) -> bool:
    """Classify raw SQL by its leading verb; SELECT ... FOR UPDATE/SHARE and INTO are writes."""
    body = _LEADING_NOISE.sub("", sql, count=1)
    verb = body.split(None, 1)[0].lower() if body.strip() else ""
    if verb not in _READ_VERBS:
        return True
    if _LOCKING.search(body) or _ADVISORY.search(body):
        return True
    if verb == "select":
        return bool(_SELECT_INTO.search(body))
    if verb == "with":
        return bool(_MODIFYING.search(body))
    if verb == "explain":  # EXPLAIN ANALYZE runs the statement: keep it off replicas
        return bool(_ANALYZE.search(body))
    return False
