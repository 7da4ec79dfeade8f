"""``keyset_page`` / ``iter_keyset`` and their async twins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from .._validate import check_number
from ._cursor import decode_cursor, encode_cursor
from ._keyset import (
    KeyColumn,
    PagingError,
    after_predicate,
    key_columns,
    ordered,
    row_values,
    sort_key,
)

_T = TypeVar("_T")


@dataclass
class Page(Generic[_T]):
    """One page and the cursor of the next (``None`` on the last page)."""

    items: list[_T]
    next_cursor: str | None = None
    keys: list[str] = field(default_factory=list)

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None


def _page_statement(
    stmt: Select[Any],
    order_by: Sequence[Any],
    after: str | None,
    limit: int,
    secret: bytes | None,
) -> tuple[Select[Any], list[KeyColumn], str]:
    check_number(PagingError, "limit", limit, integer=True, at_least=1, meaning="rows per page")
    keys = key_columns(order_by)
    sort = sort_key(keys)
    if after is not None:
        stmt = stmt.where(after_predicate(keys, decode_cursor(after, sort, secret)))
    return ordered(stmt, keys).limit(limit + 1), keys, sort


def _page(
    rows: list[Any], keys: list[KeyColumn], sort: str, limit: int, secret: bytes | None
) -> Page[Any]:
    items = rows[:limit]
    cursor = None
    if len(rows) > limit:
        cursor = encode_cursor(row_values(items[-1], keys), sort, secret)
    return Page(items, cursor, [k.name for k in keys])


def _rows(result: Any, stmt: Select[Any]) -> list[Any]:
    # one selected entity or column: the objects themselves; otherwise Row tuples
    return list(
        result.scalars().all()
        if len(stmt.selected_columns) == 1 or _single_entity(stmt)
        else result.all()
    )


def _single_entity(stmt: Select[Any]) -> bool:
    descriptions = stmt.column_descriptions
    return len(descriptions) == 1 and descriptions[0].get("entity") is not None


def keyset_page(
    session: Session,
    stmt: Select[Any],
    order_by: Sequence[Any],
    after: str | None = None,
    limit: int = 20,
    *,
    secret: bytes | None = None,
) -> Page[Any]:
    """The ``limit`` rows of ``stmt`` after the ``after`` cursor, in ``order_by`` order (which
    must end with a unique column, e.g. ``(Model.created_at.desc(), Model.id.desc())``)."""
    page_stmt, keys, sort = _page_statement(stmt, order_by, after, limit, secret)
    return _page(_rows(session.execute(page_stmt), page_stmt), keys, sort, limit, secret)


async def keyset_page_async(
    session: AsyncSession,
    stmt: Select[Any],
    order_by: Sequence[Any],
    after: str | None = None,
    limit: int = 20,
    *,
    secret: bytes | None = None,
) -> Page[Any]:
    """:func:`keyset_page` on an ``AsyncSession``."""
    page_stmt, keys, sort = _page_statement(stmt, order_by, after, limit, secret)
    rows = _rows(await session.execute(page_stmt), page_stmt)
    return _page(rows, keys, sort, limit, secret)


def iter_keyset(
    session: Session,
    stmt: Select[Any],
    key: Any,
    chunk_size: int = 1000,
) -> Iterator[list[Any]]:
    """Every row of ``stmt`` in chunks ordered by the unique ``key``, in constant memory:
    each chunk's objects leave the session before the next chunk is read."""
    after: str | None = None
    secret = b"iter_keyset"  # cursors never leave this loop
    while True:
        page = keyset_page(session, stmt, [key], after, chunk_size, secret=secret)
        if page.items:
            yield page.items
            _forget(session, page.items)
        if page.next_cursor is None:
            return
        after = page.next_cursor


async def iter_keyset_async(
    session: AsyncSession,
    stmt: Select[Any],
    key: Any,
    chunk_size: int = 1000,
) -> AsyncIterator[list[Any]]:
    """:func:`iter_keyset` on an ``AsyncSession``."""
    after: str | None = None
    secret = b"iter_keyset"
    while True:
        page = await keyset_page_async(session, stmt, [key], after, chunk_size, secret=secret)
        if page.items:
            yield page.items
            _forget(session.sync_session, page.items)
        if page.next_cursor is None:
            return
        after = page.next_cursor


def _forget(session: Session, items: list[Any]) -> None:
    for item in items:
        if item in session:
            session.expunge(item)
