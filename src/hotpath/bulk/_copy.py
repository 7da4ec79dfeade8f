"""COPY-based bulk writes: ``copy_rows`` and ``upsert_rows``, sync (psycopg 3) and async
(asyncpg), streaming from any iterable.

Rows go to PostgreSQL with ``COPY ... FROM STDIN`` on the caller's own connection and
transaction; COPY is all-or-nothing, so a bad row leaves nothing written. Its error names the
row (0-based index in the iterable) and the column or constraint, never the value. An error
raised by the caller's rows themselves (a failing generator) propagates as itself.
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
# The end of a server message that quotes the refused value ('invalid input syntax for type
# numeric: "abc"'); identifiers are quoted mid-message, a value only after the last colon.
_QUOTED_VALUE = re.compile(r':\s*".*"\s*$', re.DOTALL)
# The staging table's own column: the input row's 1-based position, given in COPY order.
_INPUT_ROW = "hotpath_input_row"


class BulkError(HotpathError):
    """A bulk write failed; nothing of it was written."""


class BulkRowError(BulkError):
    """One row was refused: ``index`` (0-based in the input), ``column`` and ``constraint``
    (when the server names them) say which; the message never holds the row's values."""

    def __init__(
        self,
        table: str,
        index: int,
        column: str | None,
        reason: str,
        constraint: str | None = None,
    ) -> None:
        self.index, self.column, self.constraint = index, column, constraint
        where = f"row {index}" + (f", column {column!r}" if column else "")
        if constraint:
            where += f", constraint {constraint!r}"
        super().__init__(f"{table}: {where} was refused ({reason}); nothing was written")


class _Counted:
    """The caller's rows as COPY takes them: how many were taken, the last one, and the
    error the rows themselves raised (a failing generator is the caller's error, not a
    refused row)."""

    def __init__(self, rows: Any) -> None:
        self._rows = rows
        self.taken = 0
        self.last: Sequence[Any] = ()
        self.raised: BaseException | None = None

    def _took(self, row: Sequence[Any]) -> Sequence[Any]:
        self.taken += 1
        self.last = row
        return row


class _CountedRows(_Counted):
    def __iter__(self) -> Iterator[Sequence[Any]]:
        rows = iter(self._rows)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except BaseException as exc:
                self.raised = exc
                raise
            yield self._took(row)


class _CountedAsyncRows(_Counted):
    """Only ``__aiter__``: asyncpg picks its async path for an AsyncIterable."""

    async def __aiter__(self) -> AsyncIterator[Sequence[Any]]:
        rows = aiter(self._rows)
        while True:
            try:
                row = await anext(rows)
            except StopAsyncIteration:
                return
            except BaseException as exc:
                self.raised = exc
                raise
            yield self._took(row)


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


def _server_fields(exc: BaseException) -> tuple[Any, str | None]:
    """Where the server's error fields are, and its primary message without the value.

    psycopg keeps them in ``exc.diag`` (``message_primary``); asyncpg on the exception
    itself (``message``); both name ``context``, ``column_name`` and ``constraint_name``.
    """
    diag = getattr(exc, "diag", None)
    if diag is not None:
        primary = diag.message_primary
    else:
        diag = exc if type(exc).__module__.startswith("asyncpg.") else None
        primary = getattr(diag, "message", None)
    if primary:
        primary = _QUOTED_VALUE.sub("", primary)
    return diag, primary


def _row_error(
    table: Table, exc: BaseException, index: int, column: str | None = None
) -> BulkRowError:
    """Map a COPY failure to the input row: the server's context ('line N, column C') for
    rows it refused, else ``index``, the row being written when the client could not
    encode it."""
    diag, primary = _server_fields(exc)
    match = _CONTEXT.search(getattr(diag, "context", None) or "")
    constraint = getattr(diag, "constraint_name", None)
    if match:
        named = match.group(2) or getattr(diag, "column_name", None)
        return BulkRowError(table.name, int(match.group(1)) - 1, named, primary or "", constraint)
    return BulkRowError(table.name, index, column, primary or type(exc).__name__, constraint)


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


def _write_all(copy: Any, rows: _CountedRows, on_error: Any) -> int:
    for row in rows:
        try:
            copy.write_row(row)
        except Exception as exc:
            # from None: the driver's message and its chain may quote the row's values
            raise on_error(exc, rows.taken - 1, row) from None
    return rows.taken


