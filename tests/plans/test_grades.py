"""Graded flags: rows removed by filter at 50% / 90%, a node's share of the time at 10/40/90%."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from hotpath.plans import PlanFlag, Severity, analyze_plan
from hotpath.testing import ModuleDatabase


@pytest.fixture(scope="module")
def conn(hotpath_db: ModuleDatabase) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(hotpath_db.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE graded AS SELECT g AS id, g % 100 AS a, md5(g::text) AS pad"
            " FROM generate_series(1, 60000) g"
        )
        conn.execute("CREATE INDEX graded_id ON graded (id)")
        conn.execute("ANALYZE graded")
        yield conn


def flags(conn: psycopg.Connection[Any], sql: str, kind: str) -> list[PlanFlag]:
    row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").fetchone()
    assert row is not None
    return [f for f in analyze_plan(row[0]) if f.kind == kind]


def test_rows_removed_by_filter_graded_at_50_and_90_percent(conn: Any) -> None:
    [most] = flags(conn, "SELECT * FROM graded WHERE a = 7", "rows_removed_by_filter")
    assert most.severity is Severity.WARNING
    assert most.evidence["share"] >= 0.9
    [half] = flags(conn, "SELECT * FROM graded WHERE a < 30", "rows_removed_by_filter")
    assert half.severity is Severity.INFO
    assert 0.5 <= half.evidence["share"] < 0.9
    assert flags(conn, "SELECT * FROM graded WHERE a < 95", "rows_removed_by_filter") == []


def test_node_time_share_on_a_real_plan(conn: Any) -> None:
    shares = flags(conn, "SELECT * FROM graded WHERE pad LIKE '%zz%'", "node_time_share")
    [scan] = [f for f in shares if f.node == "Seq Scan"]
    assert scan.severity is Severity.CRITICAL
    assert scan.table == "graded"
    assert scan.evidence["share"] > 0.9
    assert scan.evidence["node_ms"] >= 1.0
    # a sub-millisecond index lookup is healthy whatever its share of a tiny plan
    assert flags(conn, "SELECT * FROM graded WHERE id = 5", "node_time_share") == []


def _node(
    kind: str, total_ms: float, children: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "Node Type": kind,
        "Actual Total Time": total_ms,
        "Actual Loops": 1,
        "Actual Rows": 1,
        "Plan Rows": 1,
        "Plans": children or [],
    }


@pytest.mark.parametrize(
    ("own_ms", "grade"),
    [(95.0, Severity.CRITICAL), (50.0, Severity.WARNING), (20.0, Severity.INFO), (5.0, None)],
)
def test_node_time_share_grades(own_ms: float, grade: Severity | None) -> None:
    # a Sort taking own_ms of its own over a 100 ms plan; its child scan takes the rest
    plan = _node("Sort", 100.0, [_node("Seq Scan", 100.0 - own_ms)])
    sort = [f for f in analyze_plan(plan) if f.kind == "node_time_share" and f.node == "Sort"]
    if grade is None:
        assert sort == []
    else:
        assert [f.severity for f in sort] == [grade]
        assert sort[0].evidence["share"] == pytest.approx(own_ms / 100)
