"""The async twins on real streaming replicas (asyncpg): the same guarantees as the sync tests."""

from __future__ import annotations

import asyncio
import random
import warnings
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from hotpath.routing import (
    ASGITokenMiddleware,
    AsyncReplicaSet,
    ReplicaWriteError,
    async_routed_sessionmaker,
    use_token,
)
from hotpath.stack import LocalStack
from hotpath.testing import ModuleDatabase, ServerStack

from ..helpers import eventually_async
from ._helpers import PORT, RYW_ROUNDS, VALUE, signal_all
from .conftest import Engines


@pytest.fixture
async def replicas(engines: Engines, hotpath_db: ModuleDatabase) -> AsyncIterator[AsyncReplicaSet]:
    primary = create_async_engine(hotpath_db.async_url)
    replica_engines = [
        create_async_engine(r.url_for(hotpath_db.name, driver="asyncpg"))
        for r in hotpath_db.replicas
    ]
    replica_set = await AsyncReplicaSet(
        primary, replica_engines, max_lag_s=0.3, probe_interval_s=0.1
    ).start()
    try:
        yield replica_set
    finally:
        # Bounded, so any other hang is named rather than timed out: the ones seen (a CI run
        # after a replica was killed and restarted, a busy-machine run after the replay
        # pause/resume test) were a probe task that lost close()'s cancellation and probed on
        # (test_async_close_stops_a_probe_whose_cancellation_lands_as_it_answers).
        # asyncio.wait_for is no bound here: on its timeout it waits for the cancelled close.
        # The tests' assertions are all made before this point.
        await _bounded(replica_set.close(), "AsyncReplicaSet.close()")
        for engine in [primary, *replica_engines]:
            await _bounded(engine.dispose(), f"dispose of {engine.url.render_as_string()}")


async def _bounded(closing: Coroutine[Any, Any, None], what: str, timeout: float = 20) -> None:
    """Await ``closing`` up to ``timeout``; past it, leave it and warn (a hang seen, named)."""
    task = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()  # not awaited: the hang would be awaited with it
        warnings.warn(f"{what} still running after {timeout}s: left behind", stacklevel=2)


async def _bump(session: AsyncSession, counter: int) -> int:
    result = await session.execute(
        text("UPDATE counters SET value = value + 1 WHERE id = :id RETURNING value"),
        {"id": counter},
    )
    value = int(result.scalar_one())
    await session.commit()
    return value


