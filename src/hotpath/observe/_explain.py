"""EXPLAIN for slow statement shapes, safely.

Plans are taken on a fresh connection of the engine that ran the statement, once per shape
and rate-limited, inside a READ ONLY transaction that is always rolled back, under a
statement timeout. ``EXPLAIN ANALYZE`` (which runs the statement) is used only for a single
SELECT with no data-modifying CTE, no row lock and no INTO anywhere in it, whose functions are
none of them volatile on that server (``nextval``, ``pg_advisory_lock``, user functions that
write...), and only once the server says the transaction is read-only; anything else gets a
plain plan. Multi-statement text is never sent. Errors are logged without the statement's
parameter values unless ``capture_params`` is on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from ..plans import (
    analyze_plan,
    analyze_refused_on_server,
    partitions_from_rows,
    partitions_sql,
    plan_relations,
    volatile_calls_sql,
)
from ._fingerprint import shape_of

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ._plans import PlanStore
    from ._scope import PendingExplain
    from ._settings import ObserveSettings

logger = logging.getLogger("hotpath.observe")

_TABLE_ROWS = text(
    "SELECT name, (SELECT reltuples FROM pg_class WHERE oid = to_regclass(name))"
    " FROM unnest(CAST(:names AS text[])) AS name"
)
# which of the plan's relations are partitions (a scan of all of them is flagged)
_PARTITIONS = text(partitions_sql("named"))
# Any volatile function reachable (hotpath.plans, shared with doctor): the statement may change
# something (or take a session-level lock that survives the rollback), so it is not run for real.
_VOLATILE = text(volatile_calls_sql("named"))
# Forces a real transaction (an AUTOCOMMIT engine would otherwise have none to roll back),
# started READ ONLY: the server refuses writes, nextval() and row locks in it.
_READ_ONLY = {"isolation_level": "READ COMMITTED", "postgresql_readonly": True}


def _may_analyze(settings: ObserveSettings, item: PendingExplain) -> bool:
    shape = shape_of(item.statement)
    return settings.explain == "analyze" and shape.is_plain_select


def _prefix(analyze: bool) -> str:
    # VERBOSE: plan nodes name their schema (a suggested index on "Sales"."Orders" runs)
    return (
        "EXPLAIN (ANALYZE, BUFFERS, VERBOSE, FORMAT JSON) "
        if analyze
        else "EXPLAIN (VERBOSE, FORMAT JSON) "
    )


def _failed(settings: ObserveSettings, exc: Exception) -> None:
    """Log a failed EXPLAIN. SQLAlchemy's message ends with the parameters, and the server's
    may quote one (``invalid input syntax for type integer: "..."``): without
    ``capture_params`` only the error's class and SQLSTATE are logged."""
    if settings.capture_params:
        logger.warning("hotpath: EXPLAIN of a slow query failed: %s", exc)
        return
    original = getattr(exc, "orig", exc)
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    logger.warning(
        "hotpath: EXPLAIN of a slow query failed: %s%s (details hidden: capture_params=False)",
        type(original).__name__,
        f" (SQLSTATE {sqlstate})" if sqlstate else "",
    )


def _store(plans: PlanStore, item: PendingExplain, plan: Any, sizes: Any, analyzed: bool) -> None:
    sizes, partition_rows = sizes
    table_rows = {name: float(rows) for name, rows in sizes if rows is not None and rows >= 0}
    partitions = partitions_from_rows(partition_rows)
    plans.store(item.fingerprint, plan, analyze_plan(plan, table_rows, partitions), analyzed)


def explain_sync(settings: ObserveSettings, plans: PlanStore, items: list[PendingExplain]) -> None:
    for item in items:
        if not shape_of(item.statement).explainable:
            continue
        if item.engine.dialect.is_async:
            logger.info("hotpath: skipped EXPLAIN of a slow query: async engine in a sync scope")
            continue
        if not plans.claim(item.fingerprint):
            continue
        try:
            with item.engine.connect() as conn:
                conn.execution_options(**_READ_ONLY)
                plan, sizes, analyzed = _explain_on(conn, settings, item)
            _store(plans, item, plan, sizes, analyzed)
        except Exception as exc:  # a plan is a bonus: never fail the user's work over it
            _failed(settings, exc)


def _explain_on(conn: Connection, settings: ObserveSettings, item: PendingExplain) -> Any:
    transaction = conn.begin()
    try:
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(settings.explain_timeout_ms)}")
        analyze = _may_analyze(settings, item) and _safe_to_run(
            conn.exec_driver_sql("SHOW transaction_read_only").scalar_one(),
            conn.execute(_VOLATILE, _server_params(item)).scalar_one(),
        )
        plan = conn.exec_driver_sql(_prefix(analyze) + item.statement, item.parameters).scalar_one()
        relations = {"names": plan_relations(plan)}
        sizes = (
            conn.execute(_TABLE_ROWS, relations).all(),
            conn.execute(_PARTITIONS, relations).all(),
        )
    finally:
        transaction.rollback()  # EXPLAIN ANALYZE really ran the statement: undo it
    return plan, sizes, analyze


def _server_params(item: PendingExplain) -> dict[str, list[str]]:
    safety = shape_of(item.statement).safety
    return safety.server_params() if safety else {}


def _safe_to_run(read_only: object, volatile_functions: object) -> bool:
    return analyze_refused_on_server(read_only, volatile_functions) is None


async def explain_async(
    settings: ObserveSettings, plans: PlanStore, items: list[PendingExplain]
) -> None:
    from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: PLC0415

    for item in items:
        if not shape_of(item.statement).explainable:
            continue
        if not item.engine.dialect.is_async:
            await asyncio.to_thread(explain_sync, settings, plans, [item])
            continue
        if not plans.claim(item.fingerprint):
            continue
        try:
            async with AsyncEngine(item.engine).connect() as conn:
                await conn.execution_options(**_READ_ONLY)
                plan, sizes, analyzed = await _explain_on_async(conn, settings, item)
            _store(plans, item, plan, sizes, analyzed)
        except Exception as exc:
            _failed(settings, exc)


async def _explain_on_async(
    conn: AsyncConnection, settings: ObserveSettings, item: PendingExplain
) -> Any:
    transaction = await conn.begin()
    try:
        await conn.exec_driver_sql(
            f"SET LOCAL statement_timeout = {int(settings.explain_timeout_ms)}"
        )
        analyze = _may_analyze(settings, item) and _safe_to_run(
            (await conn.exec_driver_sql("SHOW transaction_read_only")).scalar_one(),
            (await conn.execute(_VOLATILE, _server_params(item))).scalar_one(),
        )
        result = await conn.exec_driver_sql(_prefix(analyze) + item.statement, item.parameters)
        plan = result.scalar_one()
        if isinstance(plan, str):  # asyncpg returns json as text
            import orjson  # noqa: PLC0415

            plan = orjson.loads(plan)
        relations = {"names": plan_relations(plan)}
        sizes = (
            (await conn.execute(_TABLE_ROWS, relations)).all(),
            (await conn.execute(_PARTITIONS, relations)).all(),
        )
    finally:
        await transaction.rollback()
    return plan, sizes, analyze
