"""``explain``: one statement's plan with graded flags, safely.

Plain ``EXPLAIN`` by default. ``analyze=True`` runs ``EXPLAIN (ANALYZE, BUFFERS)`` only for
a plain SELECT (no data-modifying CTE, no row locks), inside a read-only transaction that is
rolled back, under the session's statement timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..observe._fingerprint import shape_of
from ..plans import PlanFlag, analyze_plan, plan_relations
from ._errors import DoctorError
from ._session import Session


@dataclass
class Explained:
    sql: str
    plan: Any
    analyzed: bool
    flags: list[PlanFlag] = field(default_factory=list)
    table_rows: dict[str, float] = field(default_factory=dict)


def explain(
    url: str, sql: str, *, analyze: bool = False, statement_timeout_ms: int = 30_000
) -> Explained:
    """Plan ``sql`` on the database at ``url`` and flag what is slow."""
    statement = sql.strip().rstrip(";")
    if not statement:
        raise DoctorError('no SQL given: hotpath explain URL "SELECT ..."')
    if analyze and not shape_of(statement).is_plain_select:
        raise DoctorError(
            "--analyze runs the statement: it is allowed only for a plain SELECT "
            "(no INSERT/UPDATE/DELETE, data-modifying CTE or FOR UPDATE); drop --analyze"
        )
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    if not analyze and "$1" in statement:
        options = "GENERIC_PLAN, FORMAT JSON"
    with Session(url, statement_timeout_ms=statement_timeout_ms) as session:
        if "GENERIC_PLAN" in options and session.capabilities.server_version < 160000:
            raise DoctorError(
                "statements with $1 parameters need PostgreSQL >= 16 (EXPLAIN GENERIC_PLAN): "
                "put literal values in place of the parameters"
            )
        try:
            with session.rolled_back() as conn:
                row = conn.execute(f"EXPLAIN ({options}) {statement}").fetchone()
                assert row is not None
                plan = next(iter(row.values()))
                sizes = conn.execute(
                    "SELECT name, (SELECT reltuples FROM pg_class WHERE oid = to_regclass(name))"
                    " AS rows FROM unnest(%s::text[]) AS name",
                    (plan_relations(plan),),
                ).fetchall()
        except psycopg.errors.QueryCanceled:
            raise DoctorError(
                f"the statement ran past the {statement_timeout_ms} ms statement_timeout; "
                "drop --analyze for a plan without running it"
            ) from None
        except psycopg.Error as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DoctorError(f"EXPLAIN failed: {text}") from None
    table_rows = {
        str(s["name"]): float(s["rows"]) for s in sizes if s["rows"] is not None and s["rows"] >= 0
    }
    return Explained(statement, plan, analyze, analyze_plan(plan, table_rows), table_rows)
