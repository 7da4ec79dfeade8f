"""``explain``: one statement's plan with graded flags, safely.

The text must be exactly one SELECT, INSERT, UPDATE, DELETE or MERGE statement (read by
PostgreSQL's own parser, pglast): anything else is refused before the server sees it, and the
extended query protocol makes the server refuse several statements too. Plain ``EXPLAIN`` by
default. ``analyze=True`` runs ``EXPLAIN (ANALYZE, BUFFERS)`` only when ``hotpath.plans``
allows it (the rules observe's automatic EXPLAIN ANALYZE follows): a plain SELECT (no
data-modifying CTE, no row lock, no INTO, no ``$n`` parameter) reaching no volatile function
on that server, in a transaction the server confirms is read-only. Otherwise the plan is a
plain EXPLAIN and :attr:`Explained.not_analyzed` says why. Everything runs in a READ ONLY
transaction that is rolled back, under ``SET LOCAL`` statement and lock timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..plans import (
    NotAnalyzed,
    PlanFlag,
    analyze_plan,
    analyze_refused_on_server,
    partitions_from_rows,
    partitions_sql,
    plan_relations,
    statement_safety,
    volatile_calls_sql,
)
from ._errors import DoctorError
from ._session import DEFAULT_LOCK_TIMEOUT_MS, EXPLAIN_STATEMENT_TIMEOUT_MS, Session

_VOLATILE_CALLS = volatile_calls_sql("pyformat")
_PARTITIONS = partitions_sql("pyformat")


@dataclass
class Explained:
    sql: str
    plan: Any
    analyzed: bool
    flags: list[PlanFlag] = field(default_factory=list)
    table_rows: dict[str, float] = field(default_factory=dict)
    # ANALYZE was asked for but not run, and why (the plan is then a plain EXPLAIN)
    not_analyzed: str | None = None


def explain(
    url: str,
    sql: str,
    *,
    analyze: bool = False,
    statement_timeout_ms: int = EXPLAIN_STATEMENT_TIMEOUT_MS,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
) -> Explained:
    """Plan ``sql`` on the database at ``url`` and flag what is slow."""
    if not isinstance(sql, str) or not sql.strip():
        raise DoctorError('no SQL given: hotpath explain URL "SELECT ..."')
    safety = statement_safety(sql)
    if safety.refusal is not None:
        raise DoctorError(f"cannot EXPLAIN this: {safety.refusal}")
    not_analyzed: str | None = None
    if analyze and safety.not_analyzed is not None:
        not_analyzed = safety.not_analyzed.value
    elif analyze and safety.parameters:
        not_analyzed = NotAnalyzed.PARAMETERS.value
    with Session(
        url, statement_timeout_ms=statement_timeout_ms, lock_timeout_ms=lock_timeout_ms
    ) as session:
        try:
            with session.rolled_back() as conn:
                if analyze and not_analyzed is None:
                    read_only = conn.execute("SHOW transaction_read_only").fetchone()
                    volatile = conn.execute(_VOLATILE_CALLS, safety.server_params()).fetchone()
                    not_analyzed = analyze_refused_on_server(
                        (read_only or {}).get("transaction_read_only"),
                        next(iter(volatile.values())) if volatile else None,
                    )
                analyzed = analyze and not_analyzed is None
                plan = session.plan(conn, safety, analyze=analyzed, verbose=True)
                sizes = conn.execute(
                    "SELECT name, (SELECT reltuples FROM pg_class WHERE oid = to_regclass(name))"
                    " AS rows FROM unnest(%s::text[]) AS name",
                    (plan_relations(plan),),
                ).fetchall()
                # which scanned relations are partitions: a scan of all of them is flagged
                partitions = partitions_from_rows(
                    conn.execute(_PARTITIONS, {"names": plan_relations(plan)}).fetchall()
                )
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
    return Explained(
        safety.statement,
        plan,
        analyzed,
        analyze_plan(plan, table_rows, partitions),
        table_rows,
        not_analyzed,
    )
