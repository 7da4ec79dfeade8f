"""Live-session checks with real sessions held open in threads (released in finally)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from hotpath.doctor import Thresholds, diagnose
from hotpath.testing import ModuleDatabase

from .conftest import connect


@pytest.fixture(scope="module")
def db(hotpath_db: ModuleDatabase) -> str:
    with connect(hotpath_db.url) as conn:
        conn.execute("CREATE TABLE jobs (id int PRIMARY KEY, state text)")
        conn.execute("INSERT INTO jobs VALUES (1, 'new'), (2, 'new')")
    return hotpath_db.url


FAST = Thresholds(idle_in_transaction_s=0.5, long_running_s=0.5, lock_wait_s=0.0)


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)


@contextmanager
def background(url: str, sql: str) -> Iterator[psycopg.Connection]:
    """Run ``sql`` on its own connection in a thread until the block ends (then cancel it)."""
    conn = connect(url)
    thread = threading.Thread(target=lambda: _swallow(conn, sql), daemon=True)
    thread.start()
    try:
        yield conn
    finally:
        conn.cancel_safe()
        thread.join(10)
        conn.close()


def _swallow(conn: psycopg.Connection, sql: str) -> None:
    with contextlib.suppress(psycopg.Error):  # cancelled by the test's cleanup
        conn.execute(sql)


def test_idle_in_transaction_session_is_flagged_then_gone(db: str) -> None:
    holder = connect(db)
    try:
        holder.execute("BEGIN")
        holder.execute("UPDATE jobs SET state = 'taken' WHERE id = 1")
        time.sleep(1.0)
        [finding] = diagnose(db, ["idle_in_transaction"], thresholds=FAST).findings
        assert finding.evidence["idle_s"] >= 0.5
        assert "UPDATE jobs SET state = $1 WHERE id = $2" in finding.message  # redacted
        assert f"pg_terminate_backend({holder.info.backend_pid})" in (finding.fix or "")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert diagnose(db, ["idle_in_transaction"], thresholds=FAST).findings == []


def test_long_running_query(db: str) -> None:
    with background(db, "SELECT pg_sleep(30)"):
        time.sleep(1.0)
        findings = diagnose(db, ["long_running"], thresholds=FAST).findings
        assert any("pg_sleep" in f.message and f.evidence["running_s"] >= 0.5 for f in findings)
    assert diagnose(db, ["long_running"], thresholds=FAST).findings == []


def test_lock_wait_names_the_blocking_chain(db: str) -> None:
    root = connect(db)
    try:
        root.execute("BEGIN")
        root.execute("UPDATE jobs SET state = 'a' WHERE id = 2")
        with (
            background(db, "UPDATE jobs SET state = 'b' WHERE id = 2") as waiter,
            background(db, "LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"),
        ):
            wait_until(lambda: len(diagnose(db, ["lock_waits"], thresholds=FAST).findings) >= 2)
            findings = diagnose(db, ["lock_waits"], thresholds=FAST).findings
            direct = next(f for f in findings if f.target == f"pid {waiter.info.backend_pid}")
            assert direct.evidence["root_pid"] == root.info.backend_pid
            assert f"pg_cancel_backend({root.info.backend_pid})" in (direct.fix or "")
            assert any(f.evidence["chain_length"] >= 2 for f in findings)
    finally:
        root.execute("ROLLBACK")
        root.close()
    assert diagnose(db, ["lock_waits"], thresholds=FAST).findings == []


def test_connections_against_max_connections(db: str) -> None:
    with connect(db) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()
    assert row is not None
    usable, before = row
    extra = 12
    # a limit the open sessions stay under, which the extra sessions push past
    ratio = (before + extra - 2) / usable
    limits = Thresholds(connections_ratio=ratio)
    assert diagnose(db, ["connections"], thresholds=limits).findings == []
    held = [connect(db) for _ in range(extra)]
    try:
        [finding] = diagnose(db, ["connections"], thresholds=limits).findings
        assert finding.evidence["connections"] >= before + extra
        assert finding.evidence["usable"] == usable
    finally:
        for conn in held:
            conn.close()
