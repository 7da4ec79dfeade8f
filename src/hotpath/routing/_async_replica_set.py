"""``AsyncReplicaSet``: a primary and its streaming replicas behind one router, with lag
probes, ejection and balancing, on asyncio (one probe task per node).

This module is the one source of both replica sets: ``tools/async_to_sync.py`` writes
``_replica_set.py`` (``ReplicaSet``: sync engines, one probe thread per node) from it
(``make generate``; ``make lint`` fails while that file is stale). What differs between
threads and tasks is in ``_acompat.py``; what needs no I/O is in ``_base.py`` and ``_router.py``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ._acompat import (
    APROBE_TIMEOUTS,
    AStop,
    AWorker,
    abind_of,
    acheck_engines,
    aconnection_of,
    aprobe_all,
    aspawn,
    astop_workers,
    awithin,
)
from ._async_reads import aroute_read
from ._base import ReplicaSetBase, log
from ._config import Consistency, RoutingConfig, RoutingOptions, SessionOptions, TokenMode
from ._health import ProbeResult
from ._probe import (
    PROBE_SQL,
    WRITE_POSITION_SQL,
    describe_error,
    is_connection_failure,
    parse_position,
    parse_probe_row,
    probe_engine_options,
)
from ._router import RoutedNode
from ._tokens import context_box

if TYPE_CHECKING:
    from typing_extensions import Unpack


class AsyncReplicaSet(ReplicaSetBase):
    """A primary ``AsyncEngine`` and replica ``AsyncEngine``\\ s, with lag probes, ejection and
    balancing (see ``docs/routing.md``).

    Every node is probed for its role, WAL position and lag. The options (``max_lag_s``,
    ``policy``, ``probe_interval_s``, ``on_all_unhealthy``, ...) are the fields of
    :class:`RoutingConfig`, given as keywords or as ``config=RoutingConfig(...)`` (keywords
    override its fields); they are validated once, into one frozen object.
    """

    if True:  # ASYNC: probing needs a running loop: `async with` the set or `await start()`

        def __init__(
            self,
            primary: AsyncEngine,
            replicas: Sequence[AsyncEngine],
            *,
            config: RoutingConfig | None = None,
            **options: Unpack[RoutingOptions],
        ) -> None:
            """Until the first probe (``async with`` the set, or ``await start()``), reads go to
            the primary."""
            self._setup(primary, replicas, config, options)

    else:

        def __init__(
            self,
            primary: AsyncEngine,
            replicas: Sequence[AsyncEngine],
            *,
            config: RoutingConfig | None = None,
            start: bool = True,
            **options: Unpack[RoutingOptions],
        ) -> None:
            """``start=True``: probe every node once now (see :meth:`start`)."""
            self._setup(primary, replicas, config, options)
            if start:
                self.start()

    def _setup(
        self,
        primary: AsyncEngine,
        replicas: Sequence[AsyncEngine],
        config: RoutingConfig | None,
        options: RoutingOptions,
    ) -> None:
        acheck_engines([primary, *replicas])
        super().__init__(
            (primary, abind_of(primary)),
            [(e, abind_of(e)) for e in replicas],
            RoutingConfig.build(len(replicas), config, options),
        )
        self._stop = AStop()
        self._tasks: list[AWorker] = []
        # Engines of their own for the probes, so a probe never waits for a pooled connection.
        timeout = self._router.config.probe_timeout_s
        self._probe_engines = {
            node.name: create_async_engine(
                node.bind.url, **probe_engine_options(node.bind.url, timeout)
            )
            for node in self._router.nodes
        }

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> AsyncReplicaSet:
        """Probe every node once (replicas concurrently), then keep probing in the background.

        Returns once every replica that answered is judged (follows the primary, or not):
        the set serves replica reads from its first use.
        """
        if self._tasks:
            return self
        self._stop.clear()
        # The writer first: a replica is compared with a primary position read before its own
        # (so it can be seen to follow the primary from its first probe on).
        writer = self._router.writer
        await self._probe_once(writer)
        replicas = [n for n in self._router.nodes if n is not writer]
        await aprobe_all(self._probe_once, replicas, self._router.config.probe_timeout_s + 1.0)
        if self._router.awaiting_primary():
            # A replica replayed writes made after the writer's first probe: only a primary
            # position read after its own tells whether it follows (else it would wait for the
            # writer's next probe, its reads going to the primary meanwhile).
            await self._probe_once(writer)
        self._tasks = [
            aspawn(self._monitor, node, name=f"hotpath-probe-{node.name}")
            for node in self._router.nodes
        ]
        return self

    async def close(self) -> None:
        """Stop the probes and remove hotpath's hooks from the engines (they stay usable)."""
        self._stop.set()
        await astop_workers(self._tasks, timeout=self._router.config.probe_timeout_s + 2.0)
        self._tasks.clear()
        for engine in self._probe_engines.values():
            await engine.dispose()  # still usable: a set started again reconnects
        self._unhook()

    async def __aenter__(self) -> AsyncReplicaSet:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def probe_now(self) -> None:
        """Probe every node once, now, concurrently (the background probes keep running)."""
        await aprobe_all(self._probe_once, self._router.nodes, None)

    @property
    def primary(self) -> AsyncEngine:
        """The engine writes go to now (follows a promotion seen by the probes)."""
        engine: AsyncEngine = self._router.writer.engine
        return engine

    @property
    def replicas(self) -> list[AsyncEngine]:
        return [n.engine for n in self._router.nodes[1:]]

    # -- Core routing ----------------------------------------------------------------------

    @asynccontextmanager
    async def connect(
        self,
        readonly: bool = False,
        *,
        consistency: Consistency = "read_your_writes",
        mode: TokenMode = "fast",
        wait_timeout_s: float = 0.5,
    ) -> AsyncIterator[AsyncConnection]:
        """A Core connection: the primary, or with ``readonly=True`` a routed replica.

        On the primary, the WAL position is read when the block ends (one round trip), so a
        transaction committed in it advances this context's read-your-writes token.
        A replica that cannot be reached is ejected and the next choice is tried once.
        ``readonly=True`` is read-only wherever it is served: on the primary (a fallback,
        ``"strong"``, ``primary_only()``) its transactions are ``READ ONLY`` too.
        """
        options = SessionOptions(consistency, mode, wait_timeout_s)
        if not readonly:
            async with self._router.writer.engine.connect() as conn:
                try:
                    yield conn
                finally:
                    await self._capture_token(conn)
            return
        token = context_box().position_for(self._router.server)
        route = await aroute_read(self._router, options, token)
        try:
            conn = await self._reading_engine(route.node).connect()
        except Exception as exc:
            if not is_connection_failure(exc) or route.node is self._router.writer:
                raise
            self._note_read_failure(route.node, exc)
            route = await aroute_read(self._router, options, token, exclude=[route.node])
            conn = await self._reading_engine(route.node).connect()
        try:
            yield conn
        finally:
            await conn.close()

    async def _capture_token(self, conn: AsyncConnection) -> None:
        # Read at the end of every primary block: a commit in it is then covered (reading the
        # position after a rollback only makes the token conservative).
        state = aconnection_of(conn)
        if state is None or state.invalidated or state.closed:
            return
        try:
            position = parse_position((await conn.exec_driver_sql(WRITE_POSITION_SQL)).scalar())
            await conn.rollback()
        except Exception as exc:  # the commit itself succeeded; only the token is lost
            log.warning("hotpath.routing: no WAL position after a primary block: %s", exc)
            return
        if position is not None:
            context_box().advance(position, self._router.server)

    # -- probes ----------------------------------------------------------------------------

    async def _monitor(self, node: RoutedNode) -> None:
        while await self._stop.sleep(self._jittered_interval()):
            await self._probe_once(node)

    async def _probe_once(self, node: RoutedNode) -> None:
        started = time.monotonic()
        self._router.probe_started(node, started)
        limit = self._router.config.probe_timeout_s
        try:
            result = await awithin(lambda: self._query_probe(node), limit)
        except Exception as exc:
            if isinstance(exc, APROBE_TIMEOUTS):
                reason = f"probe timed out (probe_timeout_s={limit:g}) {exc}".rstrip()
            else:
                reason = f"probe failed: {describe_error(exc)}"
            self._router.record_failure(node, reason, time.monotonic(), at_once=False)
            return
        for promoted in self._apply_probe(node, result, started, time.monotonic()):
            await promoted.engine.dispose()

    async def _query_probe(self, node: RoutedNode) -> ProbeResult:
        async with self._probe_engines[node.name].connect() as conn:
            row = (await conn.exec_driver_sql(PROBE_SQL)).fetchone()
        return parse_probe_row(row)
