"""Plan analysis on real EXPLAIN (ANALYZE) output: each flag planted, and a healthy control."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from hotpath.plans import PlanFlag, analyze_plan, render_plan
from hotpath.testing import ModuleDatabase


@pytest.fixture(scope="module")
def conn(hotpath_db: ModuleDatabase) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(hotpath_db.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g AS id, g % 100 AS a, g % 100 AS b,"
            " md5(g::text) AS payload FROM generate_series(1, 60000) g"
        )
        conn.execute("CREATE TABLE small AS SELECT g AS id FROM generate_series(1, 3000) g")
        conn.execute("CREATE INDEX big_id ON big (id)")
        conn.execute("ANALYZE big")
        conn.execute("ANALYZE small")
        yield conn


def explain(conn: psycopg.Connection[Any], sql: str, *settings: str) -> list[PlanFlag]:
    with conn.transaction():
        for setting in settings:
            conn.execute(f"SET LOCAL {setting}")
        row = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, VERBOSE, FORMAT JSON) {sql}").fetchone()
    assert row is not None
    render_plan(row[0])  # every real plan renders
    return analyze_plan(row[0])


def kinds(flags: list[PlanFlag]) -> set[str]:
    return {f.kind for f in flags}


def test_seq_scan_and_filter_waste_name_table_columns_and_index(conn: Any) -> None:
    flags = explain(conn, "SELECT * FROM big WHERE a = 7 AND payload LIKE 'ab%'")
    seq = next(f for f in flags if f.kind == "seq_scan")
    assert seq.table == "big"
    assert seq.columns == ("a", "payload")
    assert seq.suggestion == "CREATE INDEX CONCURRENTLY ON big (a, payload);"
    assert "rows_removed_by_filter" in kinds(flags)
    assert kinds(explain(conn, "SELECT * FROM big WHERE id = 7")) == set()  # index: healthy


def test_row_misestimate_on_correlated_columns(conn: Any) -> None:
    flags = explain(conn, "SELECT * FROM big WHERE a = 1 AND b = 1")  # a = b always
    [estimate] = [f for f in flags if f.kind == "row_misestimate"]
    assert estimate.evidence["factor"] >= 10
    assert estimate.suggestion == "ANALYZE big;"
    assert "row_misestimate" not in kinds(explain(conn, "SELECT * FROM big WHERE a = 1"))


def test_sort_and_hash_spilling_to_disk(conn: Any) -> None:
    sort = explain(conn, "SELECT * FROM big ORDER BY payload", "work_mem = '64kB'")
    assert "disk_spill" in kinds(sort)
    assert "disk_spill" not in kinds(
        explain(conn, "SELECT * FROM big ORDER BY payload", "work_mem = '64MB'")
    )
    hashed = explain(
        conn,
        "SELECT count(*) FROM big JOIN big b2 USING (id)",
        "work_mem = '64kB'",
        "enable_mergejoin = off",
        "enable_nestloop = off",
    )
    assert any(f.kind == "disk_spill" and "batches" in f.message for f in hashed)


def test_nested_loop_with_many_loops(conn: Any) -> None:
    flags = explain(
        conn,
        "SELECT count(*) FROM small JOIN big USING (id)",
        "enable_hashjoin = off",
        "enable_mergejoin = off",
    )
    loops = next(f for f in flags if f.kind == "nested_loop_many_loops")
    assert loops.evidence["loops"] >= 3000


def test_heap_fetches_until_vacuum(conn: Any) -> None:
    conn.execute("CREATE TABLE fresh AS SELECT g AS id FROM generate_series(1, 20000) g")
    conn.execute("CREATE INDEX fresh_id ON fresh (id)")
    conn.execute("ANALYZE fresh")
    query = "SELECT id FROM fresh WHERE id < 5000"
    flags = explain(conn, query, "enable_seqscan = off", "enable_bitmapscan = off")
    heap = next(f for f in flags if f.kind == "heap_fetches")
    assert heap.suggestion == "VACUUM fresh;"
    # hot_standby_feedback from the replicas holds back the visibility map until their next
    # status message (wal_receiver_status_interval=1s): vacuum until the pages are all-visible
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        conn.execute("VACUUM fresh")
        row = conn.execute("SELECT relallvisible FROM pg_class WHERE relname = 'fresh'").fetchone()
        if row and row[0] > 0:
            break
        time.sleep(0.3)
    flags = explain(conn, query, "enable_seqscan = off", "enable_bitmapscan = off")
    assert "heap_fetches" not in kinds(flags)


def test_plan_only_output_uses_table_sizes() -> None:
    plan = [
        {
            "Plan": {
                "Node Type": "Seq Scan",
                "Relation Name": "big",
                "Schema": "public",
                "Plan Rows": 10,
                "Total Cost": 1000.0,
                "Filter": "(a = 7)",
            }
        }
    ]
    assert analyze_plan(plan) == []  # without ANALYZE and without sizes, no evidence of size
    [flag] = analyze_plan(plan, {"big": 60000.0})
    assert (flag.kind, flag.columns) == ("seq_scan", ("a",))
    with pytest.raises(ValueError, match="not an EXPLAIN"):
        analyze_plan({"rows": 1})


def test_mixed_case_schema_table_and_columns_give_ddl_that_runs(conn: Any) -> None:
    conn.execute('CREATE SCHEMA "Sales"')
    conn.execute(
        'CREATE TABLE "Sales"."Orders" AS SELECT g AS "Id", g % 500 AS "CustomerId"'
        " FROM generate_series(1, 30000) g"
    )
    conn.execute('ANALYZE "Sales"."Orders"')
    flags = explain(conn, 'SELECT * FROM "Sales"."Orders" WHERE "CustomerId" = 7')
    seq = next(f for f in flags if f.kind == "seq_scan")
    assert seq.table == '"Sales"."Orders"'
    assert seq.suggestion == 'CREATE INDEX CONCURRENTLY ON "Sales"."Orders" ("CustomerId");'
    conn.execute(seq.suggestion)  # the printed fix runs as printed
    conn.execute('ANALYZE "Sales"."Orders"')
    assert "seq_scan" not in kinds(
        explain(conn, 'SELECT * FROM "Sales"."Orders" WHERE "CustomerId" = 7')
    )
