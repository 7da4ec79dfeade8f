"""A replica set used the moment it is created, and what it must not inherit or turn into:
replicas judged by the end of start(), read-only callers read-only on the primary too, tokens
of another database server ignored, data-modifying CTEs on the primary. Each test fails on the
code before the fix (the order-dependent failures of the whole routing directory)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, column, create_engine, select, table, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hotpath.routing import (
    AsyncReplicaSet,
    ReplicaSet,
    ReplicaWriteError,
    async_routed_sessionmaker,
    parse_lsn,
    routed_sessionmaker,
    use_token,
)
from hotpath.routing._router import RoutedNode
from hotpath.stack import LocalStack
from hotpath.testing import ModuleDatabase, ServerStack

from ._helpers import PORT, VALUE
from .conftest import Engines

# Probes only at start within a test: no later probe settles what start() left open.
NO_LATER_PROBE_S = 60.0
BUMP = text("UPDATE counters SET value = value + 1 WHERE id = 2")
ON_PRIMARY_READ_ONLY = r"read-only connection \(readonly=True\), served by the primary"
COUNTERS = table("counters", column("id"), column("value"))
SEGMENT = 16 << 20


def _replica_ports(engines: Engines) -> set[int]:
    return {e.url.port for e in engines.replicas if e.url.port is not None}


@pytest.fixture
def bump_function(engines: Engines) -> None:
    with engines.primary.begin() as conn:
        conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION bump(n int) RETURNS int LANGUAGE sql AS "
                "'UPDATE counters SET value = value + 1 WHERE id = n RETURNING value'"
            )
        )


@pytest.fixture
def one_connection_primary(hotpath_db: ModuleDatabase) -> Iterator[Engine]:
    """A primary pool of one connection: a read-only caller's connection is the writer's next."""
    engine = create_engine(hotpath_db.url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.fixture
async def async_engines(
    hotpath_db: ModuleDatabase,
) -> AsyncIterator[tuple[AsyncEngine, list[AsyncEngine]]]:
    primary = create_async_engine(hotpath_db.async_url, pool_size=1, max_overflow=0)
    replica_engines = [
        create_async_engine(r.url_for(hotpath_db.name, driver="asyncpg"))
        for r in hotpath_db.replicas
    ]
    yield primary, replica_engines
    for engine in [primary, *replica_engines]:
        await engine.dispose()


# -- start(): every replica judged before the set is used --------------------------------------


def _probes_with_a_write_before_the_replicas(
    write_and_replay: Callable[[], None],
) -> Callable[[ReplicaSet, RoutedNode], None]:
    """``ReplicaSet._probe_once`` where the replicas' first probes see a write made after every
    primary position read so far (the primary wrote while the set started)."""
    real_probe = ReplicaSet._probe_once
    lock = threading.Lock()
    wrote: list[bool] = []
    writer_probes: list[RoutedNode] = []
    second_writer_probe = threading.Event()

    def probe(self: ReplicaSet, node: RoutedNode) -> None:
        writer = self.router.writer
        if node is writer:
            real_probe(self, node)
            writer_probes.append(node)
            if len(writer_probes) == 2:
                second_writer_probe.set()
            return
        if any(t.name == f"hotpath-probe-{writer.name}" for t in self._threads):
            # The writer is probed alongside the replicas' first probes: that position, too,
            # is read before the write (a probe that begins before a replica's answer cannot
            # judge it).
            assert second_writer_probe.wait(timeout=30)
        with lock:
            if not wrote:
                write_and_replay()
                wrote.append(True)
        real_probe(self, node)

    return probe


def test_a_fresh_set_serves_replica_reads_at_once_after_writes_during_its_start(
    hotpath_stack: ServerStack, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_and_replay() -> None:
        with engines.primary.begin() as conn:
            conn.execute(BUMP)
        hotpath_stack.wait_replicas_caught_up(timeout=30)

    monkeypatch.setattr(
        ReplicaSet, "_probe_once", _probes_with_a_write_before_the_replicas(write_and_replay)
    )
    with ReplicaSet(
        engines.primary, engines.replicas, max_lag_s=30.0, probe_interval_s=NO_LATER_PROBE_S
    ) as replicas:
        # Used at once: before the fix both replicas waited for the writer's next probe
        # ("not yet compared with the primary") and every read went to the primary.
        report = {n.name: n for n in replicas.status()}
        assert all(n.healthy for n in report.values()), report
        with replicas.connect(readonly=True) as conn:
            assert conn.execute(PORT).scalar_one() in _replica_ports(engines)
        assert replicas.stats().get("fallback: no healthy replica", 0) == 0


async def test_async_a_fresh_set_serves_replica_reads_at_once_after_writes_during_its_start(
    hotpath_stack: ServerStack,
    engines: Engines,
    async_engines: tuple[AsyncEngine, list[AsyncEngine]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary, replica_engines = async_engines
    real_probe = AsyncReplicaSet._probe_once
    lock = asyncio.Lock()
    wrote: list[bool] = []

    async def probe(self: AsyncReplicaSet, node: RoutedNode) -> None:
        if node is not self.router.writer:
            async with lock:
                if not wrote:
                    async with primary.begin() as conn:
                        await conn.execute(BUMP)
                    await asyncio.to_thread(hotpath_stack.wait_replicas_caught_up, timeout=30)
                    wrote.append(True)
        await real_probe(self, node)

    monkeypatch.setattr(AsyncReplicaSet, "_probe_once", probe)
    async with AsyncReplicaSet(
        primary, replica_engines, max_lag_s=30.0, probe_interval_s=NO_LATER_PROBE_S
    ) as replicas:
        report = {n.name: n for n in replicas.status()}
        assert all(n.healthy for n in report.values()), report
        async with replicas.connect(readonly=True) as conn:
            assert (await conn.execute(PORT)).scalar_one() in _replica_ports(engines)
        assert replicas.stats().get("fallback: no healthy replica", 0) == 0


# -- readonly=True is read-only on the primary too ---------------------------------------------


@pytest.mark.usefixtures("bump_function")
def test_a_read_only_caller_served_by_the_primary_cannot_write(
    engines: Engines, one_connection_primary: Engine
) -> None:
    with engines.primary.connect() as conn:
        before = conn.execute(VALUE, {"id": 2}).scalar_one()
    with ReplicaSet(
        one_connection_primary, engines.replicas, probe_interval_s=NO_LATER_PROBE_S
    ) as replicas:
        primary_port = one_connection_primary.url.port
        with (
            replicas.primary_only(),
            replicas.connect(readonly=True) as conn,
            pytest.raises(ReplicaWriteError, match=ON_PRIMARY_READ_ONLY),
        ):
            assert conn.execute(PORT).scalar_one() == primary_port
            conn.execute(BUMP)
        with (
            replicas.connect(readonly=True, consistency="strong") as conn,
            pytest.raises(ReplicaWriteError, match=ON_PRIMARY_READ_ONLY),
        ):
            conn.execute(text("SELECT bump(2)"))  # a write no classifier sees
        ReadOnly = routed_sessionmaker(replicas, readonly=True, consistency="strong")
        with ReadOnly() as session, pytest.raises(ReplicaWriteError, match=ON_PRIMARY_READ_ONLY):
            session.execute(text("SELECT bump(2)"))
        # The pool's one connection is writable again for the writer.
        with use_token(None) as box, replicas.connect() as conn:
            conn.execute(BUMP)
            conn.commit()
        assert box.token is not None
    with engines.primary.connect() as conn:
        assert conn.execute(VALUE, {"id": 2}).scalar_one() == before + 1


@pytest.mark.usefixtures("bump_function")
async def test_async_a_read_only_caller_served_by_the_primary_cannot_write(
    engines: Engines, async_engines: tuple[AsyncEngine, list[AsyncEngine]]
) -> None:
    primary, replica_engines = async_engines
    with engines.primary.connect() as conn:
        before = conn.execute(VALUE, {"id": 2}).scalar_one()
    async with AsyncReplicaSet(
        primary, replica_engines, probe_interval_s=NO_LATER_PROBE_S
    ) as replicas:
        with replicas.primary_only(), pytest.raises(ReplicaWriteError, match=ON_PRIMARY_READ_ONLY):
            async with replicas.connect(readonly=True) as conn:
                assert (await conn.execute(PORT)).scalar_one() == primary.url.port
                await conn.execute(BUMP)
        with pytest.raises(ReplicaWriteError, match=ON_PRIMARY_READ_ONLY):
            async with replicas.connect(readonly=True, consistency="strong") as conn:
                await conn.execute(text("SELECT bump(2)"))
        ReadOnly = async_routed_sessionmaker(replicas, readonly=True, consistency="strong")
        with pytest.raises(ReplicaWriteError, match=ON_PRIMARY_READ_ONLY):
            async with ReadOnly() as session:
                await session.execute(text("SELECT bump(2)"))
        async with replicas.connect() as conn:  # the pool's one connection: writable again
            await conn.execute(BUMP)
            await conn.commit()
    with engines.primary.connect() as conn:
        assert conn.execute(VALUE, {"id": 2}).scalar_one() == before + 1


# -- a data-modifying CTE goes to the primary ---------------------------------------------------


def test_a_select_with_a_data_modifying_cte_runs_on_the_primary(
    engines: Engines, hotpath_stack: ServerStack
) -> None:
    with ReplicaSet(engines.primary, engines.replicas, max_lag_s=30.0) as replicas:
        Session = routed_sessionmaker(replicas)
        bumped = (
            update(COUNTERS)
            .where(COUNTERS.c.id == 2)
            .values(value=COUNTERS.c.value + 1)
            .returning(COUNTERS.c.value)
            .cte("bumped")
        )
        with use_token(None) as box, Session() as session:
            # Before the fix: sent to a replica as a read, refused there (ReplicaWriteError).
            written = session.execute(select(bumped.c.value)).scalar_one()
            session.commit()
            assert (
                session.execute(select(COUNTERS.c.value).where(COUNTERS.c.id == 2)).scalar_one()
                == written
            )
        assert box.token is not None  # the write raised the token like any other


# -- a token is the position of one database server --------------------------------------------


def _position(server: Any) -> int:
    return parse_lsn(server.current_lsn())


@pytest.mark.slow
@pytest.mark.faults
def test_a_write_on_another_server_is_not_this_servers_token(
    hotpath_stack: ServerStack, engines: Engines
) -> None:
    """One context writes on the session stack, then reads and writes on a fresh stack whose WAL
    is far behind: the first server's position is no token there (before the fix every read
    carried it: checked, capped at the primary's position, 20 of 20 'real' tokens capped)."""
    with LocalStack(replicas=1, redis=False) as other:
        other_primary = create_engine(other.primary.url)
        other_replicas = [create_engine(r.url) for r in other.replicas]
        with other_primary.begin() as conn:
            conn.execute(text("CREATE TABLE counters (id int PRIMARY KEY, value int NOT NULL)"))
            conn.execute(text("INSERT INTO counters VALUES (1, 0), (2, 0)"))
        other.wait_replicas_caught_up(timeout=30)
        # The session stack's WAL well ahead of the fresh stack's (a switch ends a segment).
        while _position(hotpath_stack.primary) <= _position(other.primary) + SEGMENT:
            with engines.primary.begin() as conn:
                conn.execute(BUMP)
            hotpath_stack.primary.scalar("SELECT pg_switch_wal()")
        with (
            use_token(None),
            ReplicaSet(engines.primary, engines.replicas, max_lag_s=30.0) as here,
            ReplicaSet(other_primary, other_replicas, max_lag_s=30.0) as there,
        ):
            with routed_sessionmaker(here)() as session:
                session.execute(BUMP)
                session.commit()
            There = routed_sessionmaker(there)
            other_replica_port = other.replicas[0].port
            with There() as session:  # nothing written there: a plain replica read
                assert session.execute(PORT).scalar_one() == other_replica_port
            stale = 0
            for _ in range(20):
                with There() as session:
                    written = session.execute(
                        text("UPDATE counters SET value = value + 1 WHERE id = 2 RETURNING value")
                    ).scalar_one()
                    session.commit()
                    stale += session.execute(VALUE, {"id": 2}).scalar_one() != written
            assert stale == 0
            stats = there.stats()
            assert stats.get("tokens capped", 0) == 0, stats
            assert stats.get("fallback: token not replayed", 0) <= 20, stats
        for engine in [other_primary, *other_replicas]:
            engine.dispose()
