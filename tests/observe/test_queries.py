"""Duplicates, slow queries with plans, safe EXPLAIN ANALYZE, unbounded results, capture."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.orm import Session

from hotpath.observe import FindingKind, Profiler, Scope
from hotpath.observe._timeline import NO_DICT
from hotpath.testing import ModuleDatabase

from .models import User

BIG_ROWS = 120_000


@pytest.fixture(scope="module")
def big_table(engine: Engine) -> str:
    with engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE events (id bigint PRIMARY KEY, customer_id int NOT NULL, kind text)")
        )
        conn.execute(
            text(
                "INSERT INTO events SELECT g, g % 5000, 'k' || (g % 7) "
                f"FROM generate_series(1, {BIG_ROWS}) g"
            )
        )
        conn.execute(text("ANALYZE events"))
        conn.execute(text("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)"))
        conn.execute(text("INSERT INTO counters VALUES (1, 0)"))
    return "events"


@pytest.fixture
def profiler(engine: Engine) -> Iterator[Profiler]:
    profiler = Profiler(
        engine,
        slow_query_ms=1.0,
        explain="plan",
        max_rows=1000,
        modes=dict.fromkeys(("n_plus_one", "duplicate", "slow_query", "unbounded_result"), "log"),
    )  # type: ignore[arg-type]
    yield profiler
    profiler.uninstrument()


def kinds(scope_findings: list, kind: FindingKind) -> list:  # type: ignore[type-arg]
    return [f for f in scope_findings if f.kind is kind]


def test_duplicates_same_params_only(profiler: Profiler, engine: Engine) -> None:
    with profiler.scope("dups") as scope, Session(engine) as session:
        for _ in range(3):
            session.execute(select(User).where(User.name == "user1")).all()
        session.execute(select(User).where(User.name == "user2")).all()  # other params: fine
    [dup] = kinds(scope.findings, FindingKind.DUPLICATE)
    assert dup.count == 3
    assert dup.call_site is not None
    assert "users.name" in (dup.sql or "")


def test_duplicates_with_unhashable_params(profiler: Profiler, engine: Engine) -> None:
    # lists (arrays) and dicts (JSON) cannot be hashed as they are: still compared by value
    with profiler.scope("arrays") as scope, engine.connect() as conn:
        for ids in ([1, 2], [1, 2], [1, 2, 3]):
            conn.execute(text("SELECT cardinality(CAST(:ids AS int[]))"), {"ids": ids}).all()
    [dup] = kinds(scope.findings, FindingKind.DUPLICATE)
    assert dup.count == 2


def test_slow_seq_scan_is_flagged_with_table_column_and_index(
    profiler: Profiler, engine: Engine, big_table: str
) -> None:
    with profiler.scope("report") as scope, engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM events WHERE customer_id = :c"), {"c": 42}).all()
    [slow] = kinds(scope.findings, FindingKind.SLOW_QUERY)
    seq = [f for f in slow.plan_flags if f.kind == "seq_scan"]
    assert seq, slow.describe()
    assert seq[0].table == "events"
    assert seq[0].columns == ("customer_id",)
    assert slow.fix == "CREATE INDEX CONCURRENTLY ON events (customer_id);"
    # the plan asks for an index: it would save about all of the statement's time
    assert slow.details["missing_index"] is True
    assert slow.saving_ms == slow.details["total_ms"]
    scan_cost = slow.details["plan_cost"]  # the planner's estimate of its work
    plan = profiler.plan_for(slow.fingerprint or "")
    assert plan is not None
    assert plan[2] is False  # explain="plan": not executed
    # the healthy control: with the index the same query is not a seq scan any more
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX events_customer ON events (customer_id)"))
    try:
        fresh = Profiler(engine, slow_query_ms=0.001, explain="plan", modes={"slow_query": "log"})
        with fresh.scope("report") as scope, engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM events WHERE customer_id = :c"), {"c": 42})
        [slow] = kinds(scope.findings, FindingKind.SLOW_QUERY)
        assert [f for f in slow.plan_flags if f.kind == "seq_scan"] == []
        # no index to add: what a fix saves at least is the time over the threshold
        assert slow.details["missing_index"] is False
        assert slow.details["plan_cost"] < scan_cost / 10  # a lookup: a fraction of the work
        assert slow.saving_ms == pytest.approx(slow.details["total_ms"] - 0.001)
        fresh.uninstrument()
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX events_customer"))


def test_a_statement_is_one_fix_with_its_plan_though_early_runs_concluded_without_it(
    profiler: Profiler, engine: Engine, big_table: str
) -> None:
    def report(customer: int) -> Scope:  # one endpoint: the same line every time
        with profiler.scope("GET /report") as scope, engine.connect() as conn:
            conn.execute(
                text("SELECT count(*) FROM events WHERE customer_id = :c"), {"c": customer}
            )
        return scope

    plans = profiler._recorder.plans
    # the plans of this minute are all taken (other shapes, other requests): the first run
    # concludes without one
    plans._recent.extend([time.monotonic()] * profiler.settings.explain_per_minute)
    early = report(42)
    plans._recent.clear()  # a minute later: the next run takes the plan
    later = report(7)
    assert [f.details["missing_index"] for f in early.findings + later.findings] == [False, True]
    [fix] = [f for f in profiler.report().endpoint("GET /report").fixes if f.kind == "slow_query"]
    assert fix.scopes == 2  # one statement, one fix: the plan's evidence and its index
    assert fix.evidence["missing_index"] is True
    assert fix.change == "CREATE INDEX CONCURRENTLY ON events (customer_id);"


def test_a_loop_of_queries_whose_plan_asks_for_an_index_carries_that_evidence(
    profiler: Profiler, engine: Engine, big_table: str
) -> None:
    with profiler.scope("GET /customers") as scope, engine.connect() as conn:
        for customer in range(1, 7):  # one scan of the table per customer
            conn.execute(
                text("SELECT count(*) FROM events WHERE customer_id = :c"), {"c": customer}
            ).all()
    [loop] = kinds(scope.findings, FindingKind.N_PLUS_ONE)
    # its runs were slow (over 1 ms here): the shape was planned, a sequential scan
    assert loop.details["missing_index"] is True
    assert loop.details["index"] == "CREATE INDEX CONCURRENTLY ON events (customer_id);"
    assert any(flag.kind == "seq_scan" for flag in loop.plan_flags)  # the plan it read
    # an index makes every run a lookup; one query for the loop saves every run but one
    assert loop.details["total_ms"] > loop.saving_ms > 0


def test_explain_analyze_runs_selects_but_refuses_writes(engine: Engine, big_table: str) -> None:
    profiler = Profiler(
        engine,
        slow_query_ms=0.001,
        explain="analyze",
        modes={"slow_query": "log", "duplicate": "off"},
    )
    try:
        with profiler.scope("write") as scope, engine.begin() as conn:
            conn.execute(text("UPDATE counters SET n = n + 1 WHERE id = 1"))
            conn.execute(text("SELECT * FROM events WHERE kind = 'k3' LIMIT 10")).all()
        by_sql = {f.sql.split()[0]: f for f in kinds(scope.findings, FindingKind.SLOW_QUERY)}
        update_plan = profiler.plan_for(by_sql["UPDATE"].fingerprint or "")
        select_plan = profiler.plan_for(by_sql["SELECT"].fingerprint or "")
        assert update_plan is not None
        assert select_plan is not None
        assert update_plan[2] is False  # the UPDATE got a plain plan...
        assert select_plan[2] is True  # ...the SELECT was analyzed
        assert "Actual Rows" in select_plan[0][0]["Plan"]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT n FROM counters")).scalar_one() == 1  # ran once
            # the danger being avoided: EXPLAIN ANALYZE really executes a write
            conn.execute(text("EXPLAIN ANALYZE UPDATE counters SET n = n + 1 WHERE id = 1"))
            conn.commit()
            assert conn.execute(text("SELECT n FROM counters")).scalar_one() == 2
    finally:
        profiler.uninstrument()


def test_unbounded_result_without_limit(profiler: Profiler, engine: Engine, big_table: str) -> None:
    with profiler.scope("export") as scope, engine.connect() as conn:
        conn.execute(text("SELECT id FROM events WHERE id <= 5000")).all()
        conn.execute(text("SELECT id FROM events WHERE id <= 5000 LIMIT 2000")).all()
        conn.execute(text("SELECT id FROM events WHERE id <= 50")).all()
    [unbounded] = kinds(scope.findings, FindingKind.UNBOUNDED_RESULT)
    assert unbounded.details["rows"] == 5000
    assert "LIMIT" not in (unbounded.sql or "")


def test_params_redacted_unless_opted_in_and_server_recorded(
    engine: Engine, hotpath_db: ModuleDatabase
) -> None:
    replica = create_engine(hotpath_db.replica_urls[0])
    for capture, expected in ((False, "<redacted>"), (True, {"name_1": "secret-name"})):
        profiler = Profiler(engine, replica, capture_params=capture)
        try:
            with profiler.scope("params") as scope:
                for target in (engine, replica):
                    with Session(target) as session:
                        session.execute(select(User).where(User.name == "secret-name")).all()
            primary_q, replica_q = scope.queries
            assert primary_q.params == expected
            assert primary_q.server == f"{engine.url.host}:{engine.url.port}"
            assert replica_q.server == f"{replica.url.host}:{replica.url.port}"
            assert primary_q.server != replica_q.server
        finally:
            profiler.uninstrument()
    replica.dispose()


async def test_async_duplicates_slow_and_unbounded(
    engine: Engine, big_table: str, hotpath_db: ModuleDatabase
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    async_engine = create_async_engine(hotpath_db.async_url)
    profiler = Profiler(
        async_engine,
        slow_query_ms=1.0,
        explain="analyze",
        max_rows=1000,
        modes=dict.fromkeys(("duplicate", "slow_query", "unbounded_result"), "log"),
    )  # type: ignore[arg-type]
    try:
        async with profiler.scope("async") as scope, async_engine.connect() as conn:
            for _ in range(2):
                await conn.execute(text("SELECT name FROM users WHERE id = 1"))
            await conn.execute(text("SELECT count(*) FROM events WHERE customer_id = 42"))
            rows = (await conn.execute(text("SELECT id FROM events WHERE id <= 3000"))).all()
            assert len(rows) == 3000
        found = {f.kind for f in scope.findings}
        assert {FindingKind.DUPLICATE, FindingKind.SLOW_QUERY} <= found
        slow = next(
            f
            for f in scope.findings
            if f.kind is FindingKind.SLOW_QUERY and "customer_id" in (f.sql or "")
        )
        assert any(flag.kind == "seq_scan" for flag in slow.plan_flags)
        plan = profiler.plan_for(slow.fingerprint or "")
        assert plan is not None
        assert plan[2] is True  # analyzed through the async engine, rolled back
    finally:
        profiler.uninstrument()
        await async_engine.dispose()


# -- how statements are timed (_statements): the dialect's do_execute events ------------------


def test_two_profilers_on_one_engine_each_record_the_statement(engine: Engine) -> None:
    # one dialect handler runs the statement and tells every profiler watching the engine:
    # a handler that ran it and returned True would hide it from the others
    outer, inner = Profiler(engine), Profiler().instrument()  # the second: every engine
    try:
        with (
            outer.scope("test") as test_scope,
            inner.scope("request") as request_scope,
            Session(engine) as session,
        ):
            session.execute(select(User)).all()
        assert (test_scope.query_count, request_scope.query_count) == (1, 1)
        inner.uninstrument()
        with outer.scope("test") as test_scope, Session(engine) as session:
            session.execute(select(User)).all()
        assert test_scope.query_count == 1
    finally:
        outer.uninstrument()
        inner.uninstrument()


def test_a_new_connections_set_up_statements_are_not_the_scopes(
    hotpath_db: ModuleDatabase, engine: Engine
) -> None:
    # `engine` made the tables; a fresh engine's first connection runs the dialect's set-up
    fresh = create_engine(hotpath_db.url)
    seen: list[str] = []

    def count(cursor: object, statement: str, parameters: object, context: object) -> bool:
        seen.append(statement)
        return False  # SQLAlchemy (then observe's handler) runs it

    event.listen(fresh, "do_execute", count)
    event.listen(
        fresh, "do_execute_no_params", lambda c, statement, ctx: count(c, statement, None, ctx)
    )
    profiler = Profiler(fresh)
    try:
        with profiler.scope("first request") as scope, Session(fresh) as session:
            session.execute(select(User)).all()
        # the set-up's statements went through the very events observe times with...
        assert len(seen) > 1
        # ...and only the request's own statement is its
        assert scope.query_count == 1
    finally:
        profiler.uninstrument()
        fresh.dispose()


def test_a_scopes_empty_dicts_are_shared_and_refuse_writes(profiler: Profiler) -> None:
    first, second = profiler.scope("a"), profiler.scope("b")
    assert first._lazy is second._lazy is NO_DICT  # nothing made for a scope that needs none
    with pytest.raises(TypeError, match="NO_DICT is shared"):
        first._lazy[("origin", "key")] = None  # type: ignore[index]
    with first, Session(profiler._targets[0]) as session:
        session.execute(select(User)).all()
        session.execute(select(User)).all()
    assert first._shape_counts  # its own, once written
    assert second._shape_counts is NO_DICT
