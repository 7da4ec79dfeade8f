"""A request's recording is freed by reference counting, never left to the garbage collector.

A recording in a reference cycle waits for a collection with all it holds (its timeline, the
rows its operations read), and the cyclic garbage makes the collector run more often: a
recording whose name came from an object holding the recording made the served shop's
collector run 60% more often (docs/benchmarks.md, observe). These tests run requests with
the collector off and look for recordings in what it then finds unreachable.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from flask import Flask
from sqlalchemy import create_engine, text

from hotpath.observe import ASGIMiddleware, Profiler, WSGIMiddleware
from hotpath.observe import _statements as statements
from hotpath.observe._scope import Scope
from hotpath.testing import ModuleDatabase


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _cyclic_scopes(profiler: Profiler) -> list[Scope]:
    """``profiler``'s recordings only the collector could free (found with it off until now)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    gc.set_debug(0)
    found = [o for o in gc.garbage if isinstance(o, Scope) and o.recorder is profiler._recorder]
    gc.garbage.clear()
    return found


def _fastapi() -> FastAPI:
    app = FastAPI()

    async def dependency() -> Any:
        yield "value"

    @app.get("/items/{item_id}")
    async def item(item_id: int, request: Request, value: str = Depends(dependency)) -> Any:
        return {"id": item_id, "path": request.url.path, "value": value}

    return app


class _Holder:
    """Names a recording while holding it: the cycle the middleware must not make."""

    def __init__(self, recording: Scope) -> None:
        self.recording = recording

    def name(self) -> str:
        return self.recording.name


@pytest.mark.usefixtures("collector_off")
def test_the_check_finds_a_recording_in_a_cycle() -> None:
    profiler = Profiler()
    for _ in range(3):
        with profiler.scope("GET /cycle") as recording:
            recording.namer = _Holder(recording).name
    del recording
    assert len(_cyclic_scopes(profiler)) == 3


@pytest.mark.usefixtures("collector_off")
async def test_asgi_requests_leave_no_recording_to_the_collector() -> None:
    profiler = Profiler()
    transport = httpx.ASGITransport(app=ASGIMiddleware(_fastapi(), profiler))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for n in range(20):
            response = await client.get(f"/items/{n}")
            assert response.status_code == 200
            assert "server-timing" in response.headers
    assert _cyclic_scopes(profiler) == []
    assert profiler.report().endpoint("GET /items/{item_id}").count == 20


@pytest.mark.usefixtures("collector_off")
def test_wsgi_requests_leave_no_recording_to_the_collector() -> None:
    app = Flask(__name__)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    profiler = Profiler()
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, profiler)  # type: ignore[method-assign]
    client = app.test_client()
    for n in range(20):
        assert client.get(f"/items/{n}").status_code == 200
    assert _cyclic_scopes(profiler) == []
    assert profiler.report().endpoint("GET /items/<int:item_id>").count == 20


def test_uninstrumented_engines_leave_no_entry(hotpath_db: ModuleDatabase) -> None:
    """The statement handlers keep the profilers of each engine by its dialect's id, with the
    dialect held while watched (its id is no other object's meanwhile): instrumenting and
    uninstrumenting, again and again, leaves no entry and so holds no dialect."""
    engine = create_engine(hotpath_db.url)
    dialect_id = id(engine.dialect)
    for _ in range(3):
        profiler = Profiler(engine)
        with profiler.scope("statements") as scope, engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        assert scope.query_count == 1
        assert statements._watching[dialect_id] == (engine.dialect, [profiler._statement])
        profiler.uninstrument()
        assert dialect_id not in statements._watching
    engine.dispose()
