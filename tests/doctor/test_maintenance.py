"""Storage and maintenance checks: bloat, cache, vacuum/analyze, sequences, XID age, spills,
partitioning candidates, top queries — each planted, each with a healthy control."""

from __future__ import annotations

import time

import pytest

from hotpath.doctor import Thresholds, diagnose
from hotpath.testing import ModuleDatabase

from .conftest import connect, flush_stats

SMALL = Thresholds(bloat_min_bytes=100_000, partition_min_rows=20_000, xid_age_warning=1_000)


@pytest.fixture(scope="module")
def db(hotpath_db: ModuleDatabase) -> str:
    with connect(hotpath_db.url) as conn:
        # bloat: 80% of the rows deleted and vacuumed (pages stay), next to a dense twin
        for name in ("bloated", "dense"):
            conn.execute(
                f"CREATE TABLE {name} (id int, pad text) WITH (autovacuum_enabled = false)"
            )
            conn.execute(
                f"INSERT INTO {name} SELECT g, md5(g::text) FROM generate_series(1, 40000) g"
            )
            conn.execute(f"CREATE INDEX {name}_id ON {name} (id)")
        conn.execute("DELETE FROM bloated WHERE id % 10 < 8")
        conn.execute("VACUUM ANALYZE bloated")
        conn.execute("VACUUM ANALYZE dense")
        # never analyzed (autovacuum off), next to an analyzed twin
        conn.execute("CREATE TABLE raw_events (id int) WITH (autovacuum_enabled = false)")
        conn.execute("INSERT INTO raw_events SELECT generate_series(1, 5000)")
        # sequences: one 93% used, one fresh; an int column fed by a bigint sequence
        conn.execute("CREATE SEQUENCE nearly_done AS integer")
        conn.execute("SELECT setval('nearly_done', 2000000000)")
        conn.execute("CREATE SEQUENCE fresh_seq")
        conn.execute("SELECT nextval('fresh_seq')")
        # partitioning: an append-only table filtered by time; a twin that is updated
        for name in ("events", "sessions"):
            conn.execute(
                f"CREATE TABLE {name} AS SELECT g AS id, now() - g * interval '1 min' AS created_at"
                " FROM generate_series(1, 30000) g"
            )
            conn.execute(f"ANALYZE {name}")
        conn.execute("UPDATE sessions SET id = id + 1")
        conn.execute("SELECT pg_stat_statements_reset()")
        for _ in range(3):
            conn.execute("SELECT count(*) FROM events WHERE created_at > now() - interval '1 day'")
            conn.execute(
                "SELECT count(*) FROM sessions WHERE created_at > now() - interval '1 day'"
            )
        flush_stats(conn)
    return hotpath_db.url


def test_table_and_index_bloat(db: str) -> None:
    report = diagnose(db, ["table_bloat", "index_bloat"], thresholds=SMALL)
    tables = {f.target: f for f in report.by_check("table_bloat")}
    assert set(tables) == {"bloated"}  # dense is not flagged
    assert tables["bloated"].evidence["bloat_ratio"] >= 0.6
    assert tables["bloated"].fix is not None
    assert "VACUUM FULL bloated" in tables["bloated"].fix
    indexes = {f.target for f in report.by_check("index_bloat")}
    assert indexes == {"bloated_id"}
    assert "REINDEX INDEX CONCURRENTLY bloated_id" in (report.by_check("index_bloat")[0].fix or "")


def test_never_analyzed_and_dead_rows(db: str) -> None:
    with connect(db) as conn:
        conn.execute("CREATE TABLE churn (id int) WITH (autovacuum_enabled = false)")
        conn.execute("INSERT INTO churn SELECT generate_series(1, 5000)")
        conn.execute("ANALYZE churn")
        conn.execute("DELETE FROM churn WHERE id <= 3000")
        flush_stats(conn)
    found = {(f.target, f.fix) for f in diagnose(db, ["vacuum_analyze"]).findings}
    assert ("raw_events", "ANALYZE raw_events;") in found
    assert ("churn", "VACUUM (ANALYZE) churn;") in found
    assert not any(obj == "dense" for obj, _ in found)  # vacuumed and analyzed: healthy
    vacuum_until_clean(db, ["raw_events", "churn"], "vacuum_analyze")


