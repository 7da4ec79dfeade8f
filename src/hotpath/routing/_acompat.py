"""What really differs between the replica set twins, both sides side by side.

``_async_replica_set.py`` and ``_async_reads.py`` are the one source; ``tools/async_to_sync.py``
writes ``_replica_set.py`` and ``_reads.py`` from them, renaming each async name here to its
sync partner (``aspawn`` -> ``spawn``, ...). Everything else is the same code.

- the engines: ``AsyncEngine`` (its sync form for Sessions is ``.sync_engine``) / ``Engine``;
- the probes: a task per node, told to stop by a flag and cancelled by ``close()`` (which
  cuts a probe short) / a daemon thread per node, told to stop by an event and joined;
- a probe's timeout: ``wait_within`` (``hotpath._timeouts``) / a probe that answered too
  late counts as timed out (a thread cannot be interrupted; the probe engine's connect and
  statement timeouts bound it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeAlias, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._timeouts import wait_within
from ._errors import RoutingConfigError
from ._router import RoutedNode

T = TypeVar("T")

log = logging.getLogger("hotpath.routing")

Worker: TypeAlias = threading.Thread
AWorker: TypeAlias = "asyncio.Task[None]"

# What a probe that took too long raises.
PROBE_TIMEOUTS: tuple[type[BaseException], ...] = (TimeoutError,)
APROBE_TIMEOUTS: tuple[type[BaseException], ...] = (asyncio.TimeoutError, TimeoutError)


# -- the engines ---------------------------------------------------------------------------


def check_engines(engines: Sequence[object]) -> None:
    if any(isinstance(e, AsyncEngine) for e in engines):
        raise RoutingConfigError(
            "ReplicaSet takes sync Engines: use AsyncReplicaSet for create_async_engine()"
        )
    if not all(isinstance(e, Engine) for e in engines):
        raise RoutingConfigError(
            "ReplicaSet(primary=..., replicas=[...]) takes SQLAlchemy Engines "
            "(create_engine(url)); got " + ", ".join(type(e).__name__ for e in engines)
        )


def acheck_engines(engines: Sequence[object]) -> None:
    if not all(isinstance(e, AsyncEngine) for e in engines):
        raise RoutingConfigError(
            "AsyncReplicaSet takes AsyncEngines (create_async_engine(url)): "
            "use ReplicaSet for sync Engines"
        )


def bind_of(engine: Engine) -> Engine:
    """What a Session binds to."""
    return engine


def abind_of(engine: AsyncEngine) -> Engine:
    return engine.sync_engine


def connection_of(conn: Connection) -> Connection | None:
    """The sync ``Connection`` (None once an async one is gone), to ask whether it is usable."""
    return conn


def aconnection_of(conn: AsyncConnection) -> Connection | None:
    return conn.sync_connection


# -- the probes ----------------------------------------------------------------------------


class Stop(threading.Event):
    """Set by ``close()``: the probe threads' sleep ends at once and they return."""

    def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``; False if the set is closing."""
        return not self.wait(seconds)


class AStop:
    """The async side: ``close()`` sets it and cancels the probe tasks. The cancellation alone
    does not stop them: before Python 3.12 ``asyncio.wait_for`` (a probe's deadline) loses a
    cancellation that arrives as the awaited probe answers, and that probe task would probe
    on forever, ``close()`` awaiting it. Its next sleep sees the flag instead."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def clear(self) -> None:
        self._set = False

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``; False (at once) if the set is closing."""
        if not self._set:
            await asyncio.sleep(seconds)
        return not self._set


def spawn(run: Callable[[RoutedNode], None], node: RoutedNode, name: str) -> Worker:
    thread = threading.Thread(target=run, args=(node,), name=name, daemon=True)
    thread.start()
    return thread


def aspawn(
    run: Callable[[RoutedNode], Coroutine[Any, Any, None]], node: RoutedNode, name: str
) -> AWorker:
    return asyncio.get_running_loop().create_task(run(node), name=name)


def stop_workers(workers: Sequence[Worker], timeout: float) -> None:
    """Wait up to ``timeout`` for each (already told to stop by ``Stop.set()``)."""
    for thread in workers:
        thread.join(timeout=timeout)


async def astop_workers(workers: Sequence[AWorker], timeout: float) -> None:
    """Cancel each (already told to stop by ``AStop.set()``) and wait up to ``timeout`` for
    them all; one still running then is left to end on its own, and named."""
    for task in workers:
        task.cancel()
    if not workers:
        return
    # asyncio.wait: the caller's own cancellation still reaches it (a ``suppress`` around
    # ``await task`` would swallow that too), and the tasks' cancellations are not raised
    _, running = await asyncio.wait(workers, timeout=timeout)
    for task in running:
        log.warning("hotpath.routing: %s still running %.0fs after close(): left", task, timeout)


def probe_all(
    probe: Callable[[RoutedNode], None], nodes: Sequence[RoutedNode], timeout: float | None
) -> None:
    """Probe ``nodes`` in parallel (a thread each); return when all are done, or after
    ``timeout`` (a hung probe goes on in its thread, bounded by its own timeouts)."""
    threads = [
        threading.Thread(target=probe, args=(n,), name=f"hotpath-first-probe-{n.name}", daemon=True)
        for n in nodes
    ]
    for thread in threads:
        thread.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in threads:
        thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))


async def aprobe_all(
    probe: Callable[[RoutedNode], Awaitable[None]],
    nodes: Sequence[RoutedNode],
    timeout: float | None,
) -> None:
    """Probe ``nodes`` concurrently (each probe has its own timeout: ``timeout`` is moot)."""
    await asyncio.gather(*(probe(n) for n in nodes))


def within(call: Callable[[], T], timeout: float) -> T:
    """``call()``; TimeoutError if it answered after ``timeout`` seconds."""
    started = time.monotonic()
    value = call()
    elapsed = time.monotonic() - started
    if elapsed > timeout:
        raise TimeoutError(f"answered after {elapsed:.1f}s")
    return value


async def awithin(call: Callable[[], Awaitable[T]], timeout: float) -> T:
    """``await call()``, cancelled after ``timeout`` seconds (TimeoutError)."""
    return await wait_within(call(), timeout)
