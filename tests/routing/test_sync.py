"""Sync routing on real streaming replicas: lag ejection, read-your-writes, faults, stray writes."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import column, create_engine, func, select, table, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from hotpath.routing import (
    NoHealthyNodeError,
    ReplicaSet,
    ReplicaWriteError,
    WSGITokenMiddleware,
    current_token,
    routed_sessionmaker,
    use_token,
)
from hotpath.stack import LocalStack
from hotpath.testing import ServerStack

from ._helpers import PORT, RYW_ROUNDS, VALUE, Counter, eventually, signal_all
from .conftest import Engines


@pytest.fixture
def replicas(engines: Engines) -> Iterator[ReplicaSet]:
    with ReplicaSet(
        engines.primary, engines.replicas, max_lag_s=0.3, probe_interval_s=0.1, probe_timeout_s=1.0
    ) as replica_set:
        yield replica_set


COUNTERS = table("counters", column("id"), column("value"))


def _bump(session: Session, counter: int) -> int:
    value = session.execute(
        text("UPDATE counters SET value = value + 1 WHERE id = :id RETURNING value"),
        {"id": counter},
    ).scalar_one()
    session.commit()
    return int(value)


def _healthy(replicas: ReplicaSet, name: str) -> bool:
    return next(n for n in replicas.status() if n.name == name).healthy


def test_lagging_replica_is_ejected_and_readmitted(
    hotpath_stack: ServerStack, engines: Engines, replicas: ReplicaSet, resume_all: None
) -> None:
    lagging = hotpath_stack.replicas[0]
    ports = {engines.replicas[0].url.port: "replica1", engines.replicas[1].url.port: "replica2"}
    Session = routed_sessionmaker(replicas, consistency="eventual")
    lagging.pause_replay()
    try:
        with engines.primary.connect() as conn:  # keep the primary writing: real, growing lag

            def lagged() -> bool:
                conn.execute(text("UPDATE counters SET value = value + 1 WHERE id = 2"))
                conn.commit()
                return not _healthy(replicas, "replica1")

            eventually(lagged, 10, "replica1 ejected for lag")
        report = next(n for n in replicas.status() if n.name == "replica1")
        assert report.why_ejected is not None
        assert report.why_ejected.startswith("lagging")
        assert report.replay_paused is True
        assert report.ejections == 1
        served = set()
        for _ in range(40):
            with Session() as session:
                served.add(ports[session.execute(PORT).scalar_one()])
        assert served == {"replica2"}  # an ejected replica receives no reads
    finally:
        lagging.resume_replay()
    eventually(lambda: _healthy(replicas, "replica1"), 10, "replica1 readmitted")
    served = set()
    for _ in range(40):
        with Session() as session:
            served.add(ports[session.execute(PORT).scalar_one()])
    assert served == {"replica1", "replica2"}


def test_read_your_writes_never_stale_while_eventual_is(
    hotpath_stack: ServerStack, engines: Engines, replicas: ReplicaSet, resume_all: None
) -> None:
    """600 write-then-read iterations, replay paused and resumed at random on both replicas
    (HOTPATH_FAULT_ROUNDS=2000 for a longer run)."""
    ryw = routed_sessionmaker(replicas, consistency="read_your_writes")
    eventual = routed_sessionmaker(replicas, consistency="eventual")
    rng = random.Random(5)
    violations = {"read_your_writes": 0, "eventual": 0}
    paused = [False, False]
    before = {n.name: n.reads for n in replicas.status()}
    try:
        for i in range(RYW_ROUNDS):
            if i % 50 == 0:
                which = rng.randrange(2)
                server = hotpath_stack.replicas[which]
                server.resume_replay() if paused[which] else server.pause_replay()
                paused[which] = not paused[which]
            name, maker = ("read_your_writes", ryw) if i % 2 else ("eventual", eventual)
            with use_token(None), maker() as session:  # a fresh user each time
                written = _bump(session, 1)
                seen = session.execute(VALUE, {"id": 1}).scalar_one()
                violations[name] += seen != written
    finally:
        for which, server in enumerate(hotpath_stack.replicas):
            if paused[which]:
                server.resume_replay()
    after = {n.name: n.reads for n in replicas.status()}
    replica_reads = sum(after[n] - before[n] for n in ("replica1", "replica2"))
    assert violations["read_your_writes"] == 0
    assert violations["eventual"] > 0  # the naive path really serves stale reads here
    # and read_your_writes did not just send everything to the primary
    assert replica_reads > RYW_ROUNDS // 2


def test_token_is_taken_after_commit_and_checked_per_replica(
    hotpath_stack: ServerStack, engines: Engines, replicas: ReplicaSet, resume_all: None
) -> None:
    """One replica caught up does not unstick reads for a replica that has not (GitLab #413203)."""
    Session = routed_sessionmaker(replicas)
    behind = hotpath_stack.replicas[0]
    caught_up_port = engines.replicas[1].url.port
    behind.pause_replay()
    with use_token(None) as box:
        with Session() as session:
            written = _bump(session, 1)
        assert box.token is not None
        assert current_token() == box.token
        hotpath_stack.wait_replicas_caught_up(timeout=10, replicas=[hotpath_stack.replicas[1]])
        replicas.probe_now()  # both replicas admitted, one of them has not replayed the token
        for _ in range(30):
            with Session() as session:
                assert session.execute(VALUE, {"id": 1}).scalar_one() == written
                assert session.execute(PORT).scalar_one() == caught_up_port


def test_writes_locking_reads_and_writing_sessions_use_the_primary(
    engines: Engines, replicas: ReplicaSet
) -> None:
    Session = routed_sessionmaker(replicas, consistency="eventual")
    primary_port = engines.primary.url.port
    with Session() as session:
        assert session.execute(PORT).scalar_one() != primary_port
    with Session() as session:
        locked = select(text("inet_server_port()")).select_from(text("counters")).with_for_update()
        assert session.execute(locked).first()[0] == primary_port  # type: ignore[index]
    with Session() as session:
        session.execute(
            update(COUNTERS).where(COUNTERS.c.id == 2).values(value=COUNTERS.c.value + 1)
        )
        assert session.execute(PORT).scalar_one() == primary_port  # after a write: same txn
    with Session(writing=True) as session:
        assert session.execute(PORT).scalar_one() == primary_port  # from the first statement
    with replicas.primary_only(), Session() as session:
        assert session.execute(PORT).scalar_one() == primary_port
    strong = routed_sessionmaker(replicas, consistency="strong")
    with strong() as session:
        assert session.execute(PORT).scalar_one() == primary_port


def test_stray_writes_on_replica_connections_raise_the_clear_error(
    engines: Engines, replicas: ReplicaSet
) -> None:
    with engines.primary.connect() as conn:
        before = conn.execute(VALUE, {"id": 2}).scalar_one()
    with (
        pytest.raises(ReplicaWriteError, match=r"read-only replica: run it on the primary"),
        replicas.connect(readonly=True) as conn,
    ):
        conn.execute(text("UPDATE counters SET value = -1 WHERE id = 2"))
    ReadOnly = routed_sessionmaker(replicas, readonly=True)
    with ReadOnly() as session, pytest.raises(ReplicaWriteError, match="readonly=True"):
        session.execute(text("UPDATE counters SET value = -1 WHERE id = 2"))
    with engines.primary.connect() as conn:
        assert conn.execute(VALUE, {"id": 2}).scalar_one() == before  # nothing was written


def test_core_connect_routes_and_carries_the_token(
    hotpath_stack: ServerStack, engines: Engines, replicas: ReplicaSet, resume_all: None
) -> None:
    hotpath_stack.replicas[0].pause_replay()
    hotpath_stack.replicas[1].pause_replay()
    with use_token(None) as box:
        with replicas.connect() as conn:
            written = conn.execute(
                text("UPDATE counters SET value = value + 1 WHERE id = 1 RETURNING value")
            ).scalar_one()
            conn.commit()
        assert box.token is not None
        with replicas.connect(readonly=True) as conn:
            assert conn.execute(VALUE, {"id": 1}).scalar_one() == written
            assert conn.execute(PORT).scalar_one() == engines.primary.url.port
    with replicas.connect(readonly=True, consistency="eventual") as conn:
        assert conn.execute(VALUE, {"id": 1}).scalar_one() < written  # stale without the token


def test_all_unhealthy_policy(
    hotpath_stack: ServerStack, engines: Engines, resume_all: None
) -> None:
    for replica in hotpath_stack.replicas:
        replica.pause_replay()
    with ReplicaSet(
        engines.primary,
        engines.replicas,
        max_lag_s=0.2,
        probe_interval_s=0.1,
        on_all_unhealthy="error",
    ) as strict:
        with engines.primary.connect() as conn:

            def all_lagging() -> bool:
                conn.execute(text("UPDATE counters SET value = value + 1 WHERE id = 2"))
                conn.commit()
                return not any(n.healthy for n in strict.status() if n.name != "primary")

            eventually(all_lagging, 10, "both replicas ejected")
        Strict = routed_sessionmaker(strict, consistency="eventual")
        with (
            pytest.raises(NoHealthyNodeError, match="on_all_unhealthy='error'"),
            Strict() as session,
        ):
            session.execute(PORT)
        assert strict.stats()["ejections"] == 2


def test_token_round_trip_through_wsgi_middleware(
    hotpath_stack: ServerStack, engines: Engines, replicas: ReplicaSet, resume_all: None
) -> None:
    from flask import Flask

    Session = routed_sessionmaker(replicas)
    app = Flask(__name__)

    @app.post("/bump")
    def bump() -> dict[str, int]:
        with Session() as session:
            return {"value": _bump(session, 1)}

    @app.get("/value")
    def value() -> dict[str, int]:
        with Session() as session:
            return {"value": session.execute(VALUE, {"id": 1}).scalar_one()}

    app.wsgi_app = WSGITokenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    for replica in hotpath_stack.replicas:
        replica.pause_replay()
    user, stranger = app.test_client(), app.test_client()
    response = user.post("/bump")
    written = response.json["value"]  # type: ignore[index]
    assert response.headers["x-hotpath-lsn"]
    assert "hotpath_lsn=" in response.headers["set-cookie"]
    assert user.get("/value").json["value"] == written  # type: ignore[index]  # cookie carried it
    assert stranger.get("/value").json["value"] < written  # type: ignore[index]  # no token: stale


@pytest.mark.parametrize("retry_reads", [True, False])
def test_killed_replica_under_concurrent_reads(
    hotpath_local_stack: LocalStack, engines: Engines, replicas: ReplicaSet, retry_reads: bool
) -> None:
    """0 failed reads with the retry; without it (the unprotected path) reads do fail."""
    Session = routed_sessionmaker(replicas, consistency="eventual", retry_reads=retry_reads)
    stop = threading.Event()
    failures: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                with Session() as session:
                    session.execute(VALUE, {"id": 1}).scalar_one()
                reads[0] += 1
            except Exception as exc:
                failures.append(exc)

    def ejections() -> int:
        return next(n for n in replicas.status() if n.name == "replica1").ejections

    victim = hotpath_local_stack.replicas[0]
    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        eventually(lambda: reads[0] >= 20, 30, "20 reads before the kill")
        victim.kill()
        killed_at = reads[0]
        # reads go on (50 more), the dead replica is ejected, and without the retry some fail
        eventually(
            lambda: reads[0] >= killed_at + 50 and ejections() >= 1 and (retry_reads or failures),
            30,
            "50 reads after the kill and the replica ejected",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        victim.start()
        hotpath_local_stack.wait_replicas_caught_up(timeout=30)
    if retry_reads:
        assert failures == []
    else:
        assert failures


@pytest.mark.slow
def test_promotion_moves_writes_to_the_new_primary() -> None:
    from sqlalchemy import create_engine

    with LocalStack(replicas=2, redis=False) as stack:
        primary = create_engine(stack.primary.url)
        replica_engines = [create_engine(r.url) for r in stack.replicas]
        with primary.begin() as conn:
            conn.execute(text("CREATE TABLE t (id int PRIMARY KEY)"))
        stack.wait_replicas_caught_up(timeout=10)
        with ReplicaSet(primary, replica_engines, probe_interval_s=0.1) as replicas:
            Session = routed_sessionmaker(replicas)
            stack.primary.kill()
            stack.replicas[0].promote()
            eventually(
                lambda: replicas.primary is replica_engines[0], 10, "writes follow the promotion"
            )
            with Session() as session:
                session.execute(text("INSERT INTO t VALUES (1)"))
                session.commit()
                assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
            report = {n.name: n for n in replicas.status()}
            assert report["replica1"].writer
            assert report["replica1"].role == "primary"
            assert not report["primary"].healthy
            assert report["primary"].why_ejected is not None
            assert replicas.stats()["failovers"] == 1
        for engine in [primary, *replica_engines]:
            engine.dispose()


def test_token_is_read_on_the_sessions_own_connection(engines: Engines) -> None:
    """With a one-connection primary pool, a second checkout for the token would time out."""
    from sqlalchemy import create_engine

    tight = create_engine(engines.primary.url, pool_size=1, max_overflow=0, pool_timeout=1)
    try:
        with ReplicaSet(tight, engines.replicas) as replicas:
            Session = routed_sessionmaker(replicas)
            with use_token(None) as box, Session() as session:
                _bump(session, 2)
                assert box.token is not None
    finally:
        tight.dispose()


def test_hung_replica_is_avoided_after_the_probe_deadline(
    hotpath_local_stack: LocalStack, engines: Engines
) -> None:
    """A SIGSTOPped replica neither answers nor drops connections: the probe deadline ejects it."""
    import signal

    from hotpath.stack._process import process_family

    hung = hotpath_local_stack.replicas[0]
    assert hung.pid is not None
    healthy_port = engines.replicas[1].url.port
    # The probe deadline is what avoids the hung replica; long enough that the healthy one's
    # probes meet it on a busy machine (with 0.4 s the async twin saw replica2 ejected too).
    with ReplicaSet(
        engines.primary, engines.replicas, probe_interval_s=0.1, probe_timeout_s=2.0
    ) as replicas:
        Session = routed_sessionmaker(replicas, consistency="eventual")
        family = process_family(hung.pid)
        signal_all(family, signal.SIGSTOP)
        try:
            eventually(lambda: not _healthy(replicas, "replica1"), 30, "replica1 avoided")
            report = next(n for n in replicas.status() if n.name == "replica1")
            assert (report.why_ejected or "").startswith("probe unanswered")
            for _ in range(20):
                with Session() as session:
                    assert session.execute(PORT).scalar_one() == healthy_port
        finally:
            signal_all(family, signal.SIGCONT)
        eventually(lambda: _healthy(replicas, "replica1"), 30, "replica1 back after SIGCONT")


# -- found in review: each fails without its fix ------------------------------------------


def test_a_read_after_pending_changes_sees_them(engines: Engines, replicas: ReplicaSet) -> None:
    """The default session placed a transaction's first read before SQLAlchemy's autoflush
    sent the pending rows to the primary: the read missed the session's own writes."""
    Session = routed_sessionmaker(replicas, consistency="eventual")
    with Session() as session:
        session.add(Counter(id=900, value=1))
        found = session.scalar(select(func.count()).where(text("id = 900")).select_from(COUNTERS))
        assert found == 1
        assert session.execute(PORT).scalar_one() == engines.primary.url.port
        session.rollback()
    with Session(expire_on_commit=False) as session:
        counter = session.get(Counter, 2)
        assert counter is not None
        session.commit()
        counter.value = -5  # dirty: the next query autoflushes it first
        assert session.scalar(select(Counter.value).where(Counter.id == 2)) == -5
        session.rollback()


def test_a_writing_function_called_on_a_pinned_primary_takes_a_token(
    engines: Engines, replicas: ReplicaSet
) -> None:
    with engines.primary.begin() as conn:
        conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION bump(n int) RETURNS int LANGUAGE sql AS "
                "'UPDATE counters SET value = value + 1 WHERE id = n RETURNING value'"
            )
        )
    Session = routed_sessionmaker(replicas)
    for pinned in ("writing", "primary_only"):
        with use_token(None) as box:
            if pinned == "writing":
                with Session(writing=True) as session:
                    session.execute(text("SELECT bump(1)"))
                    session.commit()
            else:
                with replicas.primary_only(), Session() as session:
                    session.execute(text("SELECT bump(1)"))
                    session.commit()
            assert box.token is not None, pinned  # later reads wait for it


