"""Range partitions by time: create the missing current and future ones, detach old ones,
report rows stuck in the DEFAULT partition.

Safe to run from many processes at once: each run holds a transaction-level advisory lock
keyed on the table. Partitions are named ``<table>_p<YYYYMMDD>`` after the start of their
range. Only PostgreSQL's own catalog is read (``pg_partitioned_table``, ``pg_inherits``,
``pg_get_expr(relpartbound)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Literal

from sqlalchemy import Connection, Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from .._errors import HotpathError

Interval = Literal["day", "week", "month", "year"]
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


class PartitionError(HotpathError):
    """The table cannot be maintained as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class PartitionedTable:
    name: str
    column: str
    is_date: bool
    partitions: tuple[Partition, ...]
    default: str | None


def _utc(value: datetime | date) -> datetime:
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def period_start(moment: datetime, interval: Interval) -> datetime:
    moment = _utc(moment).astimezone(timezone.utc)
    day = datetime(moment.year, moment.month, moment.day, tzinfo=timezone.utc)
    if interval == "day":
        return day
    if interval == "week":
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
    if interval == "month":
        return day.replace(day=1)
    if interval == "year":
        return day.replace(month=1, day=1)
    raise PartitionError(f"interval={interval!r}: use day, week, month or year")


def next_start(start: datetime, interval: Interval) -> datetime:
    if interval == "day":
        return start + timedelta(days=1)
    if interval == "week":
        return start + timedelta(days=7)
    if interval == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start.replace(year=start.year + 1)


def inspect_table(conn: Connection, table: str) -> PartitionedTable:
    """What the catalog says about ``table``: its time key, partitions and default one."""
    found = conn.execute(text("SELECT to_regclass(:t)::oid"), {"t": table}).scalar()
    if found is None:
        raise PartitionError(f"table {table!r} does not exist (check the name and search_path)")
    row = conn.execute(
        text(
            "SELECT p.partstrat, p.partnatts, a.attname, format_type(a.atttypid, NULL)"
            " FROM pg_partitioned_table p"
            " JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]"
            " WHERE p.partrelid = :oid"
        ),
        {"oid": found},
    ).first()
    if row is None:
        raise PartitionError(
            f"{table} is not partitioned: create it with PARTITION BY RANGE (<time column>)"
        )
    strategy, keys, column, type_name = row
    if isinstance(strategy, bytes):  # asyncpg returns the one-byte "char" type as bytes
        strategy = strategy.decode()
    if strategy != "r" or keys != 1:
        raise PartitionError(f"{table} is not partitioned BY RANGE on one column")
    if type_name not in ("date", "timestamp with time zone", "timestamp without time zone"):
        raise PartitionError(f"{table} is partitioned on {column} ({type_name}), not on a time")
    partitions, default = [], None
    for name, bound in conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = :oid ORDER BY 1"
        ),
        {"oid": found},
    ):
        if bound == "DEFAULT":
            default = name
            continue
        match = _BOUND.search(bound or "")
        if match:
            partitions.append(
                Partition(
                    name,
                    _utc(datetime.fromisoformat(match.group(1))),
                    _utc(datetime.fromisoformat(match.group(2))),
                )
            )
    return PartitionedTable(table, column, type_name == "date", tuple(partitions), default)


def _lock(conn: Connection, table: str) -> None:
    conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"hotpath.partitions:{table}"}
    )


def _literal(moment: datetime, is_date: bool) -> str:
    return moment.date().isoformat() if is_date else moment.isoformat()


def _ensure(
    conn: Connection, table: str, interval: Interval, ahead: int, now: datetime | None
) -> list[str]:
    if ahead < 0:
        raise PartitionError(f"ahead={ahead!r}: give 0 or more periods")
    _lock(conn, table)  # one maintainer at a time; others then find the work done
    info = inspect_table(conn, table)
    start = period_start(now or datetime.now(timezone.utc), interval)
    created = []
    for _ in range(ahead + 1):
        end = next_start(start, interval)
        overlapping = [p for p in info.partitions if p.start < end and start < p.end]
        if not overlapping:
            name = f"{table}_p{start:%Y%m%d}"
            lower, upper = _literal(start, info.is_date), _literal(end, info.is_date)
            try:
                with conn.begin_nested():
                    conn.execute(
                        text(
                            f'CREATE TABLE "{name}" PARTITION OF "{table}"'
                            f" FOR VALUES FROM ('{lower}') TO ('{upper}')"
                        )
                    )
            except Exception as exc:
                reason = getattr(exc, "orig", exc)
                raise PartitionError(
                    f"cannot create {name} for [{lower}, {upper}): {reason}; if rows for that "
                    f"range sit in the default partition {info.default}, move them out first"
                ) from None
            created.append(name)
        start = end
    return created


def _detach(conn: Connection, table: str, older_than: datetime, drop: bool) -> list[str]:
    _lock(conn, table)
    info = inspect_table(conn, table)
    cutoff = _utc(older_than)
    gone = [p.name for p in info.partitions if p.end <= cutoff]
    for name in gone:
        conn.execute(text(f'ALTER TABLE "{table}" DETACH PARTITION "{name}"'))
        if drop:
            conn.execute(text(f'DROP TABLE "{name}"'))
    return gone


def _default_rows(conn: Connection, table: str) -> tuple[str | None, int]:
    info = inspect_table(conn, table)
    if info.default is None:
        return None, 0
    count = conn.execute(text(f'SELECT count(*) FROM "{info.default}"')).scalar_one()
    return info.default, int(count)


def ensure_partitions(
    engine: Engine,
    table: str,
    interval: Interval = "month",
    ahead: int = 3,
    *,
    now: datetime | None = None,
) -> list[str]:
    """Create the partitions for the current period and ``ahead`` more; returns new names.
    Idempotent, and safe to run from many processes at once."""
    with engine.begin() as conn:
        return _ensure(conn, table, interval, ahead, now)


def detach_older_than(
    engine: Engine, table: str, older_than: datetime | timedelta, *, drop: bool = False
) -> list[str]:
    """Detach (and with ``drop=True`` drop) partitions whose whole range ends before the
    cutoff (a time, or an age from now). Nothing is dropped unless asked."""
    cutoff = (
        (datetime.now(timezone.utc) - older_than)
        if isinstance(older_than, timedelta)
        else older_than
    )
    with engine.begin() as conn:
        return _detach(conn, table, cutoff, drop)


def default_partition_rows(engine: Engine, table: str) -> tuple[str | None, int]:
    """(name of the DEFAULT partition or None, rows in it): rows there escape pruning and
    block creating partitions for their range."""
    with engine.connect() as conn:
        return _default_rows(conn, table)


async def ensure_partitions_async(
    engine: AsyncEngine,
    table: str,
    interval: Interval = "month",
    ahead: int = 3,
    *,
    now: datetime | None = None,
) -> list[str]:
    async with engine.begin() as conn:
        return await conn.run_sync(_ensure, table, interval, ahead, now)


async def detach_older_than_async(
    engine: AsyncEngine, table: str, older_than: datetime | timedelta, *, drop: bool = False
) -> list[str]:
    cutoff = (
        (datetime.now(timezone.utc) - older_than)
        if isinstance(older_than, timedelta)
        else older_than
    )
    async with engine.begin() as conn:
        return await conn.run_sync(_detach, table, cutoff, drop)
