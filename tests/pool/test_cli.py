"""``hotpath pool plan`` on the real server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hotpath.pool import PoolConfigError
from hotpath.pool._cli import pool_app
from hotpath.testing import ModuleDatabase

runner = CliRunner()


def test_plan_prints_the_arithmetic_and_exits_by_fit(hotpath_db: ModuleDatabase) -> None:
    fits = runner.invoke(
        pool_app, ["--processes", "2", "--concurrency", "8", "--url", hotpath_db.url]
    )
    assert fits.exit_code == 0, fits.output
    assert "pool_size=8, max_overflow=0" in fits.output
    over = runner.invoke(
        pool_app,
        ["--processes", "100", "--concurrency", "10", "--url", hotpath_db.url, "--json"],
        env={"HOTPATH_REPLICA_URLS": ",".join(hotpath_db.replica_urls)},
    )
    assert over.exit_code == 1
    data = json.loads(over.output)
    assert data["fits"] is False
    assert data["total_connections"] <= 300
    assert data["replica_pool_size"] == data["pool_size"]
    assert "PgBouncer in transaction mode" in data["warnings"][0]


def test_plan_without_a_server_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOTPATH_PRIMARY_URL", raising=False)
    result = runner.invoke(pool_app, ["--processes", "1", "--concurrency", "1"])
    assert isinstance(result.exception, PoolConfigError)
    assert "pass --url or set HOTPATH_PRIMARY_URL" in str(result.exception)
