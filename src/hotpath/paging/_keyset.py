"""Keyset pagination: "the rows after this one" as a WHERE clause, so every page costs the
same (an index range scan) where OFFSET reads and throws away every earlier row.

The predicate follows PostgreSQL's default NULL order (NULLS LAST ascending, NULLS FIRST
descending). When every key column has the same direction and the cursor has no NULL, it is
a row comparison ``(a, b) < (:a, :b)``, which a composite index serves directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, false, or_, tuple_
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import ColumnElement, UnaryExpression

from .._errors import HotpathError


class PagingError(HotpathError, ValueError):
    """A keyset that cannot page (e.g. a NULLS FIRST/LAST override)."""


@dataclass(frozen=True)
class KeyColumn:
    column: ColumnElement[Any]
    descending: bool

    @property
    def name(self) -> str:
        return str(getattr(self.column, "key", None) or self.column)


def key_columns(order_by: Sequence[Any]) -> list[KeyColumn]:
    """(column, descending) for each ``order_by`` term: ``Model.col`` or ``Model.col.desc()``."""
    keys = []
    for term in order_by:
        if isinstance(term, UnaryExpression):
            if term.modifier is operators.desc_op:
                keys.append(KeyColumn(term.element, True))
                continue
            if term.modifier is operators.asc_op:
                keys.append(KeyColumn(term.element, False))
                continue
            raise PagingError(
                f"{term}: NULLS FIRST/LAST overrides are not supported for keyset paging; "
                "use the default NULL order or a NOT NULL column"
            )
        keys.append(KeyColumn(term, False))
    if not keys:
        raise PagingError("keyset paging needs order_by columns, ending with a unique one")
    return keys


def sort_key(keys: Sequence[KeyColumn]) -> str:
    return ",".join(f"{k.name}:{'d' if k.descending else 'a'}" for k in keys)


def after_predicate(keys: Sequence[KeyColumn], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the order of ``keys``."""
    if len(values) != len(keys):
        raise PagingError("the cursor does not match this sort order")
    same_direction = len({k.descending for k in keys}) == 1
    if same_direction and None not in values:
        columns = tuple_(*(k.column for k in keys))
        bound = tuple_(*values)
        if keys[0].descending:
            return columns < bound
        return columns > bound
    terms = []
    for i, key in enumerate(keys):
        ties = [_equal(k.column, v) for k, v in zip(keys[:i], values[:i], strict=True)]
        terms.append(and_(*ties, _after(key, values[i])))
    return or_(*terms)


def _equal(column: ColumnElement[Any], value: Any) -> ColumnElement[bool]:
    return column.is_(None) if value is None else column == value


def _after(key: KeyColumn, value: Any) -> ColumnElement[bool]:
    column = key.column
    if key.descending:  # DESC: NULLS FIRST, then larger to smaller
        return column.is_not(None) if value is None else column < value
    # ASC: smaller to larger, then NULLS LAST
    return false() if value is None else or_(column > value, column.is_(None))


def ordered(stmt: Select[Any], keys: Sequence[KeyColumn]) -> Select[Any]:
    return stmt.order_by(*(k.column.desc() if k.descending else k.column.asc() for k in keys))


def row_values(row: Any, keys: Sequence[KeyColumn]) -> list[Any]:
    """The key values of a result row: a mapped object or a ``Row``."""
    mapping = getattr(row, "_mapping", None)
    if mapping is not None:
        return [mapping[k.column] for k in keys]
    return [getattr(row, k.name) for k in keys]
