"""PoolPlan against a real server's settings: max_connections, reserved slots, other clients,
role CONNECTION LIMITs, replicas; and what happens when the budget is ignored."""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import create_engine, text

from hotpath.pool import MeteredConnectionPool, PoolConfigError, PoolPlan, instrument_pool
from hotpath.testing import ModuleDatabase


def _setting(conn: psycopg.Connection, name: str) -> int:
    row = conn.execute("SELECT setting FROM pg_settings WHERE name = %s", [name]).fetchone()
    return int(row[0]) if row else 0


def test_plan_reads_the_servers_budget(hotpath_db: ModuleDatabase) -> None:
    before = PoolPlan.for_app(
        processes=4,
        concurrency_per_process=8,
        server_url=hotpath_db.url,
        replica_urls=hotpath_db.replica_urls,
    )
    with psycopg.connect(hotpath_db.dsn, autocommit=True) as conn:
        expected = {
            name: _setting(conn, name)
            for name in (
                "max_connections",
                "superuser_reserved_connections",
                "reserved_connections",
            )
        }
        # Three more clients while planning again: the plan must count them.
        extra = [psycopg.connect(hotpath_db.dsn) for _ in range(3)]
        try:
            after = PoolPlan.for_app(
                processes=4, concurrency_per_process=8, server_url=hotpath_db.url
            )
        finally:
            for c in extra:
                c.close()
    primary = after.primary
    assert primary.max_connections == expected["max_connections"]
    assert primary.superuser_reserved == expected["superuser_reserved_connections"]
    assert primary.reserved == expected["reserved_connections"]
    # the probe's own connection is not counted; the test's four open ones are
    assert primary.other_clients == before.primary.other_clients + 4
    assert primary.available(after.headroom) == (
        expected["max_connections"]
        - expected["superuser_reserved_connections"]
        - expected["reserved_connections"]
        - primary.other_clients
        - after.headroom
    )
    assert after.fits
    assert (after.pool_size, after.max_overflow) == (8, 0)
    assert after.total_connections == 32
    assert [r.name for r in before.replicas] == ["replica1", "replica2"]
    assert before.replica_pool_size == 8
    assert before.engine_kwargs(replica=True)["pool_size"] == 8
    with pytest.raises(PoolConfigError, match="this plan has no replicas"):
        after.engine_kwargs(replica=True)
    explained = before.explain()
    assert f"{expected['max_connections']} max_connections" in explained
    assert "pool_size=8, max_overflow=0" in explained
    assert "replica2" in explained


def test_plan_caps_pools_and_recommends_pgbouncer_past_the_budget() -> None:
    plan = PoolPlan.from_settings(
        processes=12,
        concurrency_per_process=16,
        max_connections=100,
        superuser_reserved_connections=3,
        reserved_connections=2,
        other_clients=10,
        server_cores=4,
    )
    available = 100 - 3 - 2 - 10 - plan.headroom  # 80
    assert not plan.fits
    assert plan.pool_size == available // 12
    assert plan.total_connections <= available
    explained = plan.explain()
    assert "192 connections exceed the 80 available" in explained
    assert "PgBouncer in transaction mode" in explained
    assert "about 8 queries do useful work at once" in explained
    assert "try pool_size=1 per process (12 x 1 = 12)" in explained
    assert plan.max_processes_without_pooler == 80 // 16
    with_pooler = PoolPlan.from_settings(
        processes=12, concurrency_per_process=16, max_connections=100, pgbouncer="transaction"
    )
    assert with_pooler.fits
    assert with_pooler.pool_size == 16
    assert with_pooler.engine_kwargs()["connect_args"]["prepare_threshold"] is None
    assert with_pooler.async_engine_kwargs()["connect_args"]["statement_cache_size"] == 0


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"processes": 0}, r"processes=0: use a whole number >= 1"),
        ({"pgbouncer": "statement"}, "pgbouncer="),
        ({"timeout_s": 0}, r"timeout_s=0: use a finite number > 0"),
        ({"timeout_s": math.nan}, r"timeout_s=nan: use a finite number > 0 \(seconds"),
        ({"timeout_s": math.inf}, r"timeout_s=inf: use a finite number > 0"),
        ({"timeout_s": "5"}, r"timeout_s='5': use a finite number > 0"),
        ({"max_connections": 0}, r"max_connections=0: use a whole number >= 1 \(.*SHOW"),
        ({"max_connections": -5}, r"max_connections=-5: use a whole number >= 1"),
        ({"max_connections": 100.5}, r"max_connections=100.5: use a whole number"),
        ({"concurrency_per_process": True}, r"concurrency_per_process=True: use a whole"),
        ({"headroom": -1}, r"headroom=-1: use a whole number >= 0"),
        ({"replicas": -1}, r"replicas=-1: use a whole number >= 0"),
        ({"other_clients": -1}, r"other_clients=-1"),
        ({"superuser_reserved_connections": -1}, r"superuser_reserved_connections=-1"),
        ({"server_cores": 0}, r"server_cores=0: use a whole number >= 1, or None for unknown"),
        ({"lifetime_jitter": math.nan}, r"lifetime_jitter=nan: .* >= 0 and < 1"),
        ({"lifetime_jitter": 1}, r"lifetime_jitter=1: .* >= 0 and < 1"),
        ({"validate_idle_s": -math.inf}, r"validate_idle_s=-inf: .*or None for never ping"),
        ({"max_lifetime_s": math.nan}, r"max_lifetime_s=nan: .*or None for unlimited"),
        ({"leak_threshold_s": 0}, r"leak_threshold_s=0: use a finite number > 0"),
    ],
)
@pytest.mark.faults
def test_bad_plan_input_names_the_value_and_the_fix(
    options: dict[str, object], needle: str
) -> None:
    settings: dict[str, object] = {
        "processes": 1,
        "concurrency_per_process": 4,
        "max_connections": 100,
        **options,
    }
    with pytest.raises(PoolConfigError, match=needle):
        PoolPlan.from_settings(**settings)  # type: ignore[arg-type]


