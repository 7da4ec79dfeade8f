"""EXPLAIN for slow statement shapes, safely.

Plans are taken on a fresh connection of the engine that ran the statement, once per shape
and rate-limited. ``EXPLAIN ANALYZE`` runs only for plain SELECTs (no data-modifying CTE,
no row locks), inside a transaction that is always rolled back, under a statement timeout;
anything else gets a plain plan.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from ..plans import analyze_plan, plan_relations
from ._fingerprint import shape_of

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ._profiler import Profiler
    from ._scope import PendingExplain

logger = logging.getLogger("hotpath.observe")

_TABLE_ROWS = text(
    "SELECT name, (SELECT reltuples FROM pg_class WHERE oid = to_regclass(name))"
    " FROM unnest(CAST(:names AS text[])) AS name"
)


def _prefix(profiler: Profiler, statement: str) -> tuple[str, bool]:
    analyze = profiler.explain == "analyze" and shape_of(statement).is_plain_select
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    return f"EXPLAIN ({options}) ", analyze


def _store(profiler: Profiler, item: PendingExplain, plan: Any, sizes: Any, analyzed: bool) -> None:
    table_rows = {name: float(rows) for name, rows in sizes if rows is not None and rows >= 0}
    profiler.store_plan(item.fingerprint, plan, analyze_plan(plan, table_rows), analyzed)


def explain_sync(profiler: Profiler, items: list[PendingExplain]) -> None:
    for item in items:
        if not profiler.claim_explain(item.fingerprint):
            continue
        if item.engine.dialect.is_async:
            logger.info("hotpath: skipped EXPLAIN of a slow query: async engine in a sync scope")
            continue
        prefix, analyzed = _prefix(profiler, item.statement)
        try:
            with item.engine.connect() as conn:
                plan, sizes = _explain_on(conn, profiler, prefix, item)
        except Exception as exc:  # a plan is a bonus: never fail the user's work over it
            logger.warning("hotpath: EXPLAIN of a slow query failed: %s", exc)
            continue
        _store(profiler, item, plan, sizes, analyzed)


def _explain_on(conn: Connection, profiler: Profiler, prefix: str, item: PendingExplain) -> Any:
    transaction = conn.begin()
    try:
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(profiler.explain_timeout_ms)}")
        plan = conn.exec_driver_sql(prefix + item.statement, item.parameters).scalar_one()
        sizes = conn.execute(_TABLE_ROWS, {"names": plan_relations(plan)}).all()
    finally:
        transaction.rollback()  # EXPLAIN ANALYZE really ran the statement: undo it
    return plan, sizes


async def explain_async(profiler: Profiler, items: list[PendingExplain]) -> None:
    from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: PLC0415

    for item in items:
        if not item.engine.dialect.is_async:
            await asyncio.to_thread(explain_sync, profiler, [item])
            continue
        if not profiler.claim_explain(item.fingerprint):
            continue
        prefix, analyzed = _prefix(profiler, item.statement)
        try:
            async with AsyncEngine(item.engine).connect() as conn:
                plan, sizes = await _explain_on_async(conn, profiler, prefix, item)
        except Exception as exc:
            logger.warning("hotpath: EXPLAIN of a slow query failed: %s", exc)
            continue
        _store(profiler, item, plan, sizes, analyzed)


async def _explain_on_async(
    conn: AsyncConnection, profiler: Profiler, prefix: str, item: PendingExplain
) -> Any:
    transaction = await conn.begin()
    try:
        await conn.exec_driver_sql(
            f"SET LOCAL statement_timeout = {int(profiler.explain_timeout_ms)}"
        )
        result = await conn.exec_driver_sql(prefix + item.statement, item.parameters)
        plan = result.scalar_one()
        if isinstance(plan, str):  # asyncpg returns json as text
            import orjson  # noqa: PLC0415

            plan = orjson.loads(plan)
        sizes = (await conn.execute(_TABLE_ROWS, {"names": plan_relations(plan)})).all()
    finally:
        await transaction.rollback()
    return plan, sizes
