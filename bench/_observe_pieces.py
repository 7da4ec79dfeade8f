"""The fixed costs of observe's per-request path: ``python -m bench._observe_pieces``.

Each piece runs alone in a tight loop, in this process, with no server and no database: a
scope made, a scope's roll-up, a scope entered and concluded, the ASGI middleware around an
app that answers at once, the step marks of a request that awaits four times, a Redis span
and a cache lookup recorded. CPU time of this thread, best of five runs, in microseconds per
item. These are what observe adds to every request whatever the app does; what a served app
pays in all is ``python -m bench observe`` (the ratio) and ``python -m bench._observe_profile``
(where, per thread).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from sqlalchemy import Engine, create_engine, event, literal, select
from sqlalchemy.orm import Session

from hotpath.observe import ASGIMiddleware, FindingKind, Profiler, _hooks
from hotpath.observe._scope import Scope, current_scope

_N = 5000
_REPEATS = 5

Message = dict[str, Any]


def _profiler() -> Profiler:
    # the shop's settings: every detector on, in "log" mode (silenced here)
    logging.getLogger("hotpath.observe").setLevel(logging.ERROR)
    return Profiler(
        keep_queries=0,
        explain="off",
        budget_ms=100.0,
        modes=dict.fromkeys((kind.value for kind in FindingKind), "log"),
    )


async def _answer(scope: Any, receive: Any, send: Callable[[Message], Awaitable[None]]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _four_steps(scope: Any, receive: Any, send: Callable[[Message], Awaitable[None]]) -> None:
    for _ in range(4):
        await asyncio.sleep(0)
    await _answer(scope, receive, send)


async def _receive() -> Message:
    return {"type": "http.request", "body": b""}


async def _send(message: Message) -> None:
    pass


_REQUEST = {"type": "http", "method": "GET", "path": "/items/7", "query_string": b"", "headers": []}


def _per_call(function: Callable[[], object]) -> float:
    best = min(timeit.repeat(function, number=_N, repeat=_REPEATS, timer=time.thread_time))
    return best / _N * 1e6


def _per_request(app: Any) -> float:
    async def serve() -> None:
        for _ in range(_N):
            await app(_REQUEST, _receive, _send)

    best = float("inf")
    for _ in range(_REPEATS):
        started = time.thread_time()
        asyncio.run(serve())
        best = min(best, time.thread_time() - started)
    return best / _N * 1e6


class _Loaded:
    """A cache lookup's loader clock, as the hook sees it after a hit."""

    ran = False
    ms = 0.0


def _statement_events() -> list[tuple[str, float]]:
    """What SQLAlchemy itself spends on a session with one statement when the engine has
    statement listeners that do nothing (an in-memory SQLite engine, outside any scope): the
    cursor events observe used to listen to, against the dialect's ``do_execute``, which it
    listens to now (``observe/_statements.py``)."""

    def engine_with(kind: str) -> Engine:
        engine = create_engine("sqlite://")
        if kind == "cursor":
            event.listen(engine, "before_cursor_execute", lambda *args: None)
            event.listen(engine, "after_cursor_execute", lambda *args: None)
        elif kind == "dialect":
            event.listen(engine, "do_execute", lambda *args: False)
        return engine

    statement = select(literal(1))

    def session_of(engine: Engine) -> Callable[[], None]:
        def one_statement() -> None:
            with Session(engine) as session:
                session.execute(statement).all()
                session.commit()

        return one_statement

    works = [session_of(engine_with(k)) for k in ("none", "cursor", "dialect")]
    for work in works:
        work()  # the statement compiled and cached, the pool's connection opened
    # the three in turn, round after round (measured one after the other, whichever came
    # first was the slowest: a difference of a few us then came out negative)
    best = [float("inf")] * 3
    for _ in range(3 * _REPEATS):  # a few us apart on ~70 us: more rounds than the others
        for index, work in enumerate(works):
            spent = min(timeit.repeat(work, number=_N // 5, repeat=1, timer=time.thread_time))
            best[index] = min(best[index], spent / (_N // 5) * 1e6)
    plain, cursor, dialect = best
    return [
        (
            "a one-statement session (in-memory SQLite), no-op cursor event listeners",
            cursor - plain,
        ),
        ("the same, a no-op dialect do_execute listener", dialect - plain),
    ]


def main() -> str:
    profiler = _profiler()
    recorder = profiler._recorder
    concluded = Scope(recorder, "GET /items/{item_id}")
    with concluded:
        pass

    def enter_and_conclude() -> None:
        with profiler.scope("GET /items/{item_id}"):
            pass

    recording = Scope(recorder, "GET /items/{item_id}")
    recording._open()
    token = current_scope.set(None)  # the pieces below record into `recording` directly
    rows = [
        ("a scope made", _per_call(lambda: Scope(recorder, "GET /items/{item_id}"))),
        ("a scope entered and concluded (sync)", _per_call(enter_and_conclude)),
        ("a concluded scope rolled up", _per_call(lambda: recorder.rollups.add(concluded))),
        (
            "a Redis command's span",
            _per_call(lambda: _hooks._redis_done(recording, perf_counter(), ("GET", "item:7"))),
        ),
        (
            "a cache lookup (a hit)",
            _per_call(lambda: _hooks._cache_lookup(recording, "item:7", _Loaded(), perf_counter())),  # type: ignore[arg-type]
        ),
    ]
    current_scope.reset(token)
    answer, steps = _per_request(_answer), _per_request(_four_steps)
    observed_answer = _per_request(ASGIMiddleware(_answer, profiler, server_timing=False))
    observed_steps = _per_request(ASGIMiddleware(_four_steps, profiler, server_timing=False))
    rows += [
        ("the ASGI middleware, an app that answers at once", observed_answer - answer),
        ("the same, the app awaiting four times", observed_steps - steps),
    ]
    rows += _statement_events()
    lines = [
        "observe's per-request pieces (CPU us, best of 5, this thread)",
        "",
        "| piece | us |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {us:.2f} |" for name, us in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
    sys.exit(0)
