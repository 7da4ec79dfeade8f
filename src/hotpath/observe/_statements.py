"""How observe times each SQL statement: SQLAlchemy's ``DialectEvents`` (``do_execute``,
``do_executemany``, ``do_execute_no_params``), one handler per engine, shared by every
profiler instrumenting it.

Why not ``before_cursor_execute``/``after_cursor_execute``: an engine with a listener of the
``ConnectionEvents`` makes each of its connections dispatch every connection event
(``engine_connect``, ``begin``, ``commit``...) through a joined dispatcher that the
connection builds, event by event (``Connection.__init__`` joins the engine's dispatch;
SQLAlchemy 2.0 and 2.1). On a session with one statement that cost more than the statement's
own bookkeeping (docs/benchmarks.md, observe). The dialect events are dispatched from the
dialect, only where a statement runs: the handler runs the statement itself, between two
clock reads, and returns ``True`` (what the events' documentation provides for), so there is
no second event to pair with the first.

Outside a scope, on an engine no profiler watches, and during a checkout (the statements the
dialect runs on a new connection: server version, settings; set-up, not the request's
queries, which the cursor events never saw either), the handler returns ``False`` at once
and SQLAlchemy runs the statement as it would have. A failed statement is not recorded (its
exception goes on as the driver raised it), as with the cursor events. A ``do_execute``
listener of another library registered before this one that runs the statement itself hides
it from observe; one registered after is not called inside observe's scopes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine

from ._scope import current_scope

# what a profiler is told of each statement run inside a scope:
# (cursor, statement, parameters, context, executemany, started, ended)
StatementListener = Callable[[Any, str, Any, Any, bool, float, float], None]

_lock = threading.Lock()
# per engine's dialect, by id (a WeakKeyDictionary lookup makes a weak reference, in Python,
# per statement): the dialect itself, held so that its id is nobody else's while the entry
# lasts (unwatch removes it), and the profilers watching it; and those watching every engine
_watching: dict[int, tuple[Dialect, list[StatementListener]]] = {}
_everywhere: list[StatementListener] = []


def _run(
    listeners: list[StatementListener],
    execute: Callable[..., None],
    arguments: tuple[Any, ...],
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> bool:
    """Run the statement (``execute(*arguments)``, the dialect's own method) between two
    clock reads and tell ``listeners``; ``True``: it ran, SQLAlchemy must not run it again."""
    started = perf_counter()
    execute(*arguments)
    ended = perf_counter()
    for listener in listeners:
        listener(arguments[0], statement, parameters, context, executemany, started, ended)
    return True


def _listening(context: Any) -> list[StatementListener] | None:
    """The profilers to tell of a statement about to run, or None: run it as SQLAlchemy
    would (outside a scope, on a new connection's set-up, on an engine nobody watches)."""
    scope = current_scope.get()
    if scope is None or scope.timeline.connecting or context is None:
        return None
    entry = _watching.get(id(context.dialect))
    if entry is None:
        return _everywhere or None
    return [*_everywhere, *entry[1]] if _everywhere else entry[1]


# The handlers, one per event: each runs the dialect's own method for it. The two with
# parameters share a signature and differ by the method and ``executemany``.


def _with_parameters(method: str, executemany: bool) -> Callable[..., bool]:
    def handler(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        listeners = _listening(context)
        if listeners is None:
            return False
        arguments = (cursor, statement, parameters, context)
        execute = getattr(context.dialect, method)
        return _run(listeners, execute, arguments, statement, parameters, context, executemany)

    return handler


def _do_execute_no_params(cursor: Any, statement: str, context: Any) -> bool:
    listeners = _listening(context)
    if listeners is None:
        return False
    arguments = (cursor, statement, context)
    return _run(
        listeners, context.dialect.do_execute_no_params, arguments, statement, (), context, False
    )


_HANDLERS: dict[str, Callable[..., bool]] = {
    "do_execute": _with_parameters("do_execute", executemany=False),
    "do_executemany": _with_parameters("do_executemany", executemany=True),
    "do_execute_no_params": _do_execute_no_params,
}


def watch(engine: Engine | None, listener: StatementListener) -> None:
    """Tell ``listener`` of each statement ``engine`` runs inside a scope (every engine's
    when ``engine`` is None). Idempotent."""
    with _lock:
        if engine is None:
            if listener not in _everywhere:
                if not _everywhere:
                    _listen(Engine)
                _everywhere.append(listener)
            return
        entry = _watching.get(id(engine.dialect))
        if entry is None:
            _listen(engine)
            entry = _watching[id(engine.dialect)] = (engine.dialect, [])
        listeners = entry[1]
        if listener not in listeners:
            listeners.append(listener)


def unwatch(engine: Engine | None, listener: StatementListener) -> None:
    with _lock:
        if engine is None:
            if listener in _everywhere:
                _everywhere.remove(listener)
                if not _everywhere:
                    _unlisten(Engine)
            return
        entry = _watching.get(id(engine.dialect))
        if entry is None or listener not in entry[1]:
            return
        entry[1].remove(listener)
        if not entry[1]:
            del _watching[id(engine.dialect)]
            _unlisten(engine)


def is_watched(engine: Engine, listener: StatementListener) -> bool:
    entry = _watching.get(id(engine.dialect))
    return listener in _everywhere or (entry is not None and listener in entry[1])


def _listen(target: Any) -> None:
    for name, handler in _HANDLERS.items():
        event.listen(target, name, handler)


def _unlisten(target: Any) -> None:
    for name, handler in _HANDLERS.items():
        if event.contains(target, name, handler):
            event.remove(target, name, handler)
