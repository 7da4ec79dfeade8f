"""What Dexter users expect of ``hotpath advise``: workloads from PostgreSQL's own log files
(stderr, csvlog, jsonlog, written by a real server) and from sampled pg_stat_activity,
--include/--exclude, --min-calls, --min-time, and an opt-in --create."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hotpath.doctor import advise_indexes
from hotpath.doctor._create import LOCK_KEY, create_indexes
from hotpath.doctor._errors import DoctorError
from hotpath.doctor._logs import from_log_files
from hotpath.doctor._session import Session, libpq_url
from hotpath.doctor._sources import TableFilter, filter_workload, from_activity
from hotpath.doctor._workload import WorkloadQuery

from .conftest import connect
from .test_missing_indexes_advisor import sibling_database

SCHEMA = [
    "CREATE TABLE trips AS SELECT g AS id, g % 4000 AS rider_id, g % 3000 AS driver_id,"
    " g % 9 AS city FROM generate_series(1, 40000) g",
    "CREATE TABLE tips AS SELECT g AS id, g % 4000 AS rider_id FROM generate_series(1, 40000) g",
    "ANALYZE trips",
    "ANALYZE tips",
]


# Logged after every statement of the workload: the collector writes in order, so once
# the marker is in a file, so is every statement before it (waiting for the last
# statement's own text raced: "driver_id" is already there after the first of two).
END_OF_WORKLOAD = "hotpath-end-of-workload"


@pytest.fixture(scope="module")
def logged() -> Iterator[tuple[str, Path]]:
    """A server of its own logging every statement's duration to stderr, csvlog and jsonlog."""
    from hotpath.stack import LocalStack

    stack = LocalStack(replicas=0, redis=False).start()
    try:
        with stack.primary.connect() as conn:
            conn.execute("CREATE DATABASE logged")
            for name, value in (
                ("logging_collector", "on"),
                ("log_destination", "stderr,csvlog,jsonlog"),
                ("log_filename", "pg"),
                ("log_min_duration_statement", "0"),
            ):
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        stack.primary.restart()
        logs = stack.primary.datadir / "log"  # the server's account owns it
        url = stack.primary.url_for("logged")
        with connect(url) as conn:
            for sql in SCHEMA:
                conn.execute(sql)
            for i in range(3):  # simple protocol: constants in the log
                conn.execute(f"SELECT * FROM trips WHERE rider_id = {i}")
            for i in range(2):  # extended protocol: "execute <unnamed>: ... $1"
                conn.execute("SELECT *\nFROM trips\nWHERE driver_id = %s", (i,))
            conn.execute(f"SELECT '{END_OF_WORKLOAD}'")
        yield url, logs
    finally:
        stack.stop()


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not (path.exists() and END_OF_WORKLOAD in path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"{path} never logged the workload's end"
        time.sleep(0.1)  # the logging collector writes asynchronously: poll with a deadline


@pytest.mark.parametrize("suffix", ["", ".csv", ".json"])
def test_workload_from_each_log_format(logged: tuple[str, Path], suffix: str) -> None:
    url, logs = logged
    path = logs / f"pg{suffix}"
    _wait_for(path)
    workload = from_log_files([path], database="logged")
    reads = [q for q in workload if "WHERE" in q.sql and q.sql.startswith("SELECT")]
    by_text = {q.sql.split("WHERE")[1].split()[0]: q for q in reads}
    assert by_text["rider_id"].calls == 3  # one shape, three constants
    assert by_text["driver_id"].calls == 2
    assert by_text["driver_id"].mean_ms is not None
    assert "\n" in by_text["driver_id"].sql  # a statement's later lines kept
    advice = advise_indexes(url, workload)
    ddls = {s.ddl for s in advice.suggestions}
    assert "CREATE INDEX CONCURRENTLY ON trips (rider_id);" in ddls
    assert "CREATE INDEX CONCURRENTLY ON trips (driver_id);" in ddls


def test_log_workload_through_the_cli(logged: tuple[str, Path]) -> None:
    url, logs = logged
    _wait_for(logs / "pg.json")
    result = subprocess.run(
        [sys.executable, "-m", "hotpath", "advise", url, "--workload", str(logs / "pg.json"),
         "--include", "trips", "--min-calls", "3", "--format", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    import orjson

    data = orjson.loads(result.stdout)
    assert [s["ddl"] for s in data["suggestions"]] == [
        "CREATE INDEX CONCURRENTLY ON trips (rider_id);"
    ]
    dropped = [u["reason"] for u in data["unanalysed"] if "WHERE driver_id" in u["sql"]]
    assert dropped == ["2 calls < --min-calls 3"]


@pytest.fixture(scope="module")
def pg15(pg15_url: str) -> str:
    url = sibling_database(pg15_url)
    with connect(url) as conn:
        for sql in SCHEMA:
            conn.execute(sql)
    return url


def test_include_and_exclude_limit_the_tables(pg15: str) -> None:
    queries = [
        "SELECT * FROM trips WHERE driver_id = 5",
        "SELECT * FROM tips WHERE rider_id = 7",
    ]
    everything = {s.candidate.table for s in advise_indexes(pg15, queries).suggestions}
    assert everything == {"trips", "tips"}
    only = advise_indexes(pg15, queries, tables=TableFilter.of(include="public.trips"))
    assert {s.candidate.table for s in only.suggestions} == {"trips"}
    # the statement on no wanted table is listed, not silently dropped
    assert only.unanalysed == [(queries[1], "its tables (tips) are outside --include/--exclude")]
    without = advise_indexes(pg15, queries, tables=TableFilter.of(exclude=["trips"]))
    assert {s.candidate.table for s in without.suggestions} == {"tips"}
    with pytest.raises(DoctorError, match="--include"):
        TableFilter.of(include="trips,,tips")


def test_min_calls_and_min_time_drop_light_statements_with_their_reason() -> None:
    workload = [
        WorkloadQuery("SELECT 1 FROM trips WHERE rider_id = 1", 500, 20.0),  # 10 s total
        WorkloadQuery("SELECT 1 FROM trips WHERE driver_id = 1", 5, 30_000.0),  # 2.5 min
        WorkloadQuery("SELECT 1 FROM trips WHERE city = 1", 900),  # no timing
    ]
    kept, dropped = filter_workload(workload, min_calls=10)
    assert [q.calls for q in kept] == [500, 900]
    assert dropped == [(workload[1].sql, "5 calls < --min-calls 10")]
    kept, dropped = filter_workload(workload, min_time_minutes=1)
    assert [q.calls for q in kept] == [5]
    assert [why for _, why in dropped] == [
        "0.17 min total < --min-time 1 min",
        "no timing from given: --min-time 1 needs it",
    ]


def test_sampled_pg_stat_activity(pg15: str) -> None:
    running = "SELECT count(*) FROM trips WHERE driver_id = 11 AND pg_sleep(30) IS NULL"
    conn = psycopg.connect(libpq_url(pg15), autocommit=True)
    thread = threading.Thread(target=lambda: _swallow(conn, running))
    thread.start()
    try:
        with Session(pg15) as session:
            deadline = time.monotonic() + 30
            while not session.rows(
                "SELECT 1 FROM pg_stat_activity WHERE query = %s AND state = 'active'",
                (running,),
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)  # polling a condition with a deadline
            workload = from_activity(session, samples=2, interval_s=0.01)
    finally:
        conn.cancel_safe()
        thread.join(timeout=30)
        conn.close()
    [seen] = [q for q in workload if "driver_id = 11" in q.sql]
    assert seen.calls == 2  # seen in both samples
    assert seen.source == "pg_stat_activity"
    ddls = {s.ddl for s in advise_indexes(pg15, workload).suggestions}
    assert "CREATE INDEX CONCURRENTLY ON trips (driver_id);" in ddls


def _swallow(conn: psycopg.Connection[Any], sql: str) -> None:
    with contextlib.suppress(psycopg.errors.QueryCanceled):  # cancelled by the test
        conn.execute(sql)


def test_create_builds_once_under_the_lock_and_rechecks(pg15: str) -> None:
    advice = advise_indexes(pg15, ["SELECT * FROM trips WHERE city = 3 AND rider_id = 9"])
    [suggestion] = advice.suggestions
    # another creator holds the lock: nothing is built, the reason is one clear line
    with connect(pg15) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        with pytest.raises(DoctorError, match="holds the creation lock"):
            create_indexes(pg15, [suggestion])
        other.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    [first] = create_indexes(pg15, [suggestion])
    assert first.outcome == "created"
    assert first.statements == (suggestion.ddl,)
    [again] = create_indexes(pg15, [suggestion])  # re-checked: not built twice
    assert again.outcome == "exists"
    with connect(pg15) as conn:
        count = conn.execute(
            "SELECT count(*) FROM pg_index WHERE indrelid = 'trips'::regclass AND indisvalid"
        ).fetchone()
    assert count == (1,)
