"""The advisor's workload: pg_stat_statements, a SQL file, or a list of statements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pglast import parser

from ._errors import DoctorError
from ._session import Session
from ._sqlparse import plannable, tables_of

_HIDDEN = "<insufficient privilege>"  # a statement of another role, without pg_read_all_stats


@dataclass(frozen=True)
class WorkloadQuery:
    """One statement of the workload, with its weight when statistics give one."""

    sql: str  # as planned: pg_stat_statements' "interval $2" written "$2::interval"
    calls: int = 1
    mean_ms: float | None = None
    source: str = "given"

    @property
    def weight(self) -> float | None:
        """Time it costs the database (ms); None when only a planner cost can weigh it."""
        return None if self.mean_ms is None else self.calls * self.mean_ms


def from_statements(session: Session, limit: int = 100) -> list[WorkloadQuery]:
    """The database's heaviest statements from pg_stat_statements (catalog queries skipped)."""
    if "pg_stat_statements" not in session.capabilities.extensions:
        raise DoctorError(
            "pg_stat_statements is not installed in this database: add it to "
            "shared_preload_libraries and CREATE EXTENSION pg_stat_statements, or pass "
            "--workload FILE.sql"
        )
    total = "total_exec_time" if session.capabilities.server_version >= 130000 else "total_time"
    rows = session.rows(
        f"SELECT s.query, sum(s.calls)::bigint AS calls, sum(s.{total})::float8 AS total_ms"
        " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
        " WHERE d.datname = current_database() AND s.calls > 0"
        " AND s.query ~* '^\\s*(with|select|update|delete)\\M'"
        f" GROUP BY s.query ORDER BY 3 DESC LIMIT {int(limit) * 3}"
    )
    found = []
    for r in rows:
        names = tables_of(str(r["query"]))
        if not names or all(n.split(".")[-1].startswith("pg_") for n in names):
            continue  # monitoring and catalog queries (doctor's own among them)
        calls = int(r["calls"])
        found.append(
            WorkloadQuery(
                plannable(str(r["query"]).strip()),
                calls,
                float(r["total_ms"]) / calls,
                "pg_stat_statements",
            )
        )
    return found[:limit]


def hidden_statements(session: Session) -> str | None:
    """Why pg_stat_statements shows this role fewer statements than the database runs: the
    text of other roles' statements needs pg_read_all_stats. None when nothing is hidden."""
    caps = session.capabilities
    if caps.monitor or "pg_stat_statements" not in caps.extensions:
        return None
    row = session.row(
        "SELECT count(*) FILTER (WHERE s.query IS NULL OR s.query = %s) AS hidden,"
        " count(*) AS total FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
        " WHERE d.datname = current_database()",
        (_HIDDEN,),
    )
    hidden = int(row["hidden"])
    if hidden == 0 and int(row["total"]) > 0:
        return None
    seen = "" if hidden == 0 else f"{hidden:,} statements of other roles are hidden ({_HIDDEN}); "
    return (
        f"{seen}role {caps.user} lacks pg_read_all_stats, so pg_stat_statements shows it only "
        f"its own statements: GRANT pg_read_all_stats TO {caps.user}; (or pg_monitor)"
    )


def from_file(path: str | Path) -> list[WorkloadQuery]:
    """Statements of a ``.sql`` file (split by PostgreSQL's own scanner)."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise DoctorError(f"cannot read workload file {file}: {exc.strerror}") from None
    return from_list(_split(text), source=file.name)


def from_list(queries: list[str], source: str = "given") -> list[WorkloadQuery]:
    return [
        WorkloadQuery(plannable(q.strip().rstrip(";")), source=source) for q in queries if q.strip()
    ]


def _split(text: str) -> list[str]:
    """Statements of a file by PostgreSQL's scanner, not its parser: one statement with a
    syntax error is one statement (the advisor lists it as unanalysed), not a failed file."""
    try:
        return list(parser.split(text, with_parser=False))
    except Exception as exc:  # an unterminated quote or comment: the scanner cannot go on
        raise DoctorError(
            f"cannot split the SQL file into statements: {str(exc).splitlines()[0]} — "
            "close the quote or comment it names"
        ) from None
