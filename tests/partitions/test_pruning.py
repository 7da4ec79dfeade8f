"""Statements that scan every partition although they filter on the partition key are
flagged by ``hotpath explain`` and observe, with the rewrite; those that prune are not."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from sqlalchemy import Engine, create_engine, text

from hotpath.doctor import explain
from hotpath.observe import FindingKind, Profiler
from hotpath.testing import ModuleDatabase

DAY = datetime(2026, 1, 3, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def engine(hotpath_db: ModuleDatabase) -> Iterator[Engine]:
    engine = create_engine(hotpath_db.url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE ev (id bigint, at timestamptz NOT NULL, kind text)"
                " PARTITION BY RANGE (at)"
            )
        )
        for day in range(1, 11):
            conn.execute(
                text(
                    f"CREATE TABLE ev_{day} PARTITION OF ev FOR VALUES FROM"
                    f" ('2026-01-{day:02d}') TO ('2026-01-{day + 1:02d}')"
                )
            )
        conn.execute(
            text(
                "INSERT INTO ev SELECT g, '2026-01-01'::timestamptz + g * interval '1 minute',"
                " 'k' || g % 3 FROM generate_series(0, 14000) g"
            )
        )
        conn.execute(text("CREATE TABLE hk (k bigint, v int) PARTITION BY HASH (k)"))
        for r in range(4):
            conn.execute(
                text(
                    f"CREATE TABLE hk_{r} PARTITION OF hk"
                    f" FOR VALUES WITH (MODULUS 4, REMAINDER {r})"
                )
            )
        conn.execute(text("INSERT INTO hk SELECT g, g FROM generate_series(1, 1000) g"))
        conn.execute(text("ANALYZE ev, hk"))
    yield engine
    engine.dispose()


def _pruning_flags(url: str, sql: str) -> list[str]:
    return [f.suggestion or "" for f in explain(url, sql).flags if f.kind == "partition_not_pruned"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM ev WHERE date_trunc('day', at) = '2026-01-03'",
        "SELECT count(*) FROM ev WHERE at::date = '2026-01-03'",
        "SELECT * FROM ev WHERE date_trunc('day', at) = '2026-01-03' ORDER BY at LIMIT 5",
    ],
)
def test_explain_flags_a_function_or_cast_on_the_range_key(
    engine: Engine, hotpath_db: ModuleDatabase, sql: str
) -> None:
    [fix] = _pruning_flags(hotpath_db.url, sql)
    assert "at >= '2026-01-05' AND at < '2026-01-06'" in fix


def test_explain_flags_a_value_of_another_type_on_the_hash_key(
    engine: Engine, hotpath_db: ModuleDatabase
) -> None:
    [fix] = _pruning_flags(hotpath_db.url, "SELECT * FROM hk WHERE k = 5.0")
    assert "own type" in fix
    [flag] = [
        f
        for f in explain(hotpath_db.url, "SELECT * FROM hk WHERE k::text = '5'").flags
        if f.kind == "partition_not_pruned"
    ]
    assert flag.table == "hk"
    assert flag.evidence["partitions_scanned"] == 4


@pytest.mark.parametrize(
    "sql",
    [
        # the rewrite: prunes to one partition
        "SELECT count(*) FROM ev WHERE at >= '2026-01-03' AND at < '2026-01-04'",
        # a range wide enough to need every partition is not a pruning failure
        "SELECT count(*) FROM ev WHERE at >= '2025-12-01'",
        # no condition on the key at all: every partition, but nothing to rewrite
        "SELECT count(*) FROM ev WHERE kind = 'k1'",
        # a function of the key on a plain table: no partitions involved
        "SELECT count(*) FROM pg_class WHERE date_trunc('day', now()) = now()",
        "SELECT * FROM hk WHERE k = 5",
        "SELECT * FROM hk WHERE k IN (1, 2, 3)",
        # a bare key against a parameter prunes when the executor starts
        "SELECT * FROM hk WHERE k = $1",
    ],
)
def test_explain_near_misses_stay_quiet(
    engine: Engine, hotpath_db: ModuleDatabase, sql: str
) -> None:
    assert _pruning_flags(hotpath_db.url, sql) == []


def test_observe_reports_unpruned_partitions_with_the_fix(engine: Engine) -> None:
    profiler = Profiler(
        engine, slow_query_ms=0.001, explain="plan", modes={"unpruned_partitions": "log"}
    )
    try:
        with profiler.scope("report") as scope, engine.connect() as conn:
            conn.execute(
                text("SELECT count(*) FROM ev WHERE date_trunc('day', at) = :d"), {"d": DAY}
            ).all()
        with profiler.scope("near miss") as quiet, engine.connect() as conn:
            conn.execute(
                text("SELECT count(*) FROM ev WHERE at >= :a AND at < :b"),
                {"a": DAY, "b": datetime(2026, 1, 4, tzinfo=timezone.utc)},
            ).all()
    finally:
        profiler.uninstrument()
    [finding] = [f for f in scope.findings if f.kind is FindingKind.UNPRUNED_PARTITIONS]
    assert finding.details["table"] == "ev"
    assert finding.details["partitions"] == 10
    assert finding.fix
    assert "at >= " in finding.fix
    assert finding.call_site is not None
    assert [f for f in quiet.findings if f.kind is FindingKind.UNPRUNED_PARTITIONS] == []
