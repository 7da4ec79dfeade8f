"""What :class:`ReplicaSet` and :class:`AsyncReplicaSet` share: options, engine hooks, status.

The engine hooks (SQLAlchemy pool and dialect events on the user's engines) make replica
connections read-only and turn a replica's read-only refusal into :class:`ReplicaWriteError`.
No per-statement connection event is used: those switch on SQLAlchemy's event dispatch for
every execute. In-flight counts come from the pools themselves. ``close()`` removes the hooks.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from ._config import AllUnhealthy, Policy, SessionOptions, make_config
from ._errors import ReplicaWriteError
from ._health import ProbeResult
from ._probe import READ_ONLY_SQL, describe_error
from ._replayed import replayed_on, write_position
from ._router import READONLY_OPTION, NodeReport, Route, RoutedNode, RouterCore

log = logging.getLogger("hotpath.routing")

_READ_ONLY_SQLSTATE = "25006"
_SHUTDOWN_STATES = {"57P01", "57P02", "57P03"}


def is_connection_failure(exc: BaseException) -> bool:
    """A node could not be reached or dropped the connection (safe to retry a read elsewhere).

    Driver-neutral: SQLAlchemy's disconnect flag; then the SQLSTATE of the driver's error or
    its cause (class 08 connection exceptions, 57P01-3 shutdowns; any other SQLSTATE, such as
    57014 for a statement timeout, means the server answered: not a dead node); then OSError;
    then an operational or interface error that carries no SQLSTATE (no server answer at all).
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    seen: BaseException | None = exc
    for _ in range(4):  # the wrapper, the adapted driver error, the driver's own error
        if seen is None:
            break
        if isinstance(seen, OSError):
            return True
        state = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(state, str) and state:
            return state.startswith("08") or state in _SHUTDOWN_STATES
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return isinstance(exc, (OperationalError, InterfaceError))


class ReplicaSetBase:
    """Shared state and behaviour of the sync and async replica sets (no I/O of its own)."""

    def __init__(
        self,
        primary: tuple[Any, Engine],
        replicas: Sequence[tuple[Any, Engine]],
        *,
        max_lag_s: float,
        max_lag_bytes: int | None,
        policy: Policy,
        weights: Sequence[float] | None,
        probe_interval_s: float,
        probe_timeout_s: float,
        eject_after: int,
        readmit_after: int,
        on_all_unhealthy: AllUnhealthy,
    ) -> None:
        config = make_config(
            len(replicas),
            max_lag_s=max_lag_s,
            max_lag_bytes=max_lag_bytes,
            policy=policy,
            weights=weights,
            probe_interval_s=probe_interval_s,
            probe_timeout_s=probe_timeout_s,
            eject_after=eject_after,
            readmit_after=readmit_after,
            on_all_unhealthy=on_all_unhealthy,
        )
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
        route = self._router.choose_read(token, options.consistency, exclude)
        if not route.verify:
            return route
        assert token is not None
        wait = options.wait_timeout_s if options.mode == "wait" else None
        position = None
        try:
            position, token = replayed_on(self._router, route.node, token, wait, self._cap_token)
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            self._note_read_failure(route.node, exc)
        return self._router.settle(route, position, token)

    def _reading_bind(self, node: RoutedNode) -> Engine:
        """Where a read-only caller's read on ``node`` connects: a replica refuses writes by
        itself (its connections are read-only); on the primary the transaction is made so."""
        return node.readonly_bind if node is self._router.writer else node.bind

    def _cap_token(self, token: int) -> int:
        """``token``, or the primary's insert position if the token is beyond it (see
        :meth:`RouterCore.cap_token`). Asks the primary only when the token is beyond the last
        position known from it; sync I/O, like ``_route_read``."""
        known = self._router.history.latest
        if known is not None and token <= known:
            return token
        writer = self._router.writer
        try:
            primary = write_position(writer.bind)
        except Exception as exc:  # the read falls back to the primary, as an uncapped token's
            log.debug("hotpath.routing: no primary position to cap a token with: %s", exc)
            return token
        if primary is None:
            return token
        return self._router.cap_token(token, writer, primary, time.monotonic())

    def _note_read_failure(self, node: RoutedNode, exc: BaseException) -> None:
        self._router.counters["read failures"] += 1
        self._router.record_failure(
            node, f"read failed: {describe_error(exc)}", time.monotonic(), at_once=True
        )

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
