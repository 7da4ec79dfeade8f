"""PgHero's checks on a real server: each planted problem is flagged, its healthy twin is not."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from hotpath.doctor import Thresholds, diagnose
from hotpath.doctor._session import libpq_url
from hotpath.testing import ModuleDatabase

from .conftest import connect, flush_stats


@pytest.fixture(scope="module")
def db(hotpath_db: ModuleDatabase) -> str:
    with connect(hotpath_db.url) as conn:
        # NOT VALID: a CHECK and a foreign key added without validating; their twins validated
        conn.execute("CREATE TABLE owners (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE ledger (id int, amount int, owner_id int)")
        conn.execute("INSERT INTO ledger VALUES (1, -5, NULL)")
        conn.execute("ALTER TABLE ledger ADD CONSTRAINT positive CHECK (amount > 0) NOT VALID")
        conn.execute(
            "ALTER TABLE ledger ADD CONSTRAINT ledger_owner FOREIGN KEY (owner_id)"
            " REFERENCES owners NOT VALID"
        )
        conn.execute("ALTER TABLE ledger ADD CONSTRAINT small CHECK (amount < 1000) NOT VALID")
        conn.execute("ALTER TABLE ledger VALIDATE CONSTRAINT small")
        conn.execute("ALTER TABLE ledger ADD CONSTRAINT has_id CHECK (id IS NOT NULL)")
        # unused table: written, never read; its twin is read
        conn.execute("CREATE TABLE forgotten (id int)")
        conn.execute("INSERT INTO forgotten SELECT generate_series(1, 100)")
        conn.execute("CREATE TABLE busy (id int)")
        conn.execute("INSERT INTO busy SELECT generate_series(1, 100)")
        conn.execute("SELECT count(*) FROM busy")
        flush_stats(conn)
    return hotpath_db.url


def test_not_valid_constraints(db: str) -> None:
    flagged = {f.target: f for f in diagnose(db, ["invalid_constraints"]).findings}
    # "small" was validated afterwards, "has_id" was valid from the start
    assert flagged.keys() == {"ledger.positive", "ledger.ledger_owner"}
    assert flagged["ledger.positive"].fix is not None
    assert flagged["ledger.positive"].fix.startswith(
        "ALTER TABLE ledger VALIDATE CONSTRAINT positive;"
    )
    assert flagged["ledger.ledger_owner"].evidence["kind"] == "foreign key"
    # the printed fix runs: it fails here because the old row breaks the CHECK, as warned
    with connect(db) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(flagged["ledger.positive"].fix.split(";")[0])


def test_unused_tables(db: str) -> None:
    flagged = {f.target for f in diagnose(db, ["unused_tables"]).findings}
    assert "forgotten" in flagged
    assert "busy" not in flagged  # read once: healthy


@pytest.fixture
def extra_connections(db: str) -> Iterator[list[psycopg.Connection[Any]]]:
    conns = [
        psycopg.connect(libpq_url(db), autocommit=True, application_name=name)
        for name in ["leaky_app"] * 4 + ["tidy_app"]
    ]
    try:
        yield conns
    finally:
        for conn in conns:
            conn.close()


def test_connection_sources(db: str, extra_connections: list[Any]) -> None:
    findings = diagnose(
        db, ["connection_sources"], thresholds=Thresholds(connection_source_min=3)
    ).findings
    leaky = [f for f in findings if "leaky_app" in f.target]
    assert len(leaky) == 1
    assert leaky[0].evidence["connections"] == 4
    assert leaky[0].evidence["idle"] == 4
    assert not [f for f in findings if "tidy_app" in f.target]  # one connection: healthy


def test_settings_review_respects_the_sessions_values(db: str) -> None:
    flagged = {f.target: f for f in diagnose(db, ["settings"]).findings}
    assert "random_page_cost" in flagged  # the stack runs PostgreSQL's default, 4
    assert flagged["random_page_cost"].fix_kind == "config"
    assert "random_page_cost = 4" in flagged["random_page_cost"].message
    name = db.rsplit("/", 1)[1]
    with connect(db) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET random_page_cost = 1.1')
        conn.execute(f"ALTER DATABASE \"{name}\" SET work_mem = '64MB'")
    try:
        again = {f.target for f in diagnose(db, ["settings"]).findings}
    finally:
        with connect(db) as conn:
            conn.execute(f'ALTER DATABASE "{name}" RESET random_page_cost')
            conn.execute(f'ALTER DATABASE "{name}" RESET work_mem')
    assert not again & {"random_page_cost", "work_mem"}
    assert "work_mem" in flagged


def test_vacuum_in_progress_is_reported_while_it_runs(db: str) -> None:
    with connect(db) as conn:
        conn.execute("CREATE TABLE churn AS SELECT g AS id FROM generate_series(1, 5000) g")
    assert diagnose(db, ["vacuum_progress"]).findings == []  # healthy: nothing running
    # an open cursor pins the table's first page: VACUUM (FREEZE) waits for a cleanup lock
    # on it, in progress, until the cursor closes
    holder = psycopg.connect(libpq_url(db))
    holder.execute("DECLARE pin CURSOR FOR SELECT * FROM churn")
    holder.execute("FETCH 1 FROM pin")
    errors: list[BaseException] = []

    def vacuum() -> None:
        try:
            with connect(db) as conn:
                conn.execute("VACUUM (FREEZE) churn")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=vacuum)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            findings = diagnose(db, ["vacuum_progress"]).findings
            if findings:
                break
            assert time.monotonic() < deadline, "VACUUM never showed in pg_stat_progress_vacuum"
            time.sleep(0.1)  # polling a condition with a deadline, not a synchronisation
        [finding] = findings
        assert finding.target == "churn"
        assert int(finding.evidence["heap_blks_total"] or 0) > 0
        assert "VACUUM of churn" in finding.message
    finally:
        holder.close()
        worker.join(timeout=60)
    assert errors == []
