"""COPY-based bulk writes: ``copy_rows`` and ``upsert_rows``, sync (psycopg 3) and async
(asyncpg), streaming from any iterable.

Rows go to PostgreSQL with ``COPY ... FROM STDIN`` on the caller's own connection and
transaction; COPY is all-or-nothing, so a bad row leaves nothing written. Its error names the
row (0-based index in the iterable) and the column, never the value.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from .._errors import HotpathError

_CONTEXT = re.compile(r"line (\d+)(?:, column (\w+))?")


class BulkError(HotpathError):
    """A bulk write failed; nothing of it was written."""


class BulkRowError(BulkError):
    """One row was refused: ``index`` (0-based in the input) and ``column`` say which."""

    def __init__(self, table: str, index: int, column: str | None, reason: str) -> None:
        self.index, self.column = index, column
        where = f"row {index}" + (f", column {column!r}" if column else "")
        super().__init__(f"{table}: {where} was refused ({reason}); nothing was written")


def _target(table_or_model: Any) -> Table:
    table = getattr(table_or_model, "__table__", table_or_model)
    if not isinstance(table, Table):
        raise BulkError(f"{table_or_model!r} is not a Table or a mapped class")
    return table


def _columns(table: Table, columns: Sequence[str] | None) -> list[str]:
    names = list(columns) if columns else [c.name for c in table.columns]
    unknown = [n for n in names if n not in table.columns]
    if unknown:
        raise BulkError(f"{table.name} has no column {', '.join(unknown)}")
    return names


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def _qualified(table: Table) -> str:
    return f'"{table.schema}"."{table.name}"' if table.schema else f'"{table.name}"'


def _column_oids(cursor: Any, table: Table, names: Sequence[str]) -> list[int]:
    """The server's type of each column, so COPY dumps values as those types (JSON, arrays)."""
    found = dict(
        cursor.execute(
            "SELECT attname, atttypid::int FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            [_qualified(table)],
        ).fetchall()
    )
    return [found[name] for name in names]


def _row_error(
    table: Table, exc: Exception, counted: int, column: str | None = None
) -> BulkRowError:
    """Map a COPY failure to the input row: the server's context ('line N, column C') for
    rows it refused, else the row being written when the client could not encode it."""
    diag = getattr(exc, "diag", None)
    match = _CONTEXT.search(getattr(diag, "context", None) or "")
    primary = getattr(diag, "message_primary", None)
    if match:
        named = match.group(2) or getattr(diag, "column_name", None)
        return BulkRowError(table.name, int(match.group(1)) - 1, named, primary or "")
    return BulkRowError(table.name, counted, column, primary or type(exc).__name__)


def _unencodable_column(
    raw: Any, row: Sequence[Any], names: Sequence[str], oids: Sequence[int]
) -> str | None:
    """The first column whose value the client cannot encode as the column's type."""
    from psycopg import pq  # noqa: PLC0415

    for name, value, oid in zip(names, row, oids, strict=False):
        if value is None:
            continue
        try:
            dumper = raw.adapters.get_dumper_by_oid(oid, pq.Format.TEXT)
            dumper(type(value), raw).dump(value)
        except Exception:
            return name
    return None


def _write_all(copy: Any, rows: Iterable[Sequence[Any]], on_error: Any) -> int:
    count = 0
    for row in rows:
        try:
            copy.write_row(row)
        except Exception as exc:
            raise on_error(exc, count, row) from None
        count += 1
    return count


def _psycopg_connection(conn_or_session: Any) -> Any:
    connection = (
        conn_or_session.connection() if isinstance(conn_or_session, Session) else (conn_or_session)
    )
    raw = connection.connection.driver_connection
    if not hasattr(raw, "cursor") or not hasattr(raw, "pgconn"):
        raise BulkError("copy_rows needs a psycopg 3 connection (postgresql+psycopg://)")
    return raw


def copy_rows(
    conn_or_session: Any,
    table_or_model: Any,
    rows: Iterable[Sequence[Any]],
    columns: Sequence[str] | None = None,
) -> int:
    """COPY ``rows`` (tuples in ``columns`` order) into the table; returns the row count.

    Runs in the caller's transaction (commit it yourself). Streams: ``rows`` may be a
    generator of any length.
    """
    table = _target(table_or_model)
    names = _columns(table, columns)
    raw = _psycopg_connection(conn_or_session)
    sql = f"COPY {_qualified(table)} ({_quoted(names)}) FROM STDIN"
    count = 0
    with raw.cursor() as cursor:
        oids = _column_oids(cursor, table, names)

        def refused(exc: Exception, index: int, row: Sequence[Any]) -> BulkRowError:
            return _row_error(table, exc, index, _unencodable_column(raw, row, names, oids))

        try:
            with cursor.copy(sql) as copy:
                copy.set_types(oids)
                count = _write_all(copy, rows, refused)
        except BulkError:
            raise
        except Exception as exc:  # refused by the server when the COPY ended
            raise _row_error(table, exc, count) from None
    return count


