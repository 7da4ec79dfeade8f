"""``AsyncReplicaSet``: the asyncio twin of :class:`ReplicaSet`, probed by one task per node."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ._base import ReplicaSetBase, is_connection_failure, log
from ._config import AllUnhealthy, Consistency, Policy, SessionOptions, TokenMode
from ._errors import RoutingConfigError
from ._health import ProbeResult
from ._probe import (
    PROBE_SQL,
    REPLAYED_SQL,
    WRITE_POSITION_SQL,
    describe_error,
    parse_position,
    parse_probe_row,
    probe_engine_options,
)
from ._replayed import wait_sql
from ._router import Route, RoutedNode
from ._tokens import context_box


class AsyncReplicaSet(ReplicaSetBase):
    """A primary ``AsyncEngine`` and replica ``AsyncEngine``\\ s; see :class:`ReplicaSet`.

    Probing needs a running loop: use ``async with AsyncReplicaSet(...) as replicas`` or
    ``await replicas.start()``. Until the first probe, reads go to the primary.
    """

    def __init__(
        self,
        primary: AsyncEngine,
        replicas: Sequence[AsyncEngine],
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
    ) -> None:
        engines = [primary, *replicas]
        if not all(isinstance(e, AsyncEngine) for e in engines):
            raise RoutingConfigError(
                "AsyncReplicaSet takes AsyncEngines (create_async_engine(url)): "
                "use ReplicaSet for sync Engines"
            )
        super().__init__(
            (primary, primary.sync_engine),
            [(e, e.sync_engine) for e in replicas],
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
        self._tasks: list[asyncio.Task[None]] = []
        self._probe_engines: dict[str, AsyncEngine] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> AsyncReplicaSet:
        """Probe every node once (replicas concurrently), then keep probing in background tasks.

        Returns once every replica that answered is judged, as :meth:`ReplicaSet.start`.
        """
        if self._tasks:
            return self
        timeout = self._router.config.probe_timeout_s
        for node in self._router.nodes:
            url = node.bind.url
            self._probe_engines[node.name] = create_async_engine(
                url, **probe_engine_options(url, timeout)
            )
        # The writer first: a replica is compared with a primary position read before its own
        # (so it can be seen to follow the primary from its first probe on).
        writer = self._router.writer
        await self._probe_once(writer)
        await asyncio.gather(*(self._probe_once(n) for n in self._router.nodes if n is not writer))
        if self._router.awaiting_primary():  # as ReplicaSet.start: judge every replica now
            await self._probe_once(writer)
        self._tasks = [
            asyncio.create_task(self._monitor(n), name=f"hotpath-probe-{n.name}")
            for n in self._router.nodes
        ]
        return self

    async def close(self) -> None:
        """Stop the probes and remove hotpath's hooks from the engines (they stay usable)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for engine in self._probe_engines.values():
            await engine.dispose()
        self._probe_engines.clear()
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
        """Probe every node once, now (the background probes keep running)."""
        await asyncio.gather(*(self._probe_once(n) for n in self._router.nodes))

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
        """An ``AsyncConnection``: the primary, or with ``readonly=True`` a routed replica
        (read-only on the primary too, as :meth:`ReplicaSet.connect`)."""
        options = SessionOptions(consistency, mode, wait_timeout_s)
        if not readonly:
            async with self._router.writer.engine.connect() as conn:
                try:
                    yield conn
                finally:
                    await self._capture_token(conn)
            return
        token = context_box().position_for(self._router.server)
        route = await self._route_read_async(options, token)
        try:
            conn = await self._reading_engine(route.node).connect()
        except Exception as exc:
            if not is_connection_failure(exc) or route.node is self._router.writer:
                raise
            self._note_read_failure(route.node, exc)
            route = await self._route_read_async(options, token, exclude=[route.node])
            conn = await self._reading_engine(route.node).connect()
        try:
            yield conn
        finally:
            await conn.close()

    def _reading_engine(self, node: RoutedNode) -> AsyncEngine:
        """The async twin of ``_reading_bind``."""
        engine: AsyncEngine = node.readonly_engine if node is self._router.writer else node.engine
        return engine

    async def _route_read_async(
        self, options: SessionOptions, token: int | None, exclude: Sequence[RoutedNode] = ()
    ) -> Route:
        """The async twin of ``_route_read`` (same decision, same on-the-spot check)."""
        router = self._router
        route = router.choose_read(token, options.consistency, exclude)
        if not route.verify:
            return route
        assert token is not None
        router.counters["token checks"] += 1
        position: int | None = None
        try:
            async with route.node.engine.connect() as conn:
                position = parse_position((await conn.exec_driver_sql(REPLAYED_SQL)).scalar())
                if position is None or position < token:
                    token = await self._cap_token_async(token)
                if (position is None or position < token) and options.mode == "wait":
                    router.counters["token waits"] += 1
                    await conn.exec_driver_sql(wait_sql(token, options.wait_timeout_s))
                    position = parse_position((await conn.exec_driver_sql(REPLAYED_SQL)).scalar())
                await conn.rollback()
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            self._note_read_failure(route.node, exc)
        return router.settle(route, position, token)

    async def _cap_token_async(self, token: int) -> int:
        """The async twin of ``_cap_token``."""
        known = self._router.history.latest
        if known is not None and token <= known:
            return token
        writer = self._router.writer
        try:
            async with writer.engine.connect() as conn:
                result = await conn.exec_driver_sql(WRITE_POSITION_SQL)
                primary = parse_position(result.scalar())
                await conn.rollback()
        except Exception as exc:  # the read falls back to the primary, as an uncapped token's
            log.debug("hotpath.routing: no primary position to cap a token with: %s", exc)
            return token
        if primary is None:
            return token
        return self._router.cap_token(token, writer, primary, time.monotonic())

    async def _capture_token(self, conn: AsyncConnection) -> None:
        sync = conn.sync_connection
        if sync is None or sync.invalidated or sync.closed:
            return
        try:
            position = parse_position((await conn.exec_driver_sql(WRITE_POSITION_SQL)).scalar())
            await conn.rollback()
        except Exception as exc:
            log.warning(
                "hotpath.routing: no WAL position after a primary block: %s",
                exc,
            )
            return
        if position is not None:
            context_box().advance(position, self._router.server)

    # -- probes ----------------------------------------------------------------------------

    async def _monitor(self, node: RoutedNode) -> None:
        while True:
            await asyncio.sleep(self._jittered_interval())
            await self._probe_once(node)

    async def _probe_once(self, node: RoutedNode) -> None:
        started = time.monotonic()
        self._router.probe_started(node, started)
        try:
            result = await asyncio.wait_for(
                self._query_probe(node), self._router.config.probe_timeout_s
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = f"probe failed: {describe_error(exc)}"
            if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
                reason = f"probe timed out after {self._router.config.probe_timeout_s:g}s"
            self._router.record_failure(node, reason, time.monotonic(), at_once=False)
            return
        for promoted in self._apply_probe(node, result, started, time.monotonic()):
            await promoted.engine.dispose()

    async def _query_probe(self, node: RoutedNode) -> ProbeResult:
        async with self._probe_engines[node.name].connect() as conn:
            row = (await conn.exec_driver_sql(PROBE_SQL)).fetchone()
        return parse_probe_row(row)