@pytest.mark.faults
def test_instrument_pool_and_metered_pools_refuse_nan_and_infinities() -> None:
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    for option in ("leak_threshold_s", "validate_idle_s", "max_lifetime_s", "lifetime_jitter"):
        for bad in (math.nan, math.inf):
            with pytest.raises(PoolConfigError, match=f"{option}={bad}: use a finite number"):
                instrument_pool(engine, **{option: bad})  # type: ignore[arg-type]
    with pytest.raises(PoolConfigError, match="validate_idle_s=nan"):
        MeteredConnectionPool("", validate_idle_s=math.nan, open=False)


def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(PoolConfigError, match="could not read connection settings from primary"):
        PoolPlan.for_app(
            processes=1,
            concurrency_per_process=1,
            server_url="postgresql+psycopg://nobody:x@127.0.0.1:1/none",
        )


@pytest.fixture
def limited_role(hotpath_db: ModuleDatabase) -> Iterator[str]:
    """A login role with CONNECTION LIMIT 6 (limits do not apply to superusers)."""
    role, password = f"pool_app_{secrets.token_hex(3)}", secrets.token_hex(8)
    with psycopg.connect(hotpath_db.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' CONNECTION LIMIT 6")
    url = hotpath_db.url.replace(
        hotpath_db.url.split("//", 1)[1].split("@", 1)[0], f"{role}:{password}"
    )
    try:
        yield url
    finally:
        with psycopg.connect(hotpath_db.dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                [role],
            )
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_planned_pools_stay_within_a_role_limit_where_naive_pools_fail(limited_role: str) -> None:
    plan = PoolPlan.for_app(processes=2, concurrency_per_process=5, server_url=limited_role)
    assert plan.primary.role_limit == 6
    assert plan.pool_size == 3  # 6 slots for the role / 2 processes
    assert "CONNECTION LIMIT 6" in plan.explain()

    def fill(engines: list) -> None:  # type: ignore[type-arg]
        held = []
        try:
            for engine in engines:
                for _ in range(engine.pool.size()):
                    conn = engine.connect()
                    held.append(conn)
                    conn.execute(text("SELECT 1"))
        finally:
            for conn in held:
                conn.close()

    planned = [create_engine(limited_role, **plan.engine_kwargs()) for _ in range(2)]
    for engine in planned:
        plan.instrument(engine)
    naive = [create_engine(limited_role, pool_size=5, max_overflow=0) for _ in range(2)]
    try:
        fill(planned)  # two processes' pools at full size: 6 connections, all accepted
        with pytest.raises(Exception, match="too many connections for role"):
            fill(naive)  # the 7th of 10 connections is refused by the server
    finally:
        for engine in planned + naive:
            engine.dispose()
