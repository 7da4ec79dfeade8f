"""Middleware under FastAPI and Flask, roll-up reports, function profiling, pytest plugin."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from hotpath.observe import (
    ASGIMiddleware,
    Profiler,
    QueryBudgetError,
    WSGIMiddleware,
    assert_max_queries,
)
from hotpath.testing import ModuleDatabase

from .models import ORDERS_PER_USER, USERS, User


def test_asgi_middleware_names_scopes_by_route_and_adds_server_timing(
    async_engine: AsyncEngine,
) -> None:
    profiler = Profiler(async_engine, modes={"n_plus_one": "log"})
    app = FastAPI()

    @app.get("/users/{user_id}/orders")
    async def user_orders(user_id: int) -> dict[str, int]:
        async with AsyncSession(async_engine) as session:
            users = (await session.scalars(select(User))).all()
            counts = [len(await u.awaitable_attrs.orders) for u in users]
        return {"user": user_id, "orders": sum(counts)}

    app.add_middleware(ASGIMiddleware, profiler=profiler)
    try:
        with TestClient(app) as client:
            for user_id in (1, 2, 3):
                response = client.get(f"/users/{user_id}/orders")
                assert response.status_code == 200
                assert response.json()["orders"] == USERS * ORDERS_PER_USER
            timing = response.headers["server-timing"]
        entries = dict(entry.split(";", 1) for entry in timing.split(", "))
        assert entries["db"].startswith("dur=")
        assert f'desc="{1 + USERS} queries"' in entries["db"]
        # every layer so far and the total: the layers add up to it (within rounding)
        durations = {name: float(v.split(";")[0][4:]) for name, v in entries.items()}
        total = durations.pop("total")
        assert abs(sum(durations.values()) - total) < 0.1 * len(durations) + 0.05
        report = profiler.report()
        [stats] = report.scopes
        assert stats.name == "GET /users/{user_id}/orders"  # the template, not /users/3/orders
        assert stats.count == 3
        assert stats.queries_max == 1 + USERS
        assert stats.findings[0]["kind"] == "n_plus_one"
        assert stats.findings[0]["scopes"] == 3
    finally:
        profiler.uninstrument()


def test_wsgi_middleware_under_flask(engine: Engine) -> None:
    profiler = Profiler(engine, modes={"n_plus_one": "log"})
    app = Flask(__name__)

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> dict[str, object]:
        with Session(engine) as session:
            found = session.get(User, user_id)
            assert found is not None
            return {"name": found.name, "orders": len(found.orders)}

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, profiler)  # type: ignore[method-assign]
    try:
        client = app.test_client()
        for user_id in (1, 2):
            response = client.get(f"/users/{user_id}")
            assert response.status_code == 200
            assert response.json == {"name": f"user{user_id}", "orders": ORDERS_PER_USER}
        assert 'desc="2 queries"' in response.headers["Server-Timing"]
        [stats] = profiler.report().scopes
        assert stats.name == "GET /users/<int:user_id>"
        assert stats.count == 2
        assert stats.findings == []  # one user per request: a single lazy load is no N+1
    finally:
        profiler.uninstrument()


def test_report_percentiles_and_json(engine: Engine) -> None:
    profiler = Profiler(engine)
    try:
        for queries in range(1, 11):
            with profiler.scope("job"), Session(engine) as session:
                for _ in range(queries):
                    session.execute(select(User.id).where(User.id == 1)).all()
        report = profiler.report()
        [job] = report.scopes
        assert job.count == 10
        assert job.queries_max == 10
        assert 5 <= job.queries_p50 <= 6
        assert 0 < job.p50_ms <= job.p95_ms <= job.p99_ms <= job.max_ms
        data = json.loads(report.to_json())
        [endpoint] = data["endpoints"]
        assert endpoint["name"] == "job"
        assert set(endpoint["breakdown_ms"]) == {
            "connect",
            "pool_wait",
            "db",
            "redis",
            "http",
            "blocked",
            "other",
        }
        assert endpoint["bottleneck"] in ("none", "duplicate")
    finally:
        profiler.uninstrument()


async def test_profile_decorator_and_block_sync_and_async() -> None:
    profiler = Profiler()

    @profiler.profile
    def compute(n: int) -> int:
        return sum(range(n))

    @profiler.profile
    async def fetch() -> str:
        await asyncio.sleep(0.002)
        return "ok"

    for n in range(20):
        assert compute(n) == sum(range(n))
    assert [await fetch() for _ in range(5)] == ["ok"] * 5
    async with profiler.profile("block"):
        await asyncio.sleep(0.001)
    stats = {f.name.rsplit(".", 1)[-1]: f for f in profiler.report().functions}
    assert stats["compute"].count == 20
    assert stats["fetch"].count == 5
    assert stats["fetch"].p50_ms >= 2.0
    assert stats["block"].count == 1


def test_assert_max_queries_lists_the_queries(engine: Engine) -> None:
    with assert_max_queries(2, engine), Session(engine) as session:
        session.execute(select(User)).all()
    with (
        pytest.raises(QueryBudgetError) as raised,
        assert_max_queries(2, engine),
        Session(engine) as session,
    ):
        for user in session.scalars(select(User)):
            _ = user.orders
    message = str(raised.value)
    assert f"{1 + USERS} queries ran, the budget is 2" in message
    assert "test_integrations.py" in message


_PLUGIN_TESTS = textwrap.dedent(
    """
    import pytest
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session
    from tests.observe.models import User

    URL = {url!r}

    def test_lazy_loop(hotpath_profiler):
        engine = create_engine(URL)
        with Session(engine) as session:
            for user in session.scalars(select(User)):
                user.orders
        engine.dispose()

    def test_eager(hotpath_profiler):
        from sqlalchemy.orm import selectinload
        engine = create_engine(URL)
        with Session(engine) as session:
            for user in session.scalars(select(User).options(selectinload(User.orders))):
                user.orders
        engine.dispose()

    @pytest.fixture
    def lazy_fixture(hotpath_profiler):  # set up after the profiler: not the test's queries
        engine = create_engine(URL)
        with Session(engine) as session:
            for user in session.scalars(select(User)):
                user.orders
        yield
        engine.dispose()

    def test_quiet_body(hotpath_profiler, lazy_fixture):
        pass

    def test_n_plus_one_inside_an_app_scope(hotpath_profiler):
        from hotpath.observe import Profiler
        engine = create_engine(URL)
        app = Profiler(engine, modes={{"n_plus_one": "log"}})  # what ASGIMiddleware opens
        with app.scope("GET /users"), Session(engine) as session:
            for user in session.scalars(select(User)):
                user.orders
        app.uninstrument()
        engine.dispose()

    @pytest.mark.max_queries(2)
    def test_budget_inside_an_app_scope_on_another_engine():
        from sqlalchemy import text
        from hotpath.observe import Profiler
        engine, reporting = create_engine(URL), create_engine(URL)
        app = Profiler(engine)
        with app.scope("GET /report"), reporting.connect() as conn:
            for i in range(5):
                conn.execute(text("SELECT :i"), {{"i": i}})
        app.uninstrument()
        engine.dispose()
        reporting.dispose()

    @pytest.mark.max_queries(1)
    def test_over_budget():
        engine = create_engine(URL)
        with Session(engine) as session:
            session.execute(select(User)).all()
            session.execute(select(User)).all()
        engine.dispose()
    """
)


def test_pytest_plugin_fails_n_plus_one_and_budgets(
    pytester: pytest.Pytester, hotpath_db: ModuleDatabase, engine: Engine
) -> None:
    pytester.makepyfile(test_app=_PLUGIN_TESTS.format(url=hotpath_db.url))
    pytester._monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[2]))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--hotpath-n-plus-one=raise")
    result.assert_outcomes(passed=2, failed=4)
    output = result.stdout.str()
    assert "NPlusOneError" in output
    assert "selectinload(User.orders)" in output
    assert "test_app.py:" in output  # the call site in the failing test
    assert "QueryBudgetError" in output
    assert "2 queries ran, the budget is 1" in output
    # the same suite with N+1 checking off: only the budget fails
    relaxed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--hotpath-n-plus-one=off")
    relaxed.assert_outcomes(passed=4, failed=2)


def test_findings_become_opentelemetry_span_events(engine: Engine) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    profiler = Profiler(engine, modes={"n_plus_one": "log"})
    try:
        with (
            tracer.start_as_current_span("GET /users"),
            profiler.scope("GET /users"),
            Session(engine) as session,
        ):
            for user in session.scalars(select(User)):
                _ = user.orders
        [span] = exporter.get_finished_spans()
        assert span.attributes is not None
        assert span.attributes["hotpath.db.queries"] == 1 + USERS
        [event] = [e for e in span.events if e.name == "hotpath.finding"]
        assert event.attributes is not None
        assert event.attributes["hotpath.kind"] == "n_plus_one"
        assert event.attributes["code.filepath"] == __file__
        assert "selectinload(User.orders)" in str(event.attributes["hotpath.fix"])
    finally:
        profiler.uninstrument()


def test_asgi_names_stay_bounded_and_background_work_is_not_the_requests(
    async_engine: AsyncEngine,
) -> None:
    from starlette.background import BackgroundTask
    from starlette.responses import JSONResponse

    profiler = Profiler(async_engine, max_names=5)
    app = FastAPI()

    async def report_job() -> None:  # after the response: neither its time nor its queries
        # long enough that no request's own time comes near it on a busy machine (0.3 s did:
        # a first connection took longer than the 250 ms allowed at load 10)
        await asyncio.sleep(1.0)
        async with AsyncSession(async_engine) as session:
            await session.execute(select(User))

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> JSONResponse:
        async with AsyncSession(async_engine) as session:
            await session.get(User, user_id)
        return JSONResponse({"user": user_id}, background=BackgroundTask(report_job))

    app.add_middleware(ASGIMiddleware, profiler=profiler)
    try:
        with TestClient(app) as client:
            for user_id in (1, 2):
                assert client.get(f"/users/{user_id}").status_code == 200
            for n in range(30):  # a scan of URLs the app does not route
                assert client.get(f"/wp-admin/{n}.php").status_code == 404
        stats = {s.name: s for s in profiler.report().scopes}
        assert set(stats) == {"GET /users/{user_id}", "GET <unmatched>"}
        assert stats["GET <unmatched>"].count == 30
        served = stats["GET /users/{user_id}"]
        assert served.queries_max == 1  # the background job's query is not the request's
        assert served.p99_ms < 1000  # nor its 1 s
    finally:
        profiler.uninstrument()


async def test_scope_names_past_max_names_share_one_rollup() -> None:
    profiler = Profiler(max_names=3)
    for n in range(10):
        async with profiler.scope(f"GET /raw/{n}"):
            pass
    names = [s.name for s in profiler.report().scopes]
    assert len(names) == 4
    assert "<other names>" in names