def _copy_in(
    cursor: Any,
    sql: str,
    oids: list[int],
    rows: Iterable[Sequence[Any]],
    table: Table,
    refused: Any,
) -> int:
    """Run one ``COPY ... FROM STDIN`` of ``rows``; a refused row raises BulkRowError, an
    error of the rows' own iterator propagates unchanged."""
    counted = _CountedRows(rows)
    try:
        with cursor.copy(sql) as copy:
            copy.set_types(oids)
            return _write_all(copy, counted, refused)
    except BulkError:
        raise
    except Exception as exc:
        if exc is counted.raised:
            raise  # the caller's generator failed: its own error, no row was refused
        raise _row_error(table, exc, counted.taken) from None  # refused when the COPY ended


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
    with raw.cursor() as cursor:
        oids = _column_oids(cursor, table, names)

        def refused(exc: Exception, index: int, row: Sequence[Any]) -> BulkRowError:
            return _row_error(table, exc, index, _unencodable_column(raw, row, names, oids))

        return _copy_in(cursor, sql, oids, rows, table, refused)


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
        # The target's CHECK constraints (NOT NULL always comes with LIKE), so a row they
        # refuse is refused by the COPY, which names its line; the input position of each
        # row, so a row refused by the INSERT below can be found too.
        cursor.execute(
            f'CREATE TEMP TABLE "{stage}" (LIKE {_qualified(table)} INCLUDING DEFAULTS '
            f'INCLUDING CONSTRAINTS, "{_INPUT_ROW}" bigint GENERATED ALWAYS AS IDENTITY) '
            "ON COMMIT DROP"
        )

        def refused(exc: Exception, index: int, row: Sequence[Any]) -> BulkRowError:
            return _row_error(table, exc, index, _unencodable_column(raw, row, names, oids))

        count = _copy_in(
            cursor, f'COPY "{stage}" ({quoted}) FROM STDIN', oids, rows, table, refused
        )
        action = (
            "DO UPDATE SET " + ", ".join(f'"{n}" = EXCLUDED."{n}"' for n in updates)
            if updates
            else "DO NOTHING"
        )
        keys = ", ".join(f'"{k}"' for k in key_columns)
        insert = (
            f'INSERT INTO {_qualified(table)} ({quoted}) SELECT {quoted} FROM "{stage}" '
            f'WHERE "{_INPUT_ROW}" <= %s ORDER BY "{_INPUT_ROW}" ON CONFLICT ({keys}) {action}'
        )
        upserted = _insert_staged(cursor, insert, count, table, key_columns)
        cursor.execute(f'DROP TABLE "{stage}"')
    return upserted


def _insert_staged(
    cursor: Any, insert: str, count: int, table: Table, key_columns: Sequence[str]
) -> int:
    """Run ``insert`` over the first ``count`` staged rows. If the target refuses it (a
    foreign key, a unique constraint other than the key, a key repeated in the input), find
    the first row whose prefix of the input is refused, probing with savepoints (log2(n)
    INSERTs, only on this error path): that row is the one the error names."""
    cursor.execute("SAVEPOINT hotpath_upsert")
    try:
        cursor.execute(insert, [count])
    except Exception as exc:
        cursor.execute("ROLLBACK TO SAVEPOINT hotpath_upsert")
        # The first refused prefix ends at a row in [low, high]; prefixes only grow their
        # refusals (a row refused stays refused with more rows before it).
        low, high, error = 0, count - 1, exc
        while low < high:
            middle = (low + high) // 2
            try:
                cursor.execute(insert, [middle + 1])
            except Exception as probe:
                high, error = middle, probe
            else:
                low = middle + 1
            cursor.execute("ROLLBACK TO SAVEPOINT hotpath_upsert")
        raise _insert_error(table, error, high, key_columns) from None
    upserted = int(cursor.rowcount)  # before the RELEASE resets it
    cursor.execute("RELEASE SAVEPOINT hotpath_upsert")
    return upserted


def _insert_error(
    table: Table, exc: BaseException, index: int, key_columns: Sequence[str]
) -> BulkRowError:
    if getattr(exc, "sqlstate", None) == "21000":  # cardinality_violation: a repeated key
        return BulkRowError(
            table.name,
            index,
            ", ".join(key_columns),
            "its key repeats an earlier row of the input",
        )
    return _row_error(table, exc, index, getattr(_server_fields(exc)[0], "column_name", None))


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
    counted: _Counted = (
        _CountedRows(records) if isinstance(records, Iterable) else _CountedAsyncRows(records)
    )
    # asyncpg encodes rows client-side without naming the column; finding it afterwards
    # needs the connection, which a failed COPY leaves aborted inside a transaction: a
    # savepoint keeps it usable (and the caller's transaction with it).
    savepoint = raw.is_in_transaction()
    if savepoint:
        await raw.execute("SAVEPOINT hotpath_copy")
    try:
        status = await raw.copy_records_to_table(
            table.name, records=counted, columns=names, schema_name=table.schema
        )
    except Exception as exc:
        if savepoint:
            await raw.execute("ROLLBACK TO SAVEPOINT hotpath_copy")
        if exc is counted.raised:
            raise  # the caller's rows failed: their own error, no row was refused
        column = None
        if _server_fields(exc)[0] is None:  # refused by asyncpg's encoder, not the server
            column = await _asyncpg_unencodable_column(raw, table, names, counted.last)
        raise _row_error(table, exc, counted.taken - 1, column) from None
    if savepoint:
        await raw.execute("RELEASE SAVEPOINT hotpath_copy")
    return int(str(status).split()[-1])


async def _asyncpg_unencodable_column(
    raw: Any, table: Table, names: Sequence[str], row: Sequence[Any]
) -> str | None:
    """The first column whose value asyncpg cannot encode as the column's type: each value
    bound to ``SELECT $1::<type>``, which asyncpg encodes with that type's codec."""
    types = dict(
        await raw.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
            _qualified(table),
        )
    )
    for name, value in zip(names, row, strict=False):
        if value is None:
            continue
        try:
            await raw.fetchval(f"SELECT $1::{types[name]}", value)
        except Exception:
            return name
    return None


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