async def _until(check: object, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


def _port(engine: AsyncEngine) -> int | None:
    return engine.url.port


async def test_async_read_your_writes_never_stale_while_eventual_is(
    hotpath_stack: ServerStack, replicas: AsyncReplicaSet, resume_all: None
) -> None:
    ryw = async_routed_sessionmaker(replicas)
    eventual = async_routed_sessionmaker(replicas, consistency="eventual")
    rng = random.Random(7)
    violations = {"read_your_writes": 0, "eventual": 0}
    paused = [False, False]
    try:
        for i in range(RYW_ROUNDS):
            if i % 50 == 0:
                which = rng.randrange(2)
                server = hotpath_stack.replicas[which]
                await asyncio.to_thread(
                    server.resume_replay if paused[which] else server.pause_replay
                )
                paused[which] = not paused[which]
            name, maker = ("read_your_writes", ryw) if i % 2 else ("eventual", eventual)
            with use_token(None):
                async with maker() as session:
                    written = await _bump(session, 1)
                    seen = (await session.execute(VALUE, {"id": 1})).scalar_one()
            violations[name] += seen != written
    finally:
        for which, server in enumerate(hotpath_stack.replicas):
            if paused[which]:
                server.resume_replay()
    assert violations["read_your_writes"] == 0
    assert violations["eventual"] > 0
    replica_reads = sum(n.reads for n in replicas.status() if n.name != "primary")
    assert replica_reads > RYW_ROUNDS // 2


async def test_async_lagging_replica_is_ejected_and_readmitted(
    hotpath_stack: ServerStack, engines: Engines, replicas: AsyncReplicaSet, resume_all: None
) -> None:
    Session = async_routed_sessionmaker(replicas, consistency="eventual")
    lagging_port = engines.replicas[0].url.port
    await asyncio.to_thread(hotpath_stack.replicas[0].pause_replay)
    try:

        async def ejected() -> bool:
            async with replicas.connect() as conn:
                await conn.execute(text("UPDATE counters SET value = value + 1 WHERE id = 2"))
                await conn.commit()
            return not replicas.status()[1].healthy

        await _until(ejected, 10, "replica1 ejected")
        assert (replicas.status()[1].why_ejected or "").startswith("lagging")
        for _ in range(30):
            async with Session() as session:
                assert (await session.execute(PORT)).scalar_one() != lagging_port
    finally:
        hotpath_stack.replicas[0].resume_replay()

    async def readmitted() -> bool:
        return replicas.status()[1].healthy

    await _until(readmitted, 10, "replica1 readmitted")


async def test_async_stray_writes_raise_the_clear_error(
    engines: Engines, replicas: AsyncReplicaSet
) -> None:
    with engines.primary.connect() as conn:
        before = conn.execute(VALUE, {"id": 2}).scalar_one()
    with pytest.raises(ReplicaWriteError, match="read-only replica"):
        async with replicas.connect(readonly=True) as conn:
            await conn.execute(text("UPDATE counters SET value = -1 WHERE id = 2"))
    ReadOnly = async_routed_sessionmaker(replicas, readonly=True)
    with pytest.raises(ReplicaWriteError, match="readonly=True"):
        async with ReadOnly() as session:
            await session.execute(text("DELETE FROM counters"))
    with engines.primary.connect() as conn:
        assert conn.execute(VALUE, {"id": 2}).scalar_one() == before


async def test_async_token_round_trip_through_asgi_middleware(
    hotpath_stack: ServerStack, replicas: AsyncReplicaSet, resume_all: None
) -> None:
    import httpx
    from fastapi import FastAPI

    Session = async_routed_sessionmaker(replicas)
    api = FastAPI()

    @api.post("/bump")
    async def bump() -> dict[str, int]:
        async with Session() as session:
            return {"value": await _bump(session, 1)}

    @api.get("/value")
    async def value() -> dict[str, int]:
        async with Session() as session:
            return {"value": (await session.execute(VALUE, {"id": 1})).scalar_one()}

    app = ASGITokenMiddleware(api)
    for replica in hotpath_stack.replicas:
        await asyncio.to_thread(replica.pause_replay)
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://app") as user,
        httpx.AsyncClient(transport=transport, base_url="http://app") as stranger,
    ):
        response = await user.post("/bump")
        written = response.json()["value"]
        assert response.headers["x-hotpath-lsn"]
        assert (await user.get("/value")).json()["value"] == written  # the cookie carried it
        assert (await stranger.get("/value")).json()["value"] < written  # no token: stale


