"""fk_without_index on partitioned tables: one finding per foreign key (not one per
partition), and a fix whose statements run as printed."""

from __future__ import annotations

import pytest

from hotpath.doctor import diagnose
from hotpath.testing import ModuleDatabase

from .conftest import connect


@pytest.fixture(scope="module")
def db(hotpath_db: ModuleDatabase) -> str:
    with connect(hotpath_db.url) as conn:
        conn.execute("CREATE TABLE parents (id int PRIMARY KEY)")
        conn.execute("INSERT INTO parents SELECT generate_series(1, 100)")
        # range-partitioned, one partition itself partitioned (two levels), and a
        # mixed-case column that only works quoted
        conn.execute(
            'CREATE TABLE events (id int, "ParentId" int REFERENCES parents, at date)'
            " PARTITION BY RANGE (at)"
        )
        conn.execute(
            "CREATE TABLE events_2024 PARTITION OF events"
            " FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
        )
        conn.execute(
            "CREATE TABLE events_2025 PARTITION OF events"
            " FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY HASH (id)"
        )
        for r in range(2):
            conn.execute(
                f"CREATE TABLE events_2025_h{r} PARTITION OF events_2025"
                f" FOR VALUES WITH (MODULUS 2, REMAINDER {r})"
            )
        conn.execute(
            "INSERT INTO events SELECT g, g % 100 + 1, date '2024-06-01' + g % 400"
            " FROM generate_series(1, 20000) g"
        )
        # healthy twin: partitioned, its foreign key led by an index on the parent
        conn.execute(
            "CREATE TABLE visits (id int, parent_id int REFERENCES parents, at date)"
            " PARTITION BY RANGE (at)"
        )
        conn.execute(
            "CREATE TABLE visits_2024 PARTITION OF visits"
            " FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
        )
        conn.execute("CREATE INDEX ON visits (parent_id)")
        conn.execute("ANALYZE events")
    return hotpath_db.url


def test_one_finding_per_partitioned_foreign_key(db: str) -> None:
    findings = diagnose(db, ["fk_without_index"]).by_check("fk_without_index")
    # was one finding per partition (events_2024, events_2025_h0, events_2025_h1) and the parent
    assert [f.target for f in findings] == ["events.events_ParentId_fkey"]
    [finding] = findings
    assert finding.evidence["partitions"] == 3
    assert finding.evidence["partitions_without_index"] == 3
    assert finding.evidence["rows"] == pytest.approx(20_000, rel=0.05)
    assert '"ParentId"' in finding.message


def test_the_printed_fix_runs_and_clears_the_finding(db: str) -> None:
    [finding] = diagnose(db, ["fk_without_index"]).by_check("fk_without_index")
    fix = finding.fix or ""
    assert "CREATE INDEX CONCURRENTLY events_ParentId_idx ON events " not in fix
    assert "SHARE lock" in fix  # the one-statement alternative, with its lock
    statements = [line for line in fix.splitlines() if not line.startswith("--")]
    assert sum(s.startswith("CREATE INDEX CONCURRENTLY") for s in statements) == 3
    with connect(db) as conn:
        for statement in statements:
            conn.execute(statement)  # CONCURRENTLY outside a transaction: autocommit
        valid = conn.execute(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indrelid = 'events'::regclass"
        ).fetchall()
    assert valid == [(True,)]  # the parent's index, valid once every partition's is attached
    assert diagnose(db, ["fk_without_index"]).by_check("fk_without_index") == []
