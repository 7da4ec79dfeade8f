"""What :class:`ReplicaSet` and :class:`AsyncReplicaSet` share: options, engine hooks, status.

The engine hooks (SQLAlchemy pool and dialect events on the user's engines) make replica
connections read-only and turn a replica's read-only refusal into :class:`ReplicaWriteError`.
No per-statement connection event is used: those switch on SQLAlchemy's event dispatch for
every execute. In-flight counts come from the pools themselves. ``close()`` removes the hooks.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext

from ._config import RoutingConfig, SessionOptions
from ._errors import ReplicaWriteError
from ._health import ProbeResult
from ._probe import READ_ONLY_SQL, note_read_failure
from ._reads import route_read
from ._router import READONLY_OPTION, NodeReport, Route, RoutedNode, RouterCore

log = logging.getLogger("hotpath.routing")

_READ_ONLY_SQLSTATE = "25006"


class ReplicaSetBase:
    """Shared state and behaviour of the sync and async replica sets (no I/O of its own)."""

    def __init__(
        self,
        primary: tuple[Any, Engine],
        replicas: Sequence[tuple[Any, Engine]],
        config: RoutingConfig,
    ) -> None:
        self._router = RouterCore(primary, replicas, config)
        self._hooks: list[tuple[Any, str, Callable[..., Any]]] = []
        for node in self._router.nodes:
            self._hook_node(node)

    @property
    def router(self) -> RouterCore:
        return self._router

    @contextmanager
    def primary_only(self) -> Iterator[None]:
        """Send every read of this block (sessions and ``connect``) to the primary."""
        with self._router.primary_only():
            yield

    def status(self) -> list[NodeReport]:
        """Per node: role, writer, healthy, lag (s, bytes), replayed LSN, in flight, why ejected."""
        return self._router.status()

    def stats(self) -> dict[str, int]:
        """Counters: ejections, failovers, fallbacks to the primary (by reason), token checks."""
        return dict(self._router.counters)

    def _route_read(
        self,
        options: SessionOptions,
        token: int | None,
        exclude: Sequence[RoutedNode] = (),
    ) -> Route:
        """Choose the node for a read now, checking ``token`` on the spot when needed.

        Sync I/O through the nodes' sync engines: also correct inside an ``AsyncSession``'s
        greenlet, where SQLAlchemy awaits it.
        """
        return route_read(self._router, options, token, exclude)

    def _reading_bind(self, node: RoutedNode) -> Engine:
        """Where a read-only caller's read on ``node`` connects: a replica refuses writes by
        itself (its connections are read-only); on the primary the transaction is made so."""
        return node.readonly_bind if node is self._router.writer else node.bind

    def _reading_engine(self, node: RoutedNode) -> Any:
        """As :meth:`_reading_bind`, in the user's engine's form (``AsyncEngine`` for the async
        twin)."""
        return node.readonly_engine if node is self._router.writer else node.engine

    def _note_read_failure(self, node: RoutedNode, exc: BaseException) -> None:
        note_read_failure(self._router, node, exc)

    # -- probes (the I/O is the subclass's) -------------------------------------------------

    def _jittered_interval(self) -> float:
        return self._router.config.probe_interval_s * random.uniform(0.8, 1.2)

    def _apply_probe(
        self, node: RoutedNode, result: ProbeResult, started: float, now: float
    ) -> list[RoutedNode]:
        """Record a probe; returns nodes whose pools must be emptied (they became primaries)."""
        was = node.health.role
        elected = self._router.record_probe(node, result, now, started)
        if elected is not None:
            log.warning("hotpath.routing: writes now go to %s (%s)", elected.name, elected.address)
        promoted = was == "replica" and node.health.role == "primary"
        # Pooled connections of a promoted replica were opened read-only: drop them.
        return [node] if promoted else []

    # -- engine hooks ----------------------------------------------------------------------

    def _listen(self, target: Any, name: str, fn: Callable[..., Any]) -> None:
        event.listen(target, name, fn)
        self._hooks.append((target, name, fn))

    def _unhook(self) -> None:
        for target, name, fn in self._hooks:
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        self._hooks.clear()

    def _hook_node(self, node: RoutedNode) -> None:
        health = node.health
        router = self._router

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            if node is router.writer or health.role == "primary":
                return
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(READ_ONLY_SQL)
            finally:
                cursor.close()
            dbapi_connection.commit()  # a SET in a transaction that is rolled back is undone

        def on_error(context: ExceptionContext) -> BaseException | None:
            orig = context.original_exception
            state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
            if state != _READ_ONLY_SQLSTATE:
                return None
            verb = (context.statement or "").split(None, 1)[0:1]
            write = verb[0].upper() if verb else "statement"
            if node is not router.writer:
                return ReplicaWriteError(
                    f"a write ({write}) reached {node.name} ({node.address}), a read-only "
                    "replica: run it on the primary, inside `with replicas.primary_only():`, "
                    "in a Session(writing=True), or through replicas.connect() without "
                    "readonly=True"
                )
            conn = context.connection
            if conn is None or not conn.get_execution_options().get(READONLY_OPTION):
                return None  # the user's own read-only transaction: their error stands
            return ReplicaWriteError(
                f"a write ({write}) on a read-only connection (readonly=True), served by "
                f"the primary {node.name} ({node.address}): open the Session or "
                "replicas.connect() without readonly=True to write"
            )

        self._listen(node.bind, "connect", on_connect)
        self._listen(node.bind, "handle_error", on_error)
