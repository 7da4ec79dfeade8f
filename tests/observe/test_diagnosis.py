"""The diagnosis on real servers: every request's time by layer, the request-wide detectors
(each with a case that must be found and a near miss that must not), the ranked report.

Outbound HTTP goes to a real HTTP server on loopback whose handlers sleep a known time; the
database is the module's real PostgreSQL, Redis the stack's.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
import redis
import requests
from fastapi import FastAPI
from flask import Flask
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from hotpath.observe import (
    ASGIMiddleware,
    FindingKind,
    Layer,
    ObserveConfigError,
    Profiler,
    WSGIMiddleware,
    _loop,
)
from hotpath.testing import ModuleDatabase, ServerStack
from tests.helpers import LoopbackHTTPServer

from .models import User

SLOW_S = 0.04  # what the stub's /slow/... endpoints take
BUDGET_MS = 10_000.0  # 1 s was overrun on a busy machine (bottleneck "cpu")


class _Stub(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the stub's endpoints
        path = self.path.split("?")[0]
        if path.startswith("/slow/"):
            time.sleep(SLOW_S)
            body: dict[str, Any] = {"path": path}
        elif path == "/token":
            body = {"token": "tok-7f3a9c1e5b"}
        elif path.startswith("/data"):
            body = {"query": self.path}
        else:
            body = {"id": path.rsplit("/", 1)[-1], "price": 12}
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    server = LoopbackHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def kinds(profiler: Profiler, name: str) -> dict[str, Any]:
    endpoint = profiler.report().endpoint(name)
    return {fix.kind: fix for fix in endpoint.fixes}


async def _serve(app: FastAPI, *paths: str, concurrently: bool = False) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        if concurrently:
            responses = await asyncio.gather(*(client.get(p) for p in paths))
        else:
            responses = [await client.get(p) for p in paths]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]


def _app(profiler: Profiler) -> FastAPI:
    app = FastAPI()
    app.add_middleware(ASGIMiddleware, profiler=profiler)
    return app


# -- the breakdown -------------------------------------------------------------------------


async def test_layers_add_up_and_match_the_dependency_own_latency(
    stub: str, async_engine: AsyncEngine, hotpath_stack: ServerStack
) -> None:
    profiler = Profiler(async_engine, budget_ms=BUDGET_MS)
    app = _app(profiler)
    cache = redis.asyncio.Redis.from_url(hotpath_stack.redis_url)
    seen: list[Any] = []

    @app.get("/mixed")
    async def mixed() -> dict[str, int]:
        async with httpx.AsyncClient(timeout=5) as client:
            await client.get(f"{stub}/slow/a")
        await cache.set("hotpath-test", "1")
        await cache.get("hotpath-test")
        async with AsyncSession(async_engine) as session:
            await session.execute(text("SELECT pg_sleep(0.02)"))
        seen.append(profiler.current_scope())
        return {"ok": 1}

    await _serve(app, "/mixed", "/mixed")
    await cache.aclose()
    scope = seen[-1]
    parts = scope.breakdown_ms
    assert math.isclose(sum(parts.values()), scope.duration_ms, rel_tol=1e-6)
    # independent measurements: the stub sleeps SLOW_S, the server 20 ms
    assert parts[Layer.HTTP] >= SLOW_S * 1000
    assert parts[Layer.DB] >= 20
    assert parts[Layer.REDIS] > 0
    endpoint = profiler.report().to_dict()["endpoints"][0]
    assert endpoint["name"] == "GET /mixed"
    assert endpoint["breakdown_ms"]["http"] >= SLOW_S * 1000
    assert endpoint["layers"]["db"]["p99_ms"] >= 20
    assert endpoint["bottleneck"] == "none"  # within its budget


# -- sequential I/O -----------------------------------------------------------------------


async def test_independent_calls_awaited_in_turn_are_sequential_io(stub: str) -> None:
    profiler = Profiler(budget_ms=10).instrument()
    app = _app(profiler)
    client = httpx.AsyncClient(timeout=5)

    @app.get("/profile/{user_id}")
    async def profile(user_id: int) -> dict[str, int]:
        await client.get(f"{stub}/slow/orders?user={user_id}")
        await client.get(f"{stub}/slow/payments?user={user_id}")
        await client.get(f"{stub}/slow/reviews?user={user_id}")
        return {"ok": 1}

    try:
        await _serve(app, "/profile/7")
        found = kinds(profiler, "GET /profile/{user_id}")
        fix = found["sequential_io"]
        assert fix.saving_ms >= 1.5 * SLOW_S * 1000  # three 40 ms calls -> one 40 ms wait
        assert "gather_bounded" in (fix.change or "")
        assert fix.call_site
        assert "test_diagnosis.py" in fix.call_site
        assert profiler.report().endpoint("GET /profile/{user_id}").bottleneck == "sequential_io"
    finally:
        profiler.uninstrument()
        await client.aclose()


async def test_a_call_that_needs_the_previous_answer_is_not_sequential_io(stub: str) -> None:
    profiler = Profiler(budget_ms=10, sequential_min_ms=0).instrument()
    app = _app(profiler)

    @app.get("/dependent")
    async def dependent() -> dict[str, int]:
        async with httpx.AsyncClient(timeout=5) as client:
            token = (await client.get(f"{stub}/token")).json()["token"]
            await client.get(f"{stub}/data", params={"token": token})
        return {"ok": 1}

    @app.get("/together")
    async def together() -> dict[str, int]:
        async with httpx.AsyncClient(timeout=5) as client:
            await asyncio.gather(client.get(f"{stub}/slow/x"), client.get(f"{stub}/slow/y"))
        return {"ok": 1}

    try:
        await _serve(app, "/dependent", "/together")
        assert "sequential_io" not in kinds(profiler, "GET /dependent")
        assert "sequential_io" not in kinds(profiler, "GET /together")
    finally:
        profiler.uninstrument()


def test_sequential_queries_in_a_flask_app_name_the_thread_pool(
    engine: Engine, hotpath_db: ModuleDatabase
) -> None:
    profiler = Profiler(engine, budget_ms=5)
    app = Flask(__name__)
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, profiler)  # type: ignore[method-assign]

    @app.get("/report")
    def report() -> dict[str, int]:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(0.02), count(*) FROM users")).all()
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(0.02), count(*) FROM orders")).all()
        return {"ok": 1}

    try:
        assert app.test_client().get("/report").status_code == 200
        fix = kinds(profiler, "GET /report")["sequential_io"]
        assert "ThreadPoolExecutor" in (fix.change or "")
        assert fix.saving_ms >= 15
    finally:
        profiler.uninstrument()


# -- N+1 HTTP -------------------------------------------------------------------------------


async def test_the_same_endpoint_called_in_a_loop_is_n_plus_one_http(stub: str) -> None:
    profiler = Profiler(budget_ms=5).instrument()
    app = _app(profiler)

    @app.get("/cart")
    async def cart() -> dict[str, int]:
        async with httpx.AsyncClient(timeout=5) as client:
            prices = [(await client.get(f"{stub}/items/{i}")).json()["price"] for i in range(8)]
        return {"total": sum(prices)}

    @app.get("/cart-fanout")
    async def cart_fanout() -> dict[str, int]:
        async with httpx.AsyncClient(timeout=5) as client:
            answers = await asyncio.gather(*(client.get(f"{stub}/slow/{i}") for i in range(8)))
        return {"total": len(answers)}

    try:
        await _serve(app, "/cart", "/cart-fanout")
        fix = kinds(profiler, "GET /cart")["n_plus_one_http"]
        assert "GET http://127.0.0.1" in fix.message
        assert "/items/{id}" in fix.message
        assert fix.evidence["count"] == 8
        assert "n_plus_one_http" not in kinds(profiler, "GET /cart-fanout")  # concurrent fan-out
    finally:
        profiler.uninstrument()


# -- blocking calls ------------------------------------------------------------------------


async def test_a_blocking_call_in_async_def_is_found_with_its_line_and_its_victims() -> None:
    profiler = Profiler(budget_ms=5, blocking_ms=20).instrument()
    app = _app(profiler)

    # the victim is in flight through the block, however slowly a busy machine runs them
    victim_waiting, blocking_started = asyncio.Event(), asyncio.Event()

    @app.get("/blocking")
    async def blocking() -> dict[str, int]:
        await asyncio.wait_for(victim_waiting.wait(), 30)
        blocking_started.set()
        time.sleep(0.08)  # the planted blocking call
        return {"ok": 1}

    @app.get("/offloaded")
    async def offloaded() -> dict[str, int]:
        await asyncio.to_thread(time.sleep, 0.08)
        return {"ok": 1}

    @app.get("/victim")
    async def victim() -> dict[str, int]:
        victim_waiting.set()
        await asyncio.wait_for(blocking_started.wait(), 30)
        return {"ok": 1}

    # the loop's executor makes its first worker thread on the first to_thread, and waits for
    # it to start: a real block on a starved machine, though not the call this test offloads
    await asyncio.to_thread(int)
    try:
        await _serve(app, "/victim", "/blocking", concurrently=True)
        await _serve(app, "/offloaded")
        fix = kinds(profiler, "GET /blocking")["blocking_call"]
        assert fix.call_site is not None
        assert "in blocking" in fix.call_site
        assert "time.sleep(0.08)" in fix.message
        assert fix.evidence["cpu_bound"] is False
        assert "to_thread" in (fix.change or "")
        # the other request in flight waited for it: blocked in its breakdown, same fix
        assert profiler.report().endpoint("GET /victim").breakdown_ms["blocked"] >= 40
        assert kinds(profiler, "GET /victim")["blocking_call"].call_site == fix.call_site
        assert "blocking_call" not in kinds(profiler, "GET /offloaded")
    finally:
        profiler.uninstrument()


async def test_each_loop_marks_its_own_first_requests() -> None:
    """A thread runs loop after loop (``asyncio.run`` per test, per job): a new loop's first
    requests are marked, whatever the thread's earlier loops served."""
    profiler = Profiler().instrument()
    app = _app(profiler)

    @app.get("/ok")
    async def ok() -> dict[str, int]:
        return {"ok": 1}

    monitor = _loop.monitor_for_this_thread()
    monitor.loop, monitor.marked_left = None, 0  # an earlier loop that served them all
    try:
        await _serve(app, "/ok")
        assert monitor.loop is asyncio.get_running_loop()
        assert monitor.marked_left == _loop._MARKED_FIRST - 1
    finally:
        profiler.uninstrument()


