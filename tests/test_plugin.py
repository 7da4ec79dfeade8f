"""The pytest plugin: fresh databases per module, and external servers via HOTPATH_TEST_*."""

from __future__ import annotations

import textwrap

import pytest

from hotpath.testing import ModuleDatabase, ServerStack

from .helpers import scalar

_MODULE = textwrap.dedent(
    """
    from hotpath.testing import ExternalStack

    def test_fresh_database(hotpath_stack, hotpath_db):
        assert isinstance(hotpath_stack, ExternalStack)   # no stack of its own was started
        with hotpath_stack.primary.connect(hotpath_db.name) as conn:
            conn.execute("CREATE TABLE shared_name (id int)")   # fails if the db were shared
            conn.execute("INSERT INTO shared_name VALUES (1)")
        hotpath_stack.wait_replicas_caught_up(timeout=10)
        with hotpath_stack.replicas[0].connect(hotpath_db.name) as conn:
            assert conn.execute("SELECT count(*) FROM shared_name").fetchone() == (1,)

    def test_local_only_fixture_skips(hotpath_local_stack):
        raise AssertionError("must be skipped with external servers")
    """
)

_REDIS_ONLY = textwrap.dedent(
    """
    import redis

    def test_redis_alone_makes_no_database(hotpath_stack, hotpath_redis):
        with hotpath_stack.primary.connect() as conn:
            made = conn.execute(
                "SELECT count(*) FROM pg_database WHERE datname ~ '^t_test_redis_only_'"
            ).fetchone()
        assert made == (0,)
        with redis.Redis.from_url(hotpath_redis) as client:
            assert client.dbsize() == 0  # flushed for this module
    """
)


def test_each_module_gets_a_fresh_database_on_external_servers(
    pytester: pytest.Pytester, hotpath_stack: ServerStack
) -> None:
    pytester.makepyfile(test_one=_MODULE, test_two=_MODULE, test_redis_only=_REDIS_ONLY)
    env = {
        "HOTPATH_TEST_PRIMARY_URL": hotpath_stack.primary.url,
        "HOTPATH_TEST_REPLICA_URLS": ",".join(r.url for r in hotpath_stack.replicas),
        "HOTPATH_TEST_REDIS_URL": hotpath_stack.redis_url,
    }
    for key, value in env.items():
        pytester._monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, skipped=2)
    # both modules' databases were dropped afterwards
    leftover = scalar(
        hotpath_stack.primary,
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname ~ '^t_test_(one|two)_'",
    )
    assert leftover == 0


def test_module_database_is_empty_and_reachable_everywhere(
    hotpath_stack: ServerStack, hotpath_db: ModuleDatabase
) -> None:
    assert hotpath_db.name.startswith("t_tests_test_plugin_")
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert scalar(hotpath_stack.primary, hotpath_db.name, tables) == 0
    for replica in hotpath_stack.replicas:
        assert scalar(replica, hotpath_db.name, "SELECT current_database()") == hotpath_db.name
    assert "pg_stat_statements" in str(
        scalar(
            hotpath_stack.primary, hotpath_db.name, "SELECT array_agg(extname) FROM pg_extension"
        )
    )


def test_hotpath_redis_is_the_redis_database_of_hotpath_db(
    hotpath_db: ModuleDatabase, hotpath_redis: str
) -> None:
    assert hotpath_redis == hotpath_db.redis_url


def test_xdist_workers_take_disjoint_redis_databases() -> None:
    """Workers sharing external servers never flush each other's Redis database."""
    from hotpath.testing import module_redis_db

    for workers in (2, 3, 4, 8, 16):
        taken = [
            {
                module_redis_db(
                    n,
                    {"PYTEST_XDIST_WORKER": f"gw{w}", "PYTEST_XDIST_WORKER_COUNT": str(workers)},
                )
                for n in range(1, 40)
            }
            for w in range(workers)
        ]
        every = [db for dbs in taken for db in dbs]
        assert len(every) == len(set(every)), workers  # no database in two workers' sets
        assert all(0 <= db < 16 for db in every)
    assert {module_redis_db(n, {}) for n in range(1, 40)} == set(range(16))
