"""Columns of a plan's filter/condition expression, parsed with PostgreSQL's own parser."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import orjson
from pglast import parser


@lru_cache(maxsize=4096)
def condition_columns(expression: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(equality columns, other columns) referenced by a plan condition like ``(a = 1)``.

    Equality columns come first in a suggested index (they narrow best); columns in ranges,
    LIKE or function calls follow. Unparseable expressions give no columns.
    """
    try:
        tree = orjson.loads(parser.parse_sql_json(f"SELECT 1 WHERE {expression}"))
    except Exception:  # pglast raises its own ParseError; anything else is equally "unknown"
        return (), ()
    equality: list[str] = []
    other: list[str] = []
    for node in _walk(tree):
        expr = node.get("A_Expr")
        if expr and _operator(expr) == "=":
            for side in ("lexpr", "rexpr"):
                equality.extend(c for c in _columns_in(expr.get(side)) if c not in equality)
    for column in _columns_in(tree):
        if column not in equality and column not in other:
            other.append(column)
    return tuple(equality), tuple(other)


def _operator(expr: dict[str, Any]) -> str | None:
    names = expr.get("name") or []
    if expr.get("kind", "AEXPR_OP") != "AEXPR_OP" or len(names) != 1:
        return None
    return str(names[0].get("String", {}).get("sval"))


def _columns_in(tree: Any) -> Iterator[str]:
    for node in _walk(tree):
        ref = node.get("ColumnRef")
        if ref:
            fields = [f["String"]["sval"] for f in ref.get("fields", []) if "String" in f]
            if fields:
                yield fields[-1]  # "o.user_id" -> user_id: the plan node names the table


def _walk(tree: Any) -> Iterator[dict[str, Any]]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
