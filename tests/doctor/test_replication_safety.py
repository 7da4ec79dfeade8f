"""Replication checks on the session stack's real replicas, and the safety rules."""

from __future__ import annotations

import time

import psycopg
import pytest

from hotpath.doctor import DoctorError, Thresholds, diagnose
from hotpath.doctor._session import Session
from hotpath.stack import LocalStack
from hotpath.testing import ModuleDatabase, ServerStack

from .conftest import connect

LAG = Thresholds(
    replication_lag_bytes=256 * 1024, replication_lag_s=3600, slot_retained_bytes=512 * 1024
)


def test_replication_lag_of_a_paused_replica(
    hotpath_db: ModuleDatabase, hotpath_local_stack: LocalStack
) -> None:
    replica = hotpath_local_stack.replicas[0]
    assert_caught_up(hotpath_db.url, hotpath_local_stack)
    replica.pause_replay()
    try:
        with connect(hotpath_db.url) as conn:
            conn.execute(
                "CREATE TABLE lag_fill AS SELECT md5(g::text) FROM generate_series(1, 20000) g"
            )
        findings = diagnose(hotpath_db.url, ["replication_lag"], thresholds=LAG).findings
        # the other replica may show a moment's lag too; the paused one must be there
        paused = [f for f in findings if f.target.startswith(f"replica {replica.name} ")]
        assert len(paused) == 1
        assert paused[0].evidence["lag_bytes"] >= 256 * 1024
    finally:
        replica.resume_replay()
    assert_caught_up(hotpath_db.url, hotpath_local_stack)


def assert_caught_up(url: str, stack: LocalStack) -> None:
    """The healthy control: once replay catches up the check clears. The primary learns the
    replay position from the replicas' status messages (every 1 s), so poll briefly."""
    stack.wait_replicas_caught_up(timeout=30)
    deadline = time.monotonic() + 10
    while diagnose(url, ["replication_lag"], thresholds=LAG).findings:
        assert time.monotonic() < deadline, "replication_lag still flagged after catch-up"
        time.sleep(0.3)


def test_inactive_slot_holding_wal(hotpath_db: ModuleDatabase, hotpath_stack: ServerStack) -> None:
    with connect(hotpath_db.url) as conn:
        conn.execute("SELECT pg_create_physical_replication_slot('doctor_forgotten', true)")
        try:
            conn.execute(
                "CREATE TABLE slot_fill AS SELECT md5(g::text) FROM generate_series(1, 20000) g"
            )
            hotpath_stack.wait_replicas_caught_up(timeout=30)
            findings = diagnose(hotpath_db.url, ["replication_slots"], thresholds=LAG).findings
            # the replicas' own (active, caught-up) slots are healthy
            assert [f.target for f in findings] == ["slot doctor_forgotten"]
            assert findings[0].severity.value == "critical"
        finally:
            conn.execute("SELECT pg_drop_replication_slot('doctor_forgotten')")


def test_session_is_read_only_with_timeouts(hotpath_db: ModuleDatabase) -> None:
    with Session(hotpath_db.url, statement_timeout_ms=300, lock_timeout_ms=200) as session:
        row = session.row(
            "SELECT current_setting('statement_timeout') AS st,"
            " current_setting('lock_timeout') AS lt,"
            " current_setting('transaction_read_only') AS ro"
        )
        assert (row["st"], row["lt"], row["ro"]) == ("300ms", "200ms", "on")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            session.rows("CREATE TABLE doctor_wrote (id int)")
        with pytest.raises(psycopg.errors.QueryCanceled):
            session.rows("SELECT pg_sleep(2)")


def test_works_under_pg_monitor_and_names_grants(hotpath_db: ModuleDatabase) -> None:
    with connect(hotpath_db.url) as conn:
        conn.execute("DROP ROLE IF EXISTS doctor_monitor")
        conn.execute("CREATE ROLE doctor_monitor LOGIN PASSWORD 'pw' IN ROLE pg_monitor")
        conn.execute("DROP ROLE IF EXISTS doctor_nobody")
        conn.execute("CREATE ROLE doctor_nobody LOGIN PASSWORD 'pw'")
    primary = hotpath_db.primary
    try:
        for role in ("doctor_monitor", "doctor_nobody"):
            url = f"postgresql://{role}:pw@{primary.host}:{primary.port}/{hotpath_db.name}"
            report = diagnose(url)  # never raises for lack of privileges
            skipped = {s.check: s for s in report.skipped}
            assert (
                skipped["table_bloat"].grant
                == f"GRANT pg_read_all_data TO {role};  -- or GRANT SELECT ON ALL "
                f"TABLES/SEQUENCES IN SCHEMA public TO {role};"
            )
            assert "missing_indexes" in report.checks_run
            if role == "doctor_monitor":
                assert "lock_waits" in report.checks_run
                assert "replication_lag" in report.checks_run
            else:
                assert skipped["lock_waits"].grant == "GRANT pg_monitor TO doctor_nobody;"
    finally:
        with connect(hotpath_db.url) as conn:
            conn.execute("DROP ROLE doctor_monitor")
            conn.execute("DROP ROLE doctor_nobody")


def test_bad_url_and_unreachable_server_are_one_line() -> None:
    with pytest.raises(DoctorError, match="not a PostgreSQL URL"):
        diagnose("mysql://x@y/z")
    with pytest.raises(
        DoctorError, match=r"cannot connect to postgresql://u:\*\*\*@127\.0\.0\.1:1/db"
    ) as info:
        diagnose("postgresql://u:secret@127.0.0.1:1/db")
    assert "secret" not in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(DoctorError, match="unknown check nope"):
        diagnose("postgresql://u@127.0.0.1:1/db", ["nope"])


def test_on_a_replica_primary_only_checks_say_where_to_run(hotpath_db: ModuleDatabase) -> None:
    report = diagnose(hotpath_db.replica_urls[0])
    skipped = {s.check: s for s in report.skipped}
    assert set(skipped) == {"replication_lag", "replication_slots"}
    assert "standby" in skipped["replication_slots"].reason
    assert "unused_indexes" in report.checks_run  # replicas keep their own usage counters
