"""``hotpath routing status`` (the command hotpath.cli registers as ``hotpath routing``)."""

from __future__ import annotations

import orjson
from typer.testing import CliRunner

from hotpath.routing._cli import routing_app
from hotpath.testing import ModuleDatabase, ServerStack


def test_status_shows_each_node_and_fails_on_a_lagging_replica(
    hotpath_stack: ServerStack, hotpath_db: ModuleDatabase
) -> None:
    args = ["status", "--primary", hotpath_db.url]
    for url in hotpath_db.replica_urls:
        args += ["--replica", url]
    runner = CliRunner()
    result = runner.invoke(routing_app, [*args, "--probe-for-s", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    nodes = orjson.loads(result.output)
    assert [(n["name"], n["role"], n["healthy"]) for n in nodes] == [
        ("primary", "primary", True),
        ("replica1", "replica", True),
        ("replica2", "replica", True),
    ]
    lagging = hotpath_stack.replicas[0]
    lagging.pause_replay()
    try:
        with hotpath_stack.primary.connect(hotpath_db.name) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS cli_lag (id int)")
            for _ in range(5):
                conn.execute("INSERT INTO cli_lag VALUES (1)")
        result = runner.invoke(routing_app, [*args, "--max-lag-s", "0.05", "--probe-for-s", "1.5"])
    finally:
        lagging.resume_replay()
    assert result.exit_code == 1
    assert "replica1" in result.output
    assert "lagging" in result.output
