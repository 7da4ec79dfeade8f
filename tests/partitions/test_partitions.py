"""Time partitions on real PostgreSQL: creation, routing of rows, pruning, concurrency."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from hotpath.partitions import (
    PartitionError,
    default_partition_rows,
    detach_older_than,
    ensure_partitions,
    ensure_partitions_async,
    inspect_table,
)
from hotpath.testing import ModuleDatabase

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def engine(hotpath_db: ModuleDatabase) -> Iterator[Engine]:
    engine = create_engine(hotpath_db.url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS events CASCADE"))
        conn.execute(
            text(
                "CREATE TABLE events (id bigint, at timestamptz NOT NULL, kind text)"
                " PARTITION BY RANGE (at)"
            )
        )
    yield engine
    engine.dispose()


def _names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [p.name for p in inspect_table(conn, "events").partitions]


def test_creates_current_and_future_partitions_once(engine: Engine) -> None:
    created = ensure_partitions(engine, "events", "month", ahead=3, now=NOW)
    assert created == [
        "events_p20261101",
        "events_p20261201",
        "events_p20270101",
        "events_p20270201",
    ]
    assert ensure_partitions(engine, "events", "month", ahead=3, now=NOW) == []  # idempotent
    assert ensure_partitions(engine, "events", "month", ahead=4, now=NOW) == ["events_p20270301"]


def test_rows_land_in_their_partition_and_queries_prune(engine: Engine) -> None:
    ensure_partitions(engine, "events", "month", ahead=2, now=NOW)
    with engine.begin() as conn:
        for day in ("2026-11-30", "2026-12-01", "2027-01-15"):
            conn.execute(text("INSERT INTO events VALUES (1, :at, 'x')"), {"at": f"{day} 12:00+00"})
        placed = dict(
            conn.execute(text("SELECT at::date::text, tableoid::regclass::text FROM events")).all()
        )
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                text("EXPLAIN SELECT * FROM events WHERE at >= '2026-12-02' AND at < '2026-12-20'")
            )
        )
    assert placed == {
        "2026-11-30": "events_p20261101",
        "2026-12-01": "events_p20261201",
        "2027-01-15": "events_p20270101",
    }
    assert "events_p20261201" in plan
    assert "events_p20261101" not in plan
    assert "events_p20270101" not in plan  # pruned


def test_concurrent_runs_from_threads_and_processes_do_not_fail(
    engine: Engine, hotpath_db: ModuleDatabase
) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ensure_partitions(engine, "events", "week", ahead=6, now=NOW)
        except BaseException as exc:
            errors.append(exc)

    script = (
        "from datetime import datetime, timezone\n"
        "from sqlalchemy import create_engine\n"
        "from hotpath.partitions import ensure_partitions\n"
        f"ensure_partitions(create_engine({hotpath_db.url!r}), 'events', 'week', ahead=6,"
        " now=datetime(2026, 11, 23, 10, tzinfo=timezone.utc))\n"
    )
    processes = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.wait(60) for p in processes] == [0, 0]
    assert errors == []
    assert len(_names(engine)) == 7  # each week once


def test_detach_keeps_data_unless_drop_is_asked(engine: Engine) -> None:
    ensure_partitions(engine, "events", "month", ahead=3, now=NOW - timedelta(days=120))
    cutoff = datetime(2026, 10, 1, tzinfo=timezone.utc)
    assert detach_older_than(engine, "events", cutoff) == [
        "events_p20260701",
        "events_p20260801",
        "events_p20260901",
    ]
    assert _names(engine) == ["events_p20261001"]
    with engine.connect() as conn:  # detached, not dropped
        assert conn.execute(text("SELECT to_regclass('events_p20260701')")).scalar() is not None
    ensure_partitions(engine, "events", "month", ahead=0, now=datetime(2026, 5, 5))
    assert detach_older_than(engine, "events", cutoff, drop=True) == ["events_p20260501"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('events_p20260501')")).scalar() is None


def test_default_partition_rows_are_reported_and_block_with_a_clear_error(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE events_default PARTITION OF events DEFAULT"))
        conn.execute(text("INSERT INTO events VALUES (1, '2026-12-05 00:00+00', 'stuck')"))
    assert default_partition_rows(engine, "events") == ("events_default", 1)
    with pytest.raises(PartitionError, match=r"events_p20261201.*move them out first"):
        ensure_partitions(engine, "events", "month", ahead=1, now=NOW)


def test_bad_tables_are_refused_clearly(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS plain (at timestamptz)"))
        conn.execute(
            text("CREATE TABLE IF NOT EXISTS by_kind (kind text) PARTITION BY LIST (kind)")
        )
    for table, message in (
        ("missing", "does not exist"),
        ("plain", "is not partitioned"),
        ("by_kind", "not partitioned BY RANGE"),
    ):
        with pytest.raises(PartitionError, match=message):
            ensure_partitions(engine, table)


async def test_async_twin(engine: Engine, hotpath_db: ModuleDatabase) -> None:
    async_engine = create_async_engine(hotpath_db.async_url)
    try:
        created = await ensure_partitions_async(async_engine, "events", "day", ahead=2, now=NOW)
    finally:
        await async_engine.dispose()
    assert created == ["events_p20261123", "events_p20261124", "events_p20261125"]


def test_cli_ensure_check_and_one_line_errors(engine: Engine, hotpath_db: ModuleDatabase) -> None:
    def hotpath(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hotpath", "partitions", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ensured = hotpath("ensure", hotpath_db.url, "events", "--interval", "year", "--ahead", "1")
    assert ensured.returncode == 0, ensured.stderr
    assert ensured.stdout.count("created events_p") == 2
    assert hotpath("check", hotpath_db.url, "events").returncode == 0
    bad = hotpath("ensure", hotpath_db.url, "nope")
    assert bad.returncode == 2
    assert "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr
    down = hotpath("check", "postgresql://x:y@127.0.0.1:1/db", "events")
    assert down.returncode == 2
    assert "cannot connect" in down.stderr
