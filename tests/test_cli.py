"""The hotpath command line, run as a user would: in a subprocess."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import sys

import psycopg
import pytest

from hotpath.stack import LocalStack, stack_root
from hotpath.stack._process import port_is_free

from .helpers import alive

HOTPATH = [sys.executable, "-m", "hotpath"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HOTPATH, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("stack", "demo"):
        assert command in result.stdout
    stack_help = run("stack", "--help")
    for command in ("up", "status", "down"):
        assert command in stack_help.stdout


def test_stack_up_status_down_round_trip() -> None:
    directory = stack_root() / f"cli-{secrets.token_hex(4)}"
    up = run("stack", "up", "--replicas", "1", "--dir", str(directory))
    assert up.returncode == 0, up.stderr
    exports = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in up.stdout.splitlines()
    )
    assert set(exports) == {"HOTPATH_PRIMARY_URL", "HOTPATH_REPLICA_URLS", "HOTPATH_REDIS_URL"}
    stack = LocalStack.attach(directory)
    processes, ports = stack.processes(), stack.ports()
    try:
        # the detached stack outlived the `up` process and serves the printed URLs
        primary_dsn = exports["HOTPATH_PRIMARY_URL"].replace("postgresql+psycopg", "postgresql")
        with psycopg.connect(primary_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE cli_probe AS SELECT 42 AS answer")
        stack.wait_replicas_caught_up(timeout=10)
        replica_dsn = exports["HOTPATH_REPLICA_URLS"].replace("postgresql+psycopg", "postgresql")
        with psycopg.connect(replica_dsn) as conn:
            assert conn.execute("SELECT answer FROM cli_probe").fetchone() == (42,)

        status = run("stack", "status", "--dir", str(directory), "--json")
        assert status.returncode == 0, status.stderr
        rows = {row["name"]: row for row in json.loads(status.stdout)}
        assert rows["primary"]["role"] == "primary"
        assert rows["replica1"]["role"] == "replica"
        assert rows["replica1"]["lag_bytes"] == 0
        assert rows["redis"]["running"] is True
        table = run("stack", "status", "--dir", str(directory))
        assert "replica1" in table.stdout
    finally:
        down = run("stack", "down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    assert alive(processes) == []
    assert all(port_is_free(p) for p in ports)
    assert not directory.exists()

    after = run("stack", "status", "--dir", str(directory))
    assert after.returncode == 2
    assert "no hotpath stack in" in after.stderr
    assert "Traceback" not in after.stderr


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"HOTPATH_PG_BIN": "/nonexistent"}, ["stack", "up"], "HOTPATH_PG_BIN=/nonexistent lacks"),
        ({}, ["stack", "down", "--dir", "/nonexistent/stack"], "no hotpath stack in"),
        ({}, ["stack", "up", "--dir", "/etc"], "holds no hotpath stack; refusing to touch it"),
    ],
)
def test_bad_input_is_one_clear_line(env: dict[str, str], args: list[str], message: str) -> None:
    result = run(*args, env={"HOTPATH_STACK_DIR": str(stack_root() / "never-used"), **env})
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one message, not a traceback


def test_demo_shows_urls_and_a_replica_receiving_a_write() -> None:
    result = run("demo", "--smoke", "--rows", "500", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "HOTPATH_PRIMARY_URL=postgresql+psycopg://" in result.stdout
    assert "HOTPATH_REDIS_URL=redis://" in result.stdout
    lines = [line for line in result.stdout.splitlines() if "│ replica" in line]
    assert len(lines) >= 2
    assert all(" 500 " in line for line in lines[:2])  # each replica saw all 500 rows
    assert "still shows 500" in result.stdout  # the paused replica lagged behind 501
    assert "after resume it shows 501" in result.stdout


_ONE_LINE_CASES = [
    (["doctor", "postgresql://x@127.0.0.1:1/x", "--format", "xml"], "'text', 'html', 'json'"),
    (["doctor", "postgresql://x@127.0.0.1:1/x", "--fail-on", "bogus"], "'warning', 'critical'"),
    (["pool", "plan", "--processes", "0", "--concurrency", "1"], "greater than or equal to 1"),
    (["pool", "plan", "--processes", "-1", "--concurrency", "1"], "greater than or equal to 1"),
    (["pool", "plan", "--processes", "1", "--concurrency", "abc"], "valid integer"),
    (["pool", "plan", "--bogus"], "No such option: --bogus"),
    (["routing", "status", "--primary", "notaurl"], "'notaurl' is not a database URL"),
    (["partitions"], "use one of ensure, detach, check"),
    (["bogus"], "No such command 'bogus': use one of demo, doctor"),
    (["doctor"], "Missing argument"),
    ([], "use one of demo, doctor"),
]


@pytest.mark.faults
@pytest.mark.parametrize(("args", "names"), _ONE_LINE_CASES)
def test_bad_input_is_one_line_and_exit_2(args: list[str], names: str) -> None:
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # no usage box, no traceback
    assert lines[0].startswith("error: ")
    assert names in lines[0]


@pytest.mark.faults
def test_routing_status_with_a_black_holed_primary_is_one_line() -> None:
    # A listener that never accepts: the TCP handshake completes, the server never answers.
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        port = black_hole.getsockname()[1]
        result = run("routing", "status", "--primary", f"postgresql+psycopg://x@127.0.0.1:{port}/x")
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"the primary at 127.0.0.1:{port}/x did not answer" in lines[0]


def test_help_still_works_on_every_level() -> None:
    for args in (["--help"], ["pool", "--help"], ["pool", "plan", "--help"], ["--version"]):
        result = run(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout
