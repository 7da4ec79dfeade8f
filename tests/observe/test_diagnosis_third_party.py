"""The diagnosis on patterns met in third-party applications (full-stack-fastapi-template,
microblog-api, an httpx/aiohttp service): each hotpath bug found there, re-expressed on this
suite's own models against real PostgreSQL and a real HTTP server on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from operator import attrgetter
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from flask import Flask, Response
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.orm import Session

from hotpath.observe import (
    ASGIMiddleware,
    Finding,
    FindingKind,
    Profiler,
    Scope,
    WSGIMiddleware,
)

from .models import Item, Order, User

# -- full-stack-fastapi-template: ORM bulk DML inside a request ---------------------------------


def test_orm_bulk_delete_and_update_in_a_scope_are_no_listener_failure(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    # DELETE /users/{user_id} runs session.exec(delete(Item).where(...)) before
    # session.delete(user): an ORM execution that is not a SELECT has no load options
    monkeypatch.setattr("hotpath.observe._scope._failed_listeners", set())
    caplog.set_level(logging.ERROR, logger="hotpath.observe")
    profiler = Profiler(engine, modes={"n_plus_one": "log"})
    try:
        with profiler.scope("DELETE /users/{user_id}") as scope, Session(engine) as session:
            session.execute(delete(Item).where(Item.sku == "no-such-sku"))
            session.execute(update(User).where(User.id == -1).values(name="x"))
            for user in session.scalars(select(User).order_by(User.id)):
                _ = user.orders  # the N+1 after the DML is still found
            session.rollback()
    finally:
        profiler.uninstrument()
    assert [r.getMessage() for r in caplog.records if "listener failed" in r.getMessage()] == []
    n_plus_one = [f for f in scope.findings if f.kind is FindingKind.N_PLUS_ONE]
    assert len(n_plus_one) == 1
    assert "User.orders" in n_plus_one[0].message


async def test_sequential_queries_in_a_sync_endpoint_of_an_asgi_app_name_the_thread_pool(
    engine: Engine,
) -> None:
    # the template's endpoints are `def` (FastAPI runs them in its thread pool) on a sync
    # Session: the fix cannot be `async with Session()` + `await gather_bounded(...)`
    profiler = Profiler(engine, budget_ms=5)
    app = FastAPI()
    app.add_middleware(ASGIMiddleware, profiler=profiler)

    @app.get("/items")
    def read_items() -> dict[str, int]:
        with Session(engine) as session:
            count = session.execute(text("SELECT pg_sleep(0.02), count(*) FROM items")).one()
            rows = session.execute(text("SELECT pg_sleep(0.02), id FROM users LIMIT 5")).all()
        return {"count": count[1], "rows": len(rows)}

    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/items")).status_code == 200
        fixes = {f.kind: f for f in profiler.report().endpoint("GET /items").fixes}
        change = fixes["sequential_io"].change or ""
        assert "ThreadPoolExecutor" in change
        assert "await" not in change
        assert "own Session" in change  # both ran on one session
    finally:
        profiler.uninstrument()


# -- microblog-api: Flask's test client leaves a streamed body unread -------------------------


def test_a_flask_request_whose_body_is_not_read_leaves_no_scope_open(engine: Engine) -> None:
    # Werkzeug's test client runs the app up to its first body chunk and reads the rest only
    # when the test asks for it: most tests never do. The request's scope must not stay the
    # caller's current scope, or later requests and the test's own queries nest into it
    # (microblog-api: 9 duplicate findings, each made of two different requests' queries)
    profiler = Profiler(engine, modes={"duplicate": "log", "n_plus_one": "log"})
    app = Flask(__name__)
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, profiler)  # type: ignore[method-assign]

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> dict[str, str]:
        with Session(engine) as session:
            found = session.get(User, user_id)
            assert found is not None
            return {"name": found.name}

    try:
        client = app.test_client()
        first = client.get("/users/1")
        assert first.status_code == 200
        assert profiler.current_scope() is None
        second = client.get("/users/1")
        with Session(engine) as session:
            session.get(User, 1)  # the test's own query: no request's
        assert second.json == {"name": "user1"}
        first.close()
        second.close()
        endpoint = profiler.report().endpoint("GET /users/<int:user_id>")
        assert endpoint.count == 2
        assert endpoint.queries_max == 1
        assert endpoint.fixes == []
    finally:
        profiler.uninstrument()


def test_a_lazy_load_run_by_library_code_after_the_view_names_no_line_outside_the_request(
    engine: Engine,
) -> None:
    # microblog-api's views return a query; apifairy runs it and marshmallow serializes
    # Post.author lazily, after the view returned: no application frame is on the stack
    # between the middleware and the ORM. The walk went on past the middleware into the
    # caller (the test's client.get line) and named that as the N+1's loop.
    profiler = Profiler(engine, modes={"n_plus_one": "log"})
    app = Flask(__name__)
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, profiler)  # type: ignore[method-assign]
    session = Session(engine)

    @app.get("/orders")
    def orders() -> Response:
        loaded = session.scalars(select(Order).order_by(Order.id)).all()
        # serialized by C code (map, attrgetter) driven by Werkzeug: no frame of this file
        return Response(map(str, map(attrgetter("user.name"), loaded)))

    try:
        body = app.test_client().get("/orders").get_data(as_text=True)
        assert body.startswith("user1user1user1user2")
        fix = profiler.report().endpoint("GET /orders").fixes[0]
        assert fix.kind == "n_plus_one"
        assert "Order.user" in fix.message
        assert fix.call_site is None  # not this test's line: it is outside the request
    finally:
        session.close()
        profiler.uninstrument()


# -- fastapi-benchmark: a blocking call behind an @app.middleware("http") -----------------------


async def test_a_blocking_call_behind_an_http_middleware_is_found() -> None:
    # Starlette's BaseHTTPMiddleware (what @app.middleware("http") makes: logging, timing,
    # auth middlewares) runs the endpoint in a task of its own, whose steps the request's
    # timed coroutine never sees: fastapi-benchmark's sync httpx.Client inside async def
    # blocked the loop 4 x 1 s with no block and no finding
    profiler = Profiler(budget_ms=5, blocking_ms=20).instrument()
    app = FastAPI()
    seen: list[Scope | None] = []

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Any) -> Any:
        return await call_next(request)

    app.add_middleware(ASGIMiddleware, profiler=profiler)

    @app.get("/blocking")
    async def blocking() -> dict[str, int]:
        seen.append(profiler.current_scope())
        await asyncio.sleep(0.002)  # the victim is in flight by now
        time.sleep(0.08)  # the planted blocking call
        return {"ok": 1}

    @app.get("/victim")
    async def victim() -> dict[str, int]:
        seen.append(profiler.current_scope())
        await asyncio.sleep(0.01)
        return {"ok": 1}

    def blocking_calls(scope: Scope | None) -> list[Finding]:
        assert scope is not None
        found = [f for f in scope.findings if f.kind is FindingKind.BLOCKING_CALL]
        # a loaded machine can stall a step past blocking_ms anywhere: those blocks are
        # real, but not the planted one this test is about
        planted = [f for f in found if f.call_site is None or f.call_site.function == "blocking"]
        return planted or found

    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/blocking")).status_code == 200
            answers = await asyncio.gather(client.get("/victim"), client.get("/blocking"))
        assert [a.status_code for a in answers] == [200, 200]
        alone, victim_scope, culprit = seen
        [own] = blocking_calls(alone)
        assert own.call_site is not None
        assert own.call_site.function == "blocking"
        assert "time.sleep(0.08)" in own.message
        assert "in this request" in own.message
        # two in flight: the victim waited for the same line; which request's task held the
        # loop is read from the task (Python 3.12+), never guessed
        [suffered] = blocking_calls(victim_scope)
        assert suffered.call_site == own.call_site
        assert "another request (GET /blocking)" in suffered.message or (
            "a request in flight" in suffered.message
        )
        [again] = blocking_calls(culprit)
        assert again.call_site == own.call_site
        assert "GET /victim" not in again.message
    finally:
        profiler.uninstrument()


async def test_a_long_stall_is_named_by_what_ran_most_of_it() -> None:
    # fastapi-benchmark's `with Client() as http: return http.get(...)` (1 s): the first
    # 32 samples (160 ms) all fell on the client's set-up, which named the whole second
    profiler = Profiler(budget_ms=5, blocking_ms=20).instrument()
    app = FastAPI()
    app.add_middleware(ASGIMiddleware, profiler=profiler)
    seen: list[Scope | None] = []

    @app.get("/slow")
    async def slow() -> dict[str, int]:
        seen.append(profiler.current_scope())
        time.sleep(0.2)  # set-up
        time.sleep(0.4)  # the long call
        return {"ok": 1}

    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/slow")).status_code == 200
        [scope] = seen
        assert scope is not None
        [finding] = [f for f in scope.findings if f.kind is FindingKind.BLOCKING_CALL]
        assert "time.sleep(0.4)" in finding.message
    finally:
        profiler.uninstrument()


# -- full-stack-fastapi-template: TestClient runs each module's loop in a new thread ------------


def test_a_loop_thread_that_reuses_a_finished_thread_id_gets_its_own_monitor() -> None:
    # Starlette's TestClient runs the app's loop in a new thread per client; the OS reuses
    # a finished thread's id, and the monitor kept for that id read the dead thread's CPU
    # clock: OSError (EINVAL) raised inside the request (template: 3 failed, 4 errors)
    profiler = Profiler(budget_ms=5, blocking_ms=20).instrument()
    app = FastAPI()
    app.add_middleware(ASGIMiddleware, profiler=profiler)
    seen: list[Scope | None] = []

    @app.get("/slow")
    async def slow() -> dict[str, int]:
        seen.append(profiler.current_scope())
        time.sleep(0.06)
        return {"ok": 1}

    def one_request(statuses: list[int]) -> None:
        async def run() -> None:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                statuses.append((await client.get("/slow")).status_code)

        asyncio.run(run())

    try:
        idents: list[int] = []
        statuses: list[int] = []
        for _ in range(20):  # until a new thread gets a finished one's id (glibc: at once)
            thread = threading.Thread(target=one_request, args=(statuses,))
            thread.start()
            assert thread.ident is not None
            idents.append(thread.ident)
            thread.join()
            if len(idents) != len(set(idents)):
                break
        else:
            pytest.skip("the OS gave no thread a finished thread's id")
        assert statuses == [200] * len(idents)
        for scope in seen:
            assert scope is not None
            assert [f.kind for f in scope.findings] == [FindingKind.BLOCKING_CALL]
    finally:
        profiler.uninstrument()
