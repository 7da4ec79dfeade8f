"""``ReplicaSet``: a primary and its streaming replicas behind one router, probed by threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine

from ._base import ReplicaSetBase, is_connection_failure, log
from ._config import AllUnhealthy, Consistency, Policy, SessionOptions, TokenMode
from ._errors import RoutingConfigError
from ._probe import PROBE_SQL, describe_error, parse_probe_row, probe_engine_options
from ._replayed import write_position
from ._router import RoutedNode
from ._tokens import context_box


class ReplicaSet(ReplicaSetBase):
    """A primary ``Engine`` and replica ``Engine``\\ s, with lag probes, ejection and balancing.

    >>> replicas = ReplicaSet(primary=engine, replicas=[r1, r2], max_lag_s=1.0)  # doctest: +SKIP
    >>> Session = routed_sessionmaker(replicas)                                  # doctest: +SKIP

    A thread per node probes role, WAL position and lag every ``probe_interval_s`` (jittered
    ±20%) with ``probe_timeout_s`` timeouts. A replica is ejected after ``eject_after`` bad
    probes (error, or lag over ``max_lag_s`` / ``max_lag_bytes``) and readmitted after
    ``readmit_after`` good ones. ``on_all_unhealthy``: ``"primary"`` (reads fall back to the
    primary), ``"least_lagged"`` (the least lagged reachable replica) or ``"error"``.
    """

    def __init__(
        self,
        primary: Engine,
        replicas: Sequence[Engine],
        *,
        max_lag_s: float = 1.0,
        max_lag_bytes: int | None = None,
        policy: Policy = "least_in_flight",
        weights: Sequence[float] | None = None,
        probe_interval_s: float = 0.5,
        probe_timeout_s: float = 1.0,
        eject_after: int = 2,
        readmit_after: int = 2,
        on_all_unhealthy: AllUnhealthy = "primary",
        start: bool = True,
    ) -> None:
        engines = [primary, *replicas]
        if any(isinstance(e, AsyncEngine) for e in engines):
            raise RoutingConfigError(
                "ReplicaSet takes sync Engines: use AsyncReplicaSet for create_async_engine()"
            )
        if not all(isinstance(e, Engine) for e in engines):
            raise RoutingConfigError(
                "ReplicaSet(primary=..., replicas=[...]) takes SQLAlchemy Engines "
                "(create_engine(url)); got " + ", ".join(type(e).__name__ for e in engines)
            )
        super().__init__(
            (primary, primary),
            [(e, e) for e in replicas],
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
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._probe_engines = {
            node.name: create_engine(
                node.bind.url, **probe_engine_options(node.bind.url, probe_timeout_s)
            )
            for node in self._router.nodes
        }
        if start:
            self.start()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ReplicaSet:
        """Probe every node once (replicas in parallel), then keep probing in the background.

        Returns once every replica that answered is judged (follows the primary, or not):
        the set serves replica reads from its first use.
        """
        if self._threads:
            return self
        self._stop.clear()
        # The writer first: a replica is compared with a primary position read before its own
        # (so it can be seen to follow the primary from its first probe on).
        writer = self._router.writer
        self._probe_once(writer)
        replicas = [n for n in self._router.nodes if n is not writer]
        for node in replicas:
            self._start_monitor(node)
        deadline = time.monotonic() + self._router.config.probe_timeout_s + 1.0
        while time.monotonic() < deadline and any(n.health.last_probe_at is None for n in replicas):
            time.sleep(0.005)
        if self._router.awaiting_primary():
            # A replica replayed writes made after the writer's first probe: only a primary
            # position read after its own tells whether it follows (else it would wait for the
            # writer's next probe, its reads going to the primary meanwhile).
            self._probe_once(writer)
        self._start_monitor(writer)
        return self

    def _start_monitor(self, node: RoutedNode) -> None:
        thread = threading.Thread(
            target=self._monitor, args=(node,), name=f"hotpath-probe-{node.name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def close(self) -> None:
        """Stop the probes and remove hotpath's hooks from the engines (they stay usable)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._router.config.probe_timeout_s + 2.0)
        self._threads.clear()
        for engine in self._probe_engines.values():
            engine.dispose()
        self._unhook()

    def __enter__(self) -> ReplicaSet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def probe_now(self) -> None:
        """Probe every node once, now, in this thread (the background probes keep running)."""
        for node in self._router.nodes:
            self._probe_once(node)

    @property
    def primary(self) -> Engine:
        """The engine writes go to now (follows a promotion seen by the probes)."""
        engine: Engine = self._router.writer.bind
        return engine

    @property
    def replicas(self) -> list[Engine]:
        return [n.bind for n in self._router.nodes[1:]]

    # -- Core routing ----------------------------------------------------------------------

    @contextmanager
    def connect(
        self,
        readonly: bool = False,
        *,
        consistency: Consistency = "read_your_writes",
        mode: TokenMode = "fast",
        wait_timeout_s: float = 0.5,
    ) -> Iterator[Connection]:
        """A Core ``Connection``: the primary, or with ``readonly=True`` a routed replica.

        On the primary, the WAL position is read when the block ends (one round trip), so a
        transaction committed in it advances this context's read-your-writes token.
        A replica that cannot be reached is ejected and the next choice is tried once.
        ``readonly=True`` is read-only wherever it is served: on the primary (a fallback,
        ``"strong"``, ``primary_only()``) its transactions are ``READ ONLY`` too.
        """
        options = SessionOptions(consistency, mode, wait_timeout_s)
        if not readonly:
            with self._router.writer.bind.connect() as conn:
                try:
                    yield conn
                finally:
                    self._capture_token(conn)
            return
        token = context_box().position_for(self._router.server)
        route = self._route_read(options, token)
        try:
            conn = self._reading_bind(route.node).connect()
        except Exception as exc:
            if not is_connection_failure(exc) or route.node is self._router.writer:
                raise
            self._note_read_failure(route.node, exc)
            route = self._route_read(options, token, exclude=[route.node])
            conn = self._reading_bind(route.node).connect()
        with conn:
            yield conn

    def _capture_token(self, conn: Connection) -> None:
        # Read at the end of every primary block: a commit in it is then covered (reading the
        # position after a rollback only makes the token conservative).
        if conn.invalidated or conn.closed:
            return
        try:
            position = write_position(conn)
            conn.rollback()
        except Exception as exc:  # the commit itself succeeded; only the token is lost
            log.warning(
                "hotpath.routing: no WAL position after a primary block: %s",
                exc,
            )
            return
        if position is not None:
            context_box().advance(position, self._router.server)

    # -- probes ----------------------------------------------------------------------------

    def _monitor(self, node: RoutedNode) -> None:
        while not self._stop.is_set():
            self._probe_once(node)
            self._stop.wait(self._jittered_interval())

    def _probe_once(self, node: RoutedNode) -> None:
        started = time.monotonic()
        self._router.probe_started(node, started)
        try:
            with self._probe_engines[node.name].connect() as conn:
                row = conn.exec_driver_sql(PROBE_SQL).fetchone()
            result = parse_probe_row(row)
        except Exception as exc:
            reason = f"probe failed: {describe_error(exc)}"
            self._router.record_failure(node, reason, time.monotonic(), at_once=False)
            return
        elapsed, limit = time.monotonic() - started, self._router.config.probe_timeout_s
        if elapsed > limit:  # a server that hung, then answered: as the async twin's timeout
            reason = f"probe timed out ({elapsed:.1f}s > probe_timeout_s={limit:g})"
            self._router.record_failure(node, reason, time.monotonic(), at_once=False)
            return
        for promoted in self._apply_probe(node, result, started, time.monotonic()):
            promoted.bind.dispose()
