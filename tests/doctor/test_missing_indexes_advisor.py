"""doctor's missing_indexes gives the advisor's answer: one index per access pattern, the same
on every run, the same as ``advise`` for the same workload (PostgreSQL 15 with HypoPG)."""

from __future__ import annotations

import secrets

import pytest

from hotpath.doctor import advise_indexes, diagnose
from hotpath.doctor._sources import TableFilter

from .conftest import connect, flush_stats


def sibling_database(url: str) -> str:
    """A fresh database on ``url``'s server: its own pg_stat_statements rows and tables."""
    name = f"agree_{secrets.token_hex(3)}"
    with connect(url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    other = url.rsplit("/", 1)[0] + "/" + name
    with connect(other) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return other


@pytest.fixture(scope="module")
def db(pg15_url: str) -> str:
    url = sibling_database(pg15_url)
    with connect(url) as conn:
        conn.execute(
            "CREATE TABLE shop_orders AS SELECT g AS id, g % 5000 AS customer_id,"
            " 'sku-' || (g % 7919) AS sku, g % 7 AS status FROM generate_series(1, 50000) g"
        )
        conn.execute("ANALYZE shop_orders")
        conn.execute("SELECT pg_stat_statements_reset()")
        # two unrelated access patterns: by customer, by sku
        for i in range(4):
            conn.execute("SELECT * FROM shop_orders WHERE customer_id = %s", (i,))
            conn.execute("SELECT id, status FROM shop_orders WHERE sku = %s", (f"sku-{i}",))
        flush_stats(conn)
    return url


def test_one_index_per_access_pattern_same_on_every_run(db: str) -> None:
    first = diagnose(db, ["missing_indexes"]).by_check("missing_indexes")
    second = diagnose(db, ["missing_indexes"]).by_check("missing_indexes")
    [finding] = first
    assert finding.target == "shop_orders"
    fix = (finding.fix or "").splitlines()
    # was one merged index, "shop_orders (customer_id, sku)" or "(sku, customer_id)"
    assert not any("customer_id" in line and "sku" in line for line in fix)
    assert any(line.startswith("CREATE INDEX CONCURRENTLY ON shop_orders (sku") for line in fix)
    assert "CREATE INDEX CONCURRENTLY ON shop_orders (customer_id);" in fix
    assert finding.evidence["indexes"] == 2
    assert [f.fix for f in second] == [finding.fix]


def test_the_same_answer_as_advise(db: str) -> None:
    [finding] = diagnose(db, ["missing_indexes"]).by_check("missing_indexes")
    advice = advise_indexes(db, tables=TableFilter.of(include="shop_orders"))
    assert advice.hypopg
    assert (finding.fix or "").splitlines() == [s.ddl for s in advice.suggestions]
    # and the whole workload's advice on this table is that answer too
    everything = advise_indexes(db)
    assert [s.ddl for s in everything.suggestions if s.candidate.table == "shop_orders"] == [
        s.ddl for s in advice.suggestions
    ]