async def test_a_block_among_unmarked_requests_is_seen_and_marks_the_next() -> None:
    """Past a loop's first requests, steps are not marked: the heartbeat sees a block among
    them, with its endpoint and line (once the loop answers again: after the request that
    blocked may have concluded), and the requests after it are marked, so a recurring block
    is charged to its endpoint. The loop beats at its quiet period then (no block since its
    first requests), and fast again after the block. Without the heartbeat an unmarked block
    is not seen at all."""
    profiler = Profiler(budget_ms=5, blocking_ms=20).instrument()
    app = _app(profiler)

    @app.get("/blocking")
    async def blocking() -> dict[str, int]:
        await asyncio.sleep(0.03)  # the block is a later step of the request
        time.sleep(0.08)  # the planted blocking call
        return {"ok": 1}

    async def blocks_after(count: int, within: float = 5.0) -> list[Any]:
        deadline = time.monotonic() + within  # the heartbeat's next beat, on a busy machine
        while len(monitor.blocks) <= count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return list(monitor.blocks)[count:]

    monitor = _loop.monitor_for_this_thread()
    monitor.attach(asyncio.get_running_loop())  # this test's loop, its first requests served
    try:
        monitor.marked_left = 0
        assert monitor.beat_period() == _loop._QUIET_BEAT_S  # a quiet loop beats slowly
        seen = len(monitor.blocks)
        await _serve(app, "/blocking")
        (block,) = await blocks_after(seen)
        assert block.endpoint == "GET /blocking"
        assert "time.sleep(0.08)" in block.what
        assert monitor.marked_left == _loop._MARKED_AFTER_BLOCK
        assert monitor.beat_period() == _loop._BEAT_S  # and fast again after a block
        await _serve(app, "/blocking", "/blocking")  # marked now: charged to the endpoint
        assert "time.sleep(0.08)" in kinds(profiler, "GET /blocking")["blocking_call"].message

        # the unprotected path: no heartbeat, and an unmarked block goes unseen
        deadline = time.monotonic() + 5
        while monitor.beat_due and time.monotonic() < deadline:  # the beats stop when idle
            await asyncio.sleep(0.01)
        monitor.marked_left = 0
        seen = len(monitor.blocks)
        beat = _loop.LoopMonitor.arrive
        _loop.LoopMonitor.arrive = lambda self, loop, scope: self.in_flight.append(scope)  # type: ignore[method-assign]
        try:
            await _serve(app, "/blocking")
            assert await blocks_after(seen, within=0.5) == []  # beats come every 10 ms
        finally:
            _loop.LoopMonitor.arrive = beat  # type: ignore[method-assign]
    finally:
        monitor.marked_left = _loop._MARKED_FIRST  # the thread's next tests: as they were
        profiler.uninstrument()