def test_advisory_locks_are_taken_on_the_primary(engines: Engines, replicas: ReplicaSet) -> None:
    """A hot standby grants advisory locks of its own: two sessions on two replicas would
    both get the lock meant to exclude each other."""
    Session = routed_sessionmaker(replicas, consistency="eventual")
    primary_port = engines.primary.url.port
    with Session() as first, Session() as second:
        assert first.scalar(text("SELECT pg_try_advisory_xact_lock(42)")) is True
        assert first.execute(PORT).scalar_one() == primary_port
        assert second.scalar(select(func.pg_try_advisory_xact_lock(42))) is False


def test_a_session_reads_the_token_of_the_context_using_it(
    engines: Engines, replicas: ReplicaSet, hotpath_stack: ServerStack, resume_all: None
) -> None:
    Session = routed_sessionmaker(replicas)
    long_lived = Session()  # made before the use_token() block below
    hotpath_stack.replicas[0].pause_replay()
    hotpath_stack.replicas[1].pause_replay()
    try:
        with use_token(None) as box:
            with Session() as writer:
                written = _bump(writer, 2)
            assert box.token is not None
            with long_lived.begin():  # no replica has the write: the token sends it away
                assert long_lived.execute(VALUE, {"id": 2}).scalar_one() == written
    finally:
        long_lived.close()


def test_a_statement_timeout_is_not_a_dead_replica(engines: Engines) -> None:
    slow = [
        create_engine(e.url, connect_args={"options": "-c statement_timeout=200"})
        for e in engines.replicas
    ]
    with ReplicaSet(engines.primary, slow, probe_interval_s=0.5) as replica_set:
        Session = routed_sessionmaker(replica_set, consistency="eventual")
        with pytest.raises(OperationalError, match="statement timeout"), Session() as session:
            session.execute(select(func.pg_sleep(1))).all()
        assert all(node.healthy for node in replica_set.status())
    for engine in slow:
        engine.dispose()
