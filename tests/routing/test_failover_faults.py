"""Failover to the LESS advanced replica (issue 18, item 2): the other replica is left on the old
timeline, ahead of the new primary. It must get no reads until it follows the new primary."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import Engine, create_engine, text

from hotpath.routing import ReplicaSet, routed_sessionmaker
from hotpath.stack import LocalStack

from ._helpers import PORT, eventually

ROWS_ONLY_THE_OLD_PRIMARY_HAD = 2000
FRESH_WRITES = 150


def _stop_receiving_wal(stack: LocalStack, index: int) -> None:
    """The replica keeps serving but receives no more WAL: it falls behind the other one."""
    replica = stack.replicas[index]
    with replica.connect() as conn:
        conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        conn.execute("SELECT pg_reload_conf()")
    eventually(
        lambda: replica.scalar("SELECT count(*) FROM pg_stat_wal_receiver") == 0,
        10,
        f"{replica.name} stops streaming",
    )


def _fresh_writes_read_back(
    replicas: ReplicaSet, ports: dict[int, str], base: int
) -> tuple[int, int, dict[str, int]]:
    """Write a row, read it back at once through the set: (stale reads, phantom rows, per node)."""
    Session = routed_sessionmaker(replicas)
    Eventual = routed_sessionmaker(replicas, consistency="eventual")
    stale = phantoms = 0
    served: dict[str, int] = {}
    for i in range(FRESH_WRITES):
        row = base + i
        with Session() as session:
            session.execute(text("INSERT INTO t VALUES (:id, 'fresh')"), {"id": row})
            session.commit()
            found = session.execute(text("SELECT count(*) FROM t WHERE id = :id"), {"id": row})
            stale += found.scalar_one() == 0
            port = session.execute(PORT).scalar_one()
            served[ports[port]] = served.get(ports[port], 0) + 1
        with Eventual() as session:  # rows the new primary never had, served from anywhere
            old = session.execute(text("SELECT count(*) FROM t WHERE id < 100000"))
            phantoms += old.scalar_one()
    return stale, phantoms, served


@pytest.mark.faults
@pytest.mark.slow
def test_failover_to_a_lagging_replica_keeps_read_your_writes() -> None:
    with LocalStack(replicas=2, redis=False) as stack:
        primary = create_engine(stack.primary.url)
        replica_engines: list[Engine] = [
            create_engine(r.url, pool_pre_ping=True) for r in stack.replicas
        ]
        with primary.begin() as conn:
            conn.execute(text("CREATE TABLE t (id int PRIMARY KEY, pad text)"))
        stack.wait_replicas_caught_up(timeout=30)
        laggard, ahead = stack.replicas
        _stop_receiving_wal(stack, 0)
        ports = {
            stack.primary.port: "old primary",
            laggard.port: "new primary",
            ahead.port: "ahead",
        }
        with ReplicaSet(primary, replica_engines, probe_interval_s=0.1, max_lag_s=30.0) as replicas:
            with primary.begin() as conn:  # WAL the laggard never receives
                conn.execute(
                    text("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, :n) g"),
                    {"n": ROWS_ONLY_THE_OLD_PRIMARY_HAD},
                )
            ahead_position = stack.primary.current_lsn()
            eventually(lambda: ahead.has_replayed(ahead_position), 30, "ahead replays it")
            stack.primary.kill()
            laggard.promote()
            eventually(lambda: replicas.primary is replica_engines[0], 20, "writes follow")

            stale, phantoms, served = _fresh_writes_read_back(replicas, ports, 100_000)

            report = {n.name: n for n in replicas.status()}
            assert stale == 0, f"{stale} of {FRESH_WRITES} fresh writes read back stale"
            assert phantoms == 0, f"{phantoms} rows the new primary never had were served"
            assert "ahead" not in served
            assert not report["replica2"].healthy
            assert "diverged" in (report["replica2"].why_ejected or "")

            # Rebuilt from the new primary, the replica follows it and serves reads again.
            ahead.stop()
            shutil.rmtree(ahead.datadir)
            ahead.init_replica(laggard)
            ahead.start()
            eventually(
                lambda: next(n for n in replicas.status() if n.name == "replica2").healthy,
                30,
                "the rebuilt replica is readmitted",
            )
            stale, phantoms, served = _fresh_writes_read_back(replicas, ports, 200_000)
            assert stale == 0
            assert phantoms == 0
            assert served.get("ahead", 0) > 0, served
        for engine in [primary, *replica_engines]:
            engine.dispose()