async def test_a_quiet_loop_beats_at_its_quiet_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past a loop's first requests and with no block since, the heartbeat (and the watchdog
    looking once per beat) runs at the quiet period; while requests are marked it runs at
    the fast one. Beats can come late on a busy machine, never early: the quiet count is a
    bound, and the fast loop, in the same time, passes it."""
    profiler = Profiler().instrument()
    app = _app(profiler)

    @app.get("/wait")
    async def wait() -> dict[str, int]:
        await asyncio.sleep(0.4)
        return {"ok": 1}

    beats = 0
    beat = _loop.LoopMonitor._beat

    def counted(self: _loop.LoopMonitor) -> None:
        nonlocal beats
        beats += 1
        beat(self)

    async def beats_serving(marked: int) -> int:
        nonlocal beats
        deadline = time.monotonic() + 5
        while monitor.beat_due and time.monotonic() < deadline:  # the last request's beats
            await asyncio.sleep(0.01)
        monitor.marked_left, beats = marked, 0
        await _serve(app, "/wait")
        return beats

    monkeypatch.setattr(_loop.LoopMonitor, "_beat", counted)
    monitor = _loop.monitor_for_this_thread()
    monitor.attach(asyncio.get_running_loop())
    try:
        quiet = await beats_serving(0)
        assert quiet <= 0.4 / _loop._QUIET_BEAT_S + 1
        fast = await beats_serving(_loop._MARKED_AFTER_BLOCK)
        assert fast > 0.4 / _loop._QUIET_BEAT_S + 1
    finally:
        monitor.marked_left = _loop._MARKED_FIRST  # the thread's next tests: as they were
        profiler.uninstrument()


# -- timeouts, slow dependencies ------------------------------------------------------------


def test_requests_without_timeout_and_a_slow_dependency_in_flask(stub: str) -> None:
    profiler = Profiler(budget_ms=5).instrument()
    app = Flask(__name__)
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, profiler)  # type: ignore[method-assign]

    @app.get("/pay")
    def pay() -> dict[str, int]:
        requests.get(f"{stub}/slow/pay")  # no timeout: can hang forever
        return {"ok": 1}

    @app.get("/pay-bounded")
    def pay_bounded() -> dict[str, int]:
        requests.get(f"{stub}/items/1", timeout=2)
        return {"ok": 1}

    try:
        client = app.test_client()
        assert client.get("/pay").status_code == 200
        assert client.get("/pay-bounded").status_code == 200
        found = kinds(profiler, "GET /pay")
        assert found["no_timeout"].call_site
        assert "in pay" in found["no_timeout"].call_site
        assert found["slow_dependency"].evidence["ms"] >= SLOW_S * 1000
        assert "with_deadline" in (found["slow_dependency"].change or "")
        assert "no_timeout" not in kinds(profiler, "GET /pay-bounded")
    finally:
        profiler.uninstrument()


# -- connections ----------------------------------------------------------------------------


def test_connect_per_request_is_connection_setup_and_a_pool_is_not(
    hotpath_db: ModuleDatabase, engine: Engine
) -> None:
    naive = create_engine(hotpath_db.url, poolclass=NullPool)
    pooled = create_engine(hotpath_db.url, pool_size=2)
    profiler = Profiler(naive, pooled, budget_ms=1)
    try:
        for _ in range(3):
            for name, target in (("naive", naive), ("pooled", pooled)):
                with profiler.scope(name), target.connect() as conn:
                    conn.execute(select(User.id).limit(1)).all()
        fix = kinds(profiler, "naive")["connection_setup"]
        assert fix.scopes == 3
        assert "PoolPlan" in (fix.change or "")
        assert profiler.report().endpoint("naive").breakdown_ms["connect"] > 0
        assert "connection_setup" not in kinds(profiler, "pooled")  # one warm-up connect
    finally:
        profiler.uninstrument()
        naive.dispose()
        pooled.dispose()


async def test_waiting_for_a_pooled_connection_is_pool_wait(hotpath_db: ModuleDatabase) -> None:
    small = create_async_engine(hotpath_db.async_url, pool_size=1, max_overflow=0)
    profiler = Profiler(small, budget_ms=5)
    app = _app(profiler)

    @app.get("/hold")
    async def hold() -> dict[str, int]:
        async with AsyncSession(small) as session:
            await session.execute(text("SELECT pg_sleep(0.03)"))
        return {"ok": 1}

    try:
        await _serve(app, "/hold")  # alone: nothing to wait for
        assert "pool_wait" not in kinds(profiler, "GET /hold")
        profiler.reset()
        await _serve(app, *["/hold"] * 4, concurrently=True)
        fix = kinds(profiler, "GET /hold")["pool_wait"]
        assert "pool_size=1" in fix.message
        assert profiler.report().endpoint("GET /hold").breakdown_ms["pool_wait"] >= 10
    finally:
        profiler.uninstrument()
        await small.dispose()


# -- the report, clean apps, configuration, secrets ---------------------------------------------


async def test_a_clean_app_gets_no_finding_and_bottleneck_none(
    stub: str, async_engine: AsyncEngine
) -> None:
    # a budget no loopback request misses even on a loaded machine: the detectors that only
    # speak past the budget (sequential I/O, slow dependency) are quiet by design here, the
    # others (N+1, duplicates, N+1 HTTP, blocking calls, connections, pool) must be too
    profiler = Profiler(async_engine, budget_ms=5000)
    app = _app(profiler)
    # made once: an httpx client per request loads its TLS context on the loop (a real
    # blocking call, which the detector reports)
    client = httpx.AsyncClient(timeout=5)

    @app.get("/fine/{user_id}")
    async def fine(user_id: int) -> dict[str, int]:
        async with AsyncSession(async_engine) as session:
            found = await session.get(User, user_id)
        await client.get(f"{stub}/items/{user_id}")
        return {"id": found.id if found else 0}

    try:
        await _serve(app, *[f"/fine/{i}" for i in (1, 2, 3, 1, 2)])
        report = profiler.report()
        assert report.endpoint("GET /fine/{user_id}").fixes == []
        assert report.endpoint("GET /fine/{user_id}").bottleneck == "none"
        assert report.top_fixes == []
    finally:
        profiler.uninstrument()
        await client.aclose()


def test_report_json_html_and_rich_table_carry_the_ranked_fixes(stub: str) -> None:
    profiler = Profiler(budget_ms=5).instrument()
    try:
        for _ in range(2):
            with profiler.scope("job"):
                for i in range(6):
                    requests.get(f"{stub}/items/{i}", timeout=2)
        data = profiler.report().to_dict()
        [endpoint] = data["endpoints"]
        assert endpoint["bottleneck"] == "n_plus_one_http"
        [fix] = [f for f in endpoint["fixes"] if f["kind"] == FindingKind.N_PLUS_ONE_HTTP.value]
        assert fix["call_site"].startswith("tests/observe/test_diagnosis.py:")
        assert fix["scopes"] == 2
        assert fix["saving_ms"] > 0
        assert data["top_fixes"][0]["kind"] == "n_plus_one_http"
        page = profiler.report().to_html()
        assert "n_plus_one_http" in page
        assert "test_diagnosis.py" in page
    finally:
        profiler.uninstrument()


@pytest.mark.parametrize(
    "options",
    [
        {"budget_ms": math.nan},
        {"blocking_ms": -1},
        {"dependency_share": 2},
        {"http_n_plus_one_threshold": 1},
        {"budgets": {"GET /x": math.inf}},
        {"no_such_option": 1},
    ],
)
def test_bad_configuration_is_one_clear_error(options: dict[str, Any]) -> None:
    with pytest.raises(ObserveConfigError) as raised:
        Profiler(**options)
    name = next(iter(options))
    assert name in str(raised.value) or "options are" in str(raised.value)


def test_literals_are_redacted_everywhere_observe_shows_sql(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    profiler = Profiler(engine, slow_query_ms=1, modes={"slow_query": "log"})
    try:
        with profiler.scope("login") as scope, engine.connect() as conn:
            conn.execute(
                text("SELECT pg_sleep(0.01), count(*) FROM users WHERE name = 's3cret-pw'")
            ).all()
        exported = profiler.report().to_json() + scope.queries[0].sql + caplog.text
        assert "s3cret-pw" not in exported
        assert "s3cret-pw" not in "".join(f.describe() for f in scope.findings)
        assert scope.findings, "the slow query was found"
    finally:
        profiler.uninstrument()
    keeping = Profiler(engine, capture_params=True)
    try:
        with keeping.scope("login") as scope, engine.connect() as conn:
            conn.execute(text("SELECT 1 WHERE 'shown' = 'shown'")).all()
        assert "'shown'" in scope.queries[0].sql  # opt-in: literals kept
    finally:
        keeping.uninstrument()


# -- caches, aiohttp ----------------------------------------------------------------------------


def test_a_cache_that_never_hits_costs_more_than_it_saves(
    hotpath_db: ModuleDatabase, stub: str
) -> None:
    from hotpath.cache import Cache, MemoryTier, RedisTier

    assert hotpath_db.redis_url is not None
    cache = Cache(
        MemoryTier(1000, ttl=30),
        RedisTier(hotpath_db.redis_url, health_interval=0.1),
        namespace=f"diag-{time.monotonic_ns()}",
    )
    profiler = Profiler(budget_ms=5, cache_min_lookups=40).instrument()
    try:
        for i in range(60):  # every key new: the cache's round trips on every call, no hit
            with profiler.scope("unique"):
                cache.get_or_set(f"quote:{i}", lambda: 1.0)
        for i in range(60):  # ten hot keys: hits
            with profiler.scope("hot"):
                cache.get_or_set(f"price:{i % 10}", lambda: 1.0)
        for i in range(120):  # 40 distinct first (cold), then the same 4 again and again
            with profiler.scope("cold"):
                key = f"item:{i}" if i < 40 else f"item:{i % 4}"
                cache.get_or_set(key, lambda: time.sleep(0.002) or 1.0)
        unique = kinds(profiler, "unique")["cache_miss"]
        assert "quote:{n}" in unique.message
        assert "costs more than it saves" in (unique.change or "")
        assert unique.evidence["hit_ratio"] == 0
        assert unique.call_site
        assert "test_diagnosis.py" in unique.call_site
        assert "cache_miss" not in kinds(profiler, "hot")
        cold = kinds(profiler, "cold")["cache_miss"]
        assert "starts cold" in cold.message
        assert "warm it" in (cold.change or "")
    finally:
        profiler.uninstrument()
        cache.close()


async def test_gets_asking_what_an_earlier_one_asked_are_what_a_cache_would_save(
    async_engine: AsyncEngine,
) -> None:
    # a budget every request with a database sleep of 2 ms is over, on a quiet machine too
    # (with 5 ms the requests met it there, and no cache was advised)
    profiler = Profiler(async_engine, budget_ms=1).instrument()
    app = _app(profiler)

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        async with AsyncSession(async_engine) as session:
            await session.execute(text("SELECT pg_sleep(0.002), CAST(:id AS int)"), {"id": user_id})
        return {"id": user_id}

    @app.get("/fresh/{n}")
    async def fresh(n: int) -> dict[str, int]:
        async with AsyncSession(async_engine) as session:
            await session.execute(text("SELECT pg_sleep(0.002), CAST(:n AS int)"), {"n": n})
        return {"n": n}

    @app.get("/plain")
    async def plain() -> dict[str, int]:
        return {"ok": 1}  # asked again and again, but nothing of the database's to save

    try:
        # 4 distinct users, 12 requests: 8 ask what an earlier one had; the query string too
        paths = [f"/users/{n % 4}" for n in range(12)] + ["/users/1?full=1", "/users/1?full=1"]
        await _serve(app, *paths, *(f"/fresh/{n}" for n in range(10)), *["/plain"] * 5)
        repeated = kinds(profiler, "GET /users/{user_id}")["repeated_read"]
        assert repeated.evidence["requests"] == 14
        assert repeated.evidence["repeats"] == 9  # the 8 users again, and the query once
        assert repeated.evidence["hit_ratio"] == pytest.approx(9 / 14, abs=1e-4)
        assert repeated.scopes == 9
        # the repeats' database time, each at least its pg_sleep
        assert repeated.saving_ms >= 9 * 2.0
        assert repeated.evidence["database_ms"] >= 2.0
        assert "cache the answer of GET /users/{user_id}" in (repeated.change or "")
        # what a cache would answer is not why the endpoint is slow: it never names the
        # bottleneck (the database time does, or on a busy machine the first connections)
        endpoint = profiler.report().endpoint("GET /users/{user_id}")
        assert endpoint.bottleneck not in ("repeated_read", "none")
        assert "repeated_read" not in kinds(profiler, "GET /fresh/{n}")  # every one new
        assert "repeated_read" not in kinds(profiler, "GET /plain")  # no database time
        top = profiler.report().top_fixes
        assert any(f.kind == "repeated_read" for f in top)
    finally:
        profiler.uninstrument()


async def test_the_loop_busy_share_is_what_the_requests_own_steps_held_of_it() -> None:
    computing, waiting = Profiler(budget_ms=5), Profiler(budget_ms=5)

    def app(profiler: Profiler, compute: bool) -> FastAPI:
        served = _app(profiler.instrument())

        @served.get("/work")
        async def work() -> dict[str, int]:
            if compute:
                until = time.perf_counter() + 0.01
                while time.perf_counter() < until:  # on the loop: nothing else moves
                    pass
            else:
                await asyncio.sleep(0.01)  # off the loop
            return {"ok": 1}

        return served

    try:
        await _serve(app(computing, True), *["/work"] * 20, concurrently=True)
        await _serve(app(waiting, False), *["/work"] * 20, concurrently=True)
        busy, idle = computing.report().loop_busy, waiting.report().loop_busy
        assert busy is not None
        assert idle is not None
        assert idle < busy <= 1.0  # the same requests: the computing ones held the loop
        assert computing.report().to_dict()["loop_busy"] == round(busy, 4)
    finally:
        computing.uninstrument()
        waiting.uninstrument()
    # a sync unit of work has no loop to hold
    plain = Profiler()
    with plain.scope("job"):
        time.sleep(0.001)
    assert plain.report().loop_busy is None


async def test_aiohttp_calls_are_timed_and_judged(stub: str) -> None:
    import aiohttp

    profiler = Profiler(budget_ms=5).instrument()
    app = _app(profiler)

    @app.get("/aio")
    async def aio() -> dict[str, int]:
        async with aiohttp.ClientSession() as session:
            for i in range(6):
                async with session.get(f"{stub}/items/{i}") as response:
                    await response.read()
        return {"ok": 1}

    try:
        await _serve(app, "/aio")
        endpoint = profiler.report().endpoint("GET /aio")
        assert endpoint.breakdown_ms["http"] > 0
        found = kinds(profiler, "GET /aio")
        assert found["n_plus_one_http"].evidence["count"] == 6
        assert "no_timeout" not in found  # aiohttp's default session has a total timeout
    finally:
        profiler.uninstrument()


def test_sync_redis_time_is_its_own_layer(hotpath_stack: ServerStack) -> None:
    client = redis.Redis.from_url(hotpath_stack.redis_url)
    profiler = Profiler().instrument()
    try:
        with profiler.scope("job") as scope:
            for i in range(20):
                client.set(f"hotpath-diag-{i}", i)
            with client.pipeline() as pipe:
                pipe.get("hotpath-diag-1").get("hotpath-diag-2")
                pipe.execute()
        assert scope.breakdown_ms[Layer.REDIS] > 0
        assert sum(1 for layer, *_ in scope.timeline.spans if layer is Layer.REDIS) == 21
    finally:
        profiler.uninstrument()
        client.close()
