"""Where ``hotpath advise`` gets its workload, and which part of it is advised on.

Sources (Dexter's): pg_stat_statements, sampled pg_stat_activity, PostgreSQL log files
(stderr/csvlog/jsonlog, :mod:`._logs`), a ``.sql`` file. Filters: ``min_calls`` and
``min_time_minutes`` (a statement's total time) drop light statements, each listed with why;
:class:`TableFilter` (``--include/--exclude``) limits the tables indexes are proposed on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pglast import parser

from ._context import _catalog_only
from ._errors import DoctorError
from ._session import Session
from ._workload import _HIDDEN, WorkloadQuery, from_file, from_statements, hidden_statements

STATEMENTS = "pg_stat_statements"
ACTIVITY = "pg_stat_activity"
_READS = re.compile(r"^\s*(with|select|update|delete)\b", re.IGNORECASE)


@dataclass(frozen=True)
class TableFilter:
    """Tables to propose indexes on: ``include`` (none: all) minus ``exclude``. A name is
    ``table`` or ``schema.table``, as the catalog spells it (unquoted)."""

    include: frozenset[str] = field(default_factory=frozenset)
    exclude: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(
        cls, include: Iterable[str] | str | None = None, exclude: Iterable[str] | str | None = None
    ) -> TableFilter:
        """From lists or comma-separated strings (``--include orders,public.users``)."""
        return cls(_names(include, "include"), _names(exclude, "exclude"))

    def admits(self, name: str, relname: str) -> bool:
        """Whether the table displayed as ``name`` (``orders``, ``sales.orders``) is wanted."""
        spelled = {name.replace('"', ""), relname, f"public.{relname}"}
        if self.include and not spelled & self.include:
            return False
        return not spelled & self.exclude


def _names(value: Iterable[str] | str | None, option: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in items]
    if any(not n for n in names):
        raise DoctorError(
            f"--{option} {','.join(names)!r}: give table names separated by commas, "
            "like orders,sales.customers"
        )
    return frozenset(names)


def filter_workload(
    workload: list[WorkloadQuery], *, min_calls: int = 0, min_time_minutes: float = 0.0
) -> tuple[list[WorkloadQuery], list[tuple[str, str]]]:
    """(kept, dropped with the reason): statements below ``min_calls`` calls or
    ``min_time_minutes`` of total time (Dexter's ``--min-calls``/``--min-time``)."""
    if min_calls < 0 or min_time_minutes < 0:
        raise DoctorError(
            f"--min-calls {min_calls} / --min-time {min_time_minutes}: give numbers >= 0"
        )
    kept, dropped = [], []
    for query in workload:
        minutes = None if query.weight is None else query.weight / 60_000
        if query.calls < min_calls:
            dropped.append((query.sql, f"{query.calls:,} calls < --min-calls {min_calls:,}"))
        elif min_time_minutes and minutes is None:
            dropped.append(
                (
                    query.sql,
                    f"no timing from {query.source}: --min-time {min_time_minutes} needs it",
                )
            )
        elif minutes is not None and minutes < min_time_minutes:
            dropped.append(
                (query.sql, f"{minutes:,.2f} min total < --min-time {min_time_minutes} min")
            )
        else:
            kept.append(query)
    return kept, dropped


def from_activity(
    session: Session, samples: int = 10, interval_s: float = 1.0
) -> list[WorkloadQuery]:
    """Statements running in this database, sampled ``samples`` times ``interval_s`` apart:
    how often a shape was seen running stands for its calls (no timing)."""
    if samples < 1 or interval_s < 0:
        raise DoctorError(f"samples={samples}, interval_s={interval_s}: give samples >= 1")
    seen: dict[str, tuple[str, int]] = {}
    hidden = 0
    for number in range(samples):
        if number:
            time.sleep(interval_s)  # spacing the samples is the point, not a synchronisation
        for row in session.rows(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'active' AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        ):
            sql = str(row["query"] or "").strip().rstrip(";").strip()
            if sql == _HIDDEN:
                hidden += 1
                continue
            if not advisable(sql):
                continue
            key = statement_shape(sql)
            first, count = seen.get(key, (sql, 0))
            seen[key] = (first, count + 1)
    if hidden and not seen:
        raise DoctorError(
            f"pg_stat_activity hid {hidden} other users' statements: "
            f"GRANT pg_read_all_stats TO {session.capabilities.user}; then rerun"
        )
    found = [WorkloadQuery(sql, count, None, ACTIVITY) for sql, count in seen.values()]
    found.sort(key=lambda q: -q.calls)
    return found


def load_workload(
    url: str,
    source: str | Path = STATEMENTS,
    *,
    samples: int = 10,
    interval_s: float = 1.0,
    statement_timeout_ms: int = 10_000,
) -> tuple[list[WorkloadQuery], list[str]]:
    """The workload of ``source`` (``pg_stat_statements``, ``pg_stat_activity``, a ``.sql``
    file, or a PostgreSQL log file: stderr ``.log``, ``.csv``, ``.json``) and notices about
    it (pg_stat_statements hiding other roles' statements: the grant that shows them)."""
    from ._logs import from_log_files  # noqa: PLC0415 - only log workloads need it

    if str(source) in (STATEMENTS, ACTIVITY):
        with Session(url, statement_timeout_ms=statement_timeout_ms) as session:
            if str(source) == STATEMENTS:
                hidden = hidden_statements(session)
                return from_statements(session), [hidden] if hidden else []
            return from_activity(session, samples, interval_s), []
    path = Path(source)
    if not path.is_file():
        raise DoctorError(
            f"--workload {source}: give pg_stat_statements, pg_stat_activity, a .sql file "
            "or a PostgreSQL log file (stderr, .csv, .json) that exists"
        )
    if path.suffix == ".sql":
        return from_file(path), []
    with Session(url, statement_timeout_ms=statement_timeout_ms) as session:
        database = session.capabilities.database
    return from_log_files([path], database=database), []


def advisable(sql: str) -> bool:
    """A statement an index can serve (SELECT, WITH, UPDATE, DELETE) that reads more than the
    catalogs: monitoring queries, doctor's and the advisor's own among them, are not."""
    return bool(_READS.match(sql)) and not _catalog_only(sql)


def statement_shape(sql: str) -> str:
    """Statements of one shape (other constants) share it: pglast's fingerprint."""
    try:
        return str(parser.fingerprint(sql))
    except Exception:  # truncated (track_activity_query_size) or not SQL: its own shape
        return sql