def upsert_rows(
    conn_or_session: Any,
    table_or_model: Any,
    rows: Iterable[Sequence[Any]],
    key_columns: Sequence[str],
    columns: Sequence[str] | None = None,
    update_columns: Sequence[str] | None = None,
) -> int:
    """Insert ``rows``, updating existing ones on ``key_columns`` conflicts: COPY into a
    temporary table, then one ``INSERT ... ON CONFLICT DO UPDATE``. Returns rows upserted."""
    table = _target(table_or_model)
    names = _columns(table, columns)
    updates = (
        list(update_columns)
        if update_columns is not None
        else [n for n in names if n not in key_columns]
    )
    raw = _psycopg_connection(conn_or_session)
    stage = f"hotpath_stage_{secrets.token_hex(4)}"
    quoted = _quoted(names)
    with raw.cursor() as cursor:
        oids = _column_oids(cursor, table, names)
        cursor.execute(
            f'CREATE TEMP TABLE "{stage}" (LIKE {_qualified(table)} INCLUDING DEFAULTS) '
            "ON COMMIT DROP"
        )
        count = 0

        def refused(exc: Exception, index: int, row: Sequence[Any]) -> BulkRowError:
            return _row_error(table, exc, index, _unencodable_column(raw, row, names, oids))

        try:
            with cursor.copy(f'COPY "{stage}" ({quoted}) FROM STDIN') as copy:
                copy.set_types(oids)
                count = _write_all(copy, rows, refused)
        except BulkError:
            raise
        except Exception as exc:
            raise _row_error(table, exc, count) from None
        action = (
            "DO UPDATE SET " + ", ".join(f'"{n}" = EXCLUDED."{n}"' for n in updates)
            if updates
            else "DO NOTHING"
        )
        keys = ", ".join(f'"{k}"' for k in key_columns)
        cursor.execute(
            f'INSERT INTO {_qualified(table)} ({quoted}) SELECT {quoted} FROM "{stage}" '
            f"ON CONFLICT ({keys}) {action}"
        )
        upserted = cursor.rowcount
        cursor.execute(f'DROP TABLE "{stage}"')
    return int(upserted)


async def copy_rows_async(
    conn_or_session: AsyncConnection | AsyncSession,
    table_or_model: Any,
    rows: Iterable[Sequence[Any]] | AsyncIterable[Sequence[Any]],
    columns: Sequence[str] | None = None,
) -> int:
    """:func:`copy_rows` on an ``AsyncConnection``/``AsyncSession`` of asyncpg
    (``copy_records_to_table``, binary COPY)."""
    table = _target(table_or_model)
    names = _columns(table, columns)
    connection = (
        await conn_or_session.connection()
        if isinstance(conn_or_session, AsyncSession)
        else conn_or_session
    )
    raw = (await connection.get_raw_connection()).driver_connection
    if raw is None or not hasattr(raw, "copy_records_to_table"):
        raise BulkError("copy_rows_async needs an asyncpg connection (postgresql+asyncpg://)")
    # asyncpg's binary COPY takes JSON as text: encode JSON columns on the way
    json_at = [i for i, n in enumerate(names) if isinstance(table.columns[n].type, JSON)]
    records: Any = rows
    if json_at:
        records = (
            _json_encoded(rows, json_at)
            if isinstance(rows, Iterable)
            else _json_encoded_async(rows, json_at)
        )
    try:
        status = await raw.copy_records_to_table(
            table.name, records=records, columns=names, schema_name=table.schema
        )
    except Exception as exc:
        raise _row_error(table, exc, 0) from None
    return int(str(status).split()[-1])


def _encode(row: Sequence[Any], positions: list[int]) -> tuple[Any, ...]:
    values = list(row)
    for i in positions:
        if values[i] is not None:
            values[i] = orjson.dumps(values[i]).decode()
    return tuple(values)


def _json_encoded(rows: Iterable[Sequence[Any]], positions: list[int]) -> Iterator[tuple[Any, ...]]:
    return (_encode(row, positions) for row in rows)


async def _json_encoded_async(
    rows: AsyncIterable[Sequence[Any]], positions: list[int]
) -> AsyncIterator[tuple[Any, ...]]:
    async for row in rows:
        yield _encode(row, positions)
