"""A primary and replicas under read load: WAL the primary has not flushed is not replica lag,
and reads in flight on replicas are not serialized by the router (real servers)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from hotpath.routing import ReplicaSet, routed_sessionmaker
from hotpath.routing._lsn import parse_lsn

from ._helpers import PORT, eventually
from .conftest import Engines

# Real lag must stay under it while other test workers write to the same cluster on a busy
# 2-core machine (a CI run saw 0.66 s); unflushed WAL counted as lag passes it within the
# test's wait of twice as long.
MAX_LAG_S = 1.0
FLUSH = text("SELECT pg_current_wal_flush_lsn()::text")


def _leave_unflushed_wal(primary: Engine) -> int:
    """WAL on the primary that nothing flushes: what a read that prunes a page leaves
    (PRUNE_ON_ACCESS records of a transaction rolled back, as a Session ends its reads), made
    deterministic with a non-transactional message. Returns the end of that WAL."""
    with primary.connect() as conn:
        conn.execute(text("SELECT pg_logical_emit_message(false, 'hotpath-test', 'read WAL')"))
        end = conn.execute(text("SELECT pg_current_wal_insert_lsn()::text")).scalar_one()
        conn.rollback()  # a transaction without an xid: its WAL is not queued for a flush
    return parse_lsn(end)


def _flushed(primary: Engine) -> int:
    with primary.connect() as conn:
        return parse_lsn(conn.execute(FLUSH).scalar_one())


def _probes(replicas: ReplicaSet) -> dict[str, int]:
    return {n.name: n.health.probes for n in replicas.router.nodes}


def _wait_probes(replicas: ReplicaSet, times: int) -> None:
    """Until every node has answered ``times`` more probes."""
    before = _probes(replicas)
    eventually(
        lambda: all(n >= before[name] + times for name, n in _probes(replicas).items()),
        10,
        f"{times} more probes of each node",
    )


def test_wal_the_primary_has_not_flushed_is_no_replica_lag(engines: Engines) -> None:
    replica_ports = {e.url.port for e in engines.replicas}
    with ReplicaSet(
        engines.primary, engines.replicas, max_lag_s=MAX_LAG_S, probe_interval_s=0.05
    ) as replicas:
        try:
            for _attempt in range(3):
                unflushed = _leave_unflushed_wal(engines.primary)
                _wait_probes(replicas, 1)  # the primary's position after that WAL is known
                # Measured against the unflushed end, the replicas' lag now passes max_lag_s;
                # then every node is probed eject_after (2) + 1 more times.
                time.sleep(MAX_LAG_S * 2)
                _wait_probes(replicas, 3)
                if _flushed(engines.primary) < unflushed:
                    break  # still unflushed all along: the case holds
                # something else committed meanwhile (autovacuum): that flushed it; again
            else:
                pytest.fail("the primary flushed the test's WAL within a second, 3 times")
            report = {n.name: n for n in replicas.status()}
            assert report["replica1"].healthy, report["replica1"].why_ejected
            assert report["replica2"].healthy, report["replica2"].why_ejected
            assert replicas.stats().get("ejections", 0) == 0
            Session = routed_sessionmaker(replicas, consistency="eventual")
            for _ in range(10):
                with Session() as session:
                    assert session.execute(PORT).scalar_one() in replica_ports
        finally:
            with engines.primary.begin() as conn:  # a commit flushes it: later tests start clean
                conn.execute(text("UPDATE counters SET value = value WHERE id = 1"))


def test_reads_in_flight_on_replicas_are_not_serialized(engines: Engines) -> None:
    """N threads' reads are on the replicas at once while the probes run, and a probe of
    every node returns meanwhile: no router lock is held across a read or a probe."""
    readers = 6
    sleep_sql = "SELECT pg_sleep(60) -- hotpath in-flight test"
    in_flight = text(
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query = :sql"
    ).bindparams(sql=sleep_sql)
    with ReplicaSet(engines.primary, engines.replicas, probe_interval_s=0.05) as replicas:
        Session = routed_sessionmaker(replicas, consistency="eventual")
        errors: list[BaseException] = []

        def read() -> None:
            try:
                with Session() as session:
                    session.execute(text(sleep_sql))
            except OperationalError as exc:  # cancelled by the test once counted
                if "canceling statement" not in str(exc):
                    errors.append(exc)
            except BaseException as exc:
                errors.append(exc)

        def pids() -> list[tuple[Engine, int]]:
            found = []
            for engine in engines.replicas:
                with engine.connect() as conn:
                    found += [(engine, pid) for pid in conn.execute(in_flight).scalars()]
            return found

        threads = [threading.Thread(target=read) for _ in range(readers)]
        for thread in threads:
            thread.start()
        try:
            eventually(lambda: len(pids()) == readers, 30, f"{readers} reads in flight at once")
            assert sum(n.in_flight for n in replicas.status()[1:]) == readers
            replicas.probe_now()  # every node probed while the reads hold their connections
            assert len(pids()) == readers
        finally:
            for engine, pid in pids():
                with engine.connect() as conn:
                    conn.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})
            for thread in threads:
                thread.join(30)
        assert not errors, errors
        assert all(not thread.is_alive() for thread in threads)