def vacuum_until_clean(db: str, tables: list[str], check: str, freeze: bool = False) -> set[str]:
    """Vacuum until ``check`` no longer flags ``tables``; returns what it flagged first.

    hot_standby_feedback from the session stack's replicas holds the xmin horizon back until
    their next status message (1 s), so one VACUUM may not yet remove rows or advance
    relfrozenxid."""
    first: set[str] | None = None
    deadline = time.monotonic() + 20
    with connect(db) as conn:
        while True:
            for table in tables:
                conn.execute(f"VACUUM ({'FREEZE' if freeze else 'ANALYZE'}) {table}")
            flush_stats(conn)
            flagged = {f.target for f in diagnose(db, [check], thresholds=SMALL).findings}
            first = flagged if first is None else first
            if not flagged & set(tables):
                return first | set(tables)
            assert time.monotonic() < deadline, f"{check} still flags {flagged & set(tables)}"
            time.sleep(0.5)


def test_sequences_near_exhaustion(db: str) -> None:
    findings = diagnose(db, ["sequences"]).findings
    assert [f.target for f in findings] == ["nearly_done"]  # fresh_seq is healthy
    assert findings[0].evidence["used"] == pytest.approx(2000000000 / 2147483647, abs=1e-4)
    assert findings[0].severity.value == "critical"


def test_xid_age_per_table_until_frozen(db: str) -> None:
    with connect(db) as conn:
        conn.execute("CREATE TABLE old_rows AS SELECT 1 AS id")
        for _ in range(1_100):  # consume transaction IDs: the table's relfrozenxid ages
            conn.execute("SELECT pg_current_xact_id()")
    flagged = {f.target: f for f in diagnose(db, ["xid_wraparound"], thresholds=SMALL).findings}
    assert flagged["old_rows"].evidence["xid_age"] >= 1_100
    assert flagged["old_rows"].fix == "VACUUM (FREEZE, VERBOSE) old_rows;"
    vacuum_until_clean(db, ["old_rows"], "xid_wraparound", freeze=True)


def test_temp_spills_name_query_and_work_mem(db: str) -> None:
    with connect(db) as conn:
        conn.execute("SET work_mem = '64kB'")
        conn.execute("SELECT * FROM dense ORDER BY pad")  # spills
        conn.execute("RESET work_mem")
        conn.execute("SELECT * FROM dense ORDER BY id DESC LIMIT 5")  # in memory: healthy
        flush_stats(conn)
    findings = diagnose(db, ["temp_spills"]).findings
    assert len(findings) == 1
    assert "ORDER BY pad" in findings[0].message
    assert (findings[0].fix or "").startswith("SET work_mem = '")


def test_partition_candidate_is_append_only_and_filtered_by_time(db: str) -> None:
    findings = diagnose(db, ["partition_candidates"], thresholds=SMALL).findings
    assert [f.target for f in findings] == ["events"]  # sessions is updated: not append-only
    assert "hotpath partitions convert $DATABASE_URL events --by created_at" in (
        findings[0].fix or ""
    )


def test_top_queries_and_how_to_enable_pg_stat_statements(db: str) -> None:
    report = diagnose(db, ["top_queries"])
    assert report.top_queries
    assert report.findings
    assert all(f.check == "top_queries" and "mean" in f.message for f in report.findings)
    with connect(db) as conn:
        conn.execute("DROP EXTENSION pg_stat_statements")
    try:
        report = diagnose(db)
        [missing] = report.by_check("top_queries")
        assert "shared_preload_libraries" in (missing.fix or "")
        skipped = {s.check: s for s in report.skipped}
        assert "CREATE EXTENSION pg_stat_statements" in (skipped["temp_spills"].grant or "")
    finally:
        with connect(db) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")


def test_cache_hit_ratio_after_eviction(db: str) -> None:
    with connect(db) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
        for _ in range(20):
            conn.execute("SELECT count(*) FROM dense")
        conn.execute("SELECT pg_stat_reset()")
        for _ in range(20):
            conn.execute("SELECT count(*) FROM dense")  # all from shared_buffers
        flush_stats(conn)
        limits = Thresholds(cache_min_blocks=100)
        assert diagnose(db, ["cache_hit"], thresholds=limits).findings == []
        conn.execute("SELECT pg_stat_reset()")
        conn.execute(
            "SELECT pg_buffercache_evict(bufferid) FROM pg_buffercache"
            " WHERE relfilenode = pg_relation_filenode('dense')"
        )
        conn.execute("SELECT count(*) FROM dense")  # read back from disk
        flush_stats(conn)
    [finding] = diagnose(db, ["cache_hit"], thresholds=limits).findings
    assert finding.evidence["hit_ratio"] < 0.5
    assert "shared_buffers" in (finding.fix or "")
