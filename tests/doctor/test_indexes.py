"""Index checks on real catalogs: each planted problem is flagged, its healthy twin is not."""

from __future__ import annotations

import psycopg
import pytest

from hotpath.doctor import Thresholds, diagnose
from hotpath.testing import ModuleDatabase

from .conftest import connect, flush_stats


@pytest.fixture(scope="module")
def db(hotpath_db: ModuleDatabase) -> str:
    with connect(hotpath_db.url) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
        # missing index: a large table scanned sequentially by a selective query ...
        conn.execute(
            "CREATE TABLE orders AS SELECT g AS id, g % 5000 AS customer_id, g % 7 AS status"
            " FROM generate_series(1, 30000) g"
        )
        # ... and its healthy twin, read through an index
        conn.execute("CREATE TABLE accounts AS SELECT g AS id FROM generate_series(1, 30000) g")
        conn.execute("ALTER TABLE accounts ADD PRIMARY KEY (id)")
        conn.execute("ANALYZE orders; ANALYZE accounts")
        for i in range(5):
            conn.execute("SELECT * FROM orders WHERE customer_id = %s", (i,))
            conn.execute("SELECT * FROM accounts WHERE id = %s", (i,))
        # unused + duplicate + redundant: an index never scanned, a copy, a prefix
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, a int, b int, sku text UNIQUE)")
        conn.execute(
            "INSERT INTO items SELECT g, g % 10, g % 20, 's' || g FROM generate_series(1, 2000) g"
        )
        conn.execute("CREATE INDEX items_a ON items (a)")
        conn.execute("CREATE INDEX items_a_copy ON items (a)")
        conn.execute("CREATE INDEX items_a_b ON items (a, b)")
        conn.execute("CREATE INDEX items_b ON items (b)")  # used below: healthy
        conn.execute("SET enable_seqscan = off")
        conn.execute("SELECT * FROM items WHERE b = 3")
        conn.execute("RESET enable_seqscan")
        # invalid index: a unique build over duplicates fails and leaves it behind
        conn.execute("CREATE TABLE dupes AS SELECT g % 3 AS v FROM generate_series(1, 100) g")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY dupes_v ON dupes (v)")
        conn.execute("CREATE INDEX dupes_ok ON dupes (v)")
        # foreign keys: one without an index, one with
        conn.execute("CREATE TABLE parents (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE kids (id int, parent_id int REFERENCES parents)")
        conn.execute("CREATE TABLE pets (id int, parent_id int REFERENCES parents)")
        conn.execute("CREATE INDEX pets_parent ON pets (parent_id)")
        flush_stats(conn)
    return hotpath_db.url


def test_missing_index_names_table_query_and_columns(db: str) -> None:
    report = diagnose(db, ["missing_indexes"], thresholds=Thresholds(large_table_rows=10_000))
    [finding] = report.by_check("missing_indexes")  # accounts (index scans) is not flagged
    assert finding.target == "orders"
    assert finding.evidence["seq_scan"] >= 5
    assert "customer_id = $1" in finding.message
    assert finding.fix is not None
    assert finding.fix.startswith("CREATE INDEX CONCURRENTLY ON orders (customer_id)")


def test_unused_indexes_spare_primary_unique_and_used(db: str) -> None:
    report = diagnose(db, ["unused_indexes"])
    flagged = {f.target for f in report.by_check("unused_indexes")}
    assert {"items_a", "items_a_copy", "items_a_b"} <= flagged
    assert not flagged & {"items_pkey", "items_sku_key", "items_b", "accounts_pkey"}
    finding = next(f for f in report.by_check("unused_indexes") if f.target == "items_a")
    assert "replicas keep their own usage counters" in finding.message
    # this stack is minutes old: the finding says so and stays informational
    assert "under a week old" in finding.message
    assert finding.severity.value == "info"
    assert finding.evidence["stats_since"]


def test_duplicate_and_redundant_indexes(db: str) -> None:
    flagged = {
        f.target: f for f in diagnose(db, ["duplicate_indexes"]).by_check("duplicate_indexes")
    }
    # items_a_copy duplicates items_a (the newer of an identical pair is reported), and
    # items_a is a prefix of items_a_b; items_b and items_a_b are healthy: nothing covers them
    assert flagged.keys() == {"items_a", "items_a_copy"}
    assert "items_a_b" in (flagged["items_a"].fix or "")
    assert all((f.fix or "").startswith("DROP INDEX CONCURRENTLY") for f in flagged.values())


def test_invalid_index(db: str) -> None:
    [finding] = diagnose(db, ["invalid_indexes"]).by_check("invalid_indexes")
    assert finding.target == "dupes_v"  # dupes_ok, valid, is not reported
    assert "CREATE UNIQUE INDEX CONCURRENTLY dupes_v" in (finding.fix or "")


def test_foreign_key_without_index(db: str) -> None:
    [finding] = diagnose(db, ["fk_without_index"]).by_check("fk_without_index")
    assert finding.target.startswith("kids.")  # pets has its index: healthy
    assert finding.fix == "CREATE INDEX CONCURRENTLY ON kids (parent_id);"