@pytest.mark.parametrize("retry_reads", [True, False])
async def test_async_killed_replica_under_concurrent_reads(
    hotpath_local_stack: LocalStack, replicas: AsyncReplicaSet, retry_reads: bool
) -> None:
    """0 failed reads with the retry; without it (the unprotected path) reads do fail."""
    Session = async_routed_sessionmaker(replicas, consistency="eventual", retry_reads=retry_reads)
    failures: list[BaseException] = []
    reads = 0
    stop = asyncio.Event()

    async def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                async with Session() as session:
                    (await session.execute(VALUE, {"id": 1})).scalar_one()
                reads += 1
            except Exception as exc:
                failures.append(exc)

    victim = hotpath_local_stack.replicas[1]
    tasks = [asyncio.create_task(reader()) for _ in range(4)]
    try:
        await eventually_async(lambda: reads >= 20, 30, "20 reads before the kill")
        await asyncio.to_thread(victim.kill)
        killed_at = reads
        # reads go on (50 more), the dead replica is ejected, and without the retry some fail
        await eventually_async(
            lambda: (
                reads >= killed_at + 50
                and replicas.status()[2].ejections >= 1
                and (retry_reads or bool(failures))
            ),
            30,
            "50 reads after the kill and the replica ejected",
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.to_thread(victim.start)
        await asyncio.to_thread(hotpath_local_stack.wait_replicas_caught_up, 30)
    if retry_reads:
        assert failures == []
    else:
        assert failures


@pytest.mark.slow
async def test_async_promotion_moves_writes_to_the_new_primary() -> None:
    stack = await asyncio.to_thread(LocalStack(replicas=1, redis=False).start)
    try:
        primary = create_async_engine(stack.primary.url_for("postgres", driver="asyncpg"))
        replica = create_async_engine(stack.replicas[0].url_for("postgres", driver="asyncpg"))
        async with primary.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id int PRIMARY KEY)"))
        await asyncio.to_thread(stack.wait_replicas_caught_up, 10)
        async with AsyncReplicaSet(primary, [replica], probe_interval_s=0.1) as replicas:
            Session = async_routed_sessionmaker(replicas)
            await asyncio.to_thread(stack.primary.kill)
            await asyncio.to_thread(stack.replicas[0].promote)

            async def promoted() -> bool:
                return replicas.primary is replica

            await _until(promoted, 10, "writes follow the promotion")
            async with Session() as session:
                await session.execute(text("INSERT INTO t VALUES (1)"))
                await session.commit()
                assert (await session.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
            assert replicas.stats()["failovers"] == 1
            assert not replicas.status()[0].healthy
        for engine in (primary, replica):
            await engine.dispose()
    finally:
        await asyncio.to_thread(stack.stop)


async def test_async_hung_replica_is_avoided_after_the_probe_deadline(
    hotpath_local_stack: LocalStack, engines: Engines, hotpath_db: ModuleDatabase
) -> None:
    import signal

    from hotpath.stack._process import process_family

    hung = hotpath_local_stack.replicas[0]
    assert hung.pid is not None
    primary = create_async_engine(hotpath_db.async_url)
    replica_engines = [
        create_async_engine(r.url_for(hotpath_db.name, driver="asyncpg"))
        for r in hotpath_db.replicas
    ]
    family: list[Any] = []
    try:
        # The probe deadline is what avoids the hung replica; long enough that the healthy
        # one's probes meet it on a busy machine (0.4 s did not: replica2 was ejected too and
        # reads went to the primary).
        async with AsyncReplicaSet(
            primary, replica_engines, probe_interval_s=0.1, probe_timeout_s=2.0
        ) as replicas:
            Session = async_routed_sessionmaker(replicas, consistency="eventual")
            family = process_family(hung.pid)  # now: with the probe's backend
            signal_all(family, signal.SIGSTOP)

            async def avoided() -> bool:
                return not replicas.status()[1].healthy

            await _until(avoided, 30, "replica1 avoided")
            assert (replicas.status()[1].why_ejected or "").startswith("probe")
            for _ in range(20):
                async with Session() as session:
                    port = (await session.execute(PORT)).scalar_one()
                    assert port == engines.replicas[1].url.port
            signal_all(family, signal.SIGCONT)

            async def back() -> bool:
                return replicas.status()[1].healthy

            await _until(back, 30, "replica1 back after SIGCONT")
    finally:
        signal_all(family, signal.SIGCONT)
        for engine in [primary, *replica_engines]:
            await engine.dispose()


async def test_async_close_stops_a_probe_whose_cancellation_lands_as_it_answers(
    engines: Engines, hotpath_db: ModuleDatabase
) -> None:
    """close() cancels the probe tasks; a cancellation that reaches a probe in the loop
    iteration its answer came in is lost by ``asyncio.wait_for`` (Python < 3.12 returns the
    answer instead), and the probe must still stop rather than probe on, close() awaiting it
    forever (a hung test teardown under load)."""
    primary = create_async_engine(hotpath_db.async_url)
    replica_engines = [
        create_async_engine(r.url_for(hotpath_db.name, driver="asyncpg"))
        for r in hotpath_db.replicas
    ]
    replica_set = await AsyncReplicaSet(primary, replica_engines, probe_interval_s=0.05).start()
    closing: list[asyncio.Task[None]] = []
    query = replica_set._query_probe

    async def answer_then_close(node: Any) -> Any:
        result = await query(node)
        if not closing:
            # close() runs before this answer is handed to the probe task awaiting it
            closing.append(asyncio.ensure_future(replica_set.close()))
        return result

    replica_set._query_probe = answer_then_close  # type: ignore[method-assign]
    try:
        await eventually_async(lambda: bool(closing), 10, "a probe answered")
        done, _ = await asyncio.wait(closing, timeout=10)
        assert done, "close() still waiting for a probe task after 10 s"
        # stopped, not left behind by close()'s bound on the wait
        probing = [t for t in asyncio.all_tasks() if t.get_name().startswith("hotpath-probe-")]
        assert probing == []
    finally:
        for engine in [primary, *replica_engines]:
            await engine.dispose()
