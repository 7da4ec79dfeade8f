"""Start-up and teardown guarantees, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotpath.stack import LocalStack, StackError, reap_stale_stacks, stack_root
from hotpath.stack._process import port_is_free
from hotpath.stack._stack import _Owner

from ..helpers import alive, scalar

DEBIAN_PG15 = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
def isolated_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stack root of this test's own, so reaping never touches the session stack."""
    root = stack_root() / f"isolated-{secrets.token_hex(4)}"
    root.mkdir(parents=True)
    root.chmod(0o711)
    monkeypatch.setenv("HOTPATH_STACK_ROOT", str(root))
    yield root
    for directory in root.glob("*"):
        if (directory / "stack.json").exists():
            LocalStack.attach(directory).stop()
    os.rmdir(root)


def test_teardown_leaves_no_process_no_port_no_directory(isolated_root: Path) -> None:
    with LocalStack(replicas=1, redis=True) as stack:
        processes, ports, directory = stack.processes(), stack.ports(), stack.directory
        assert len(processes) > 4  # postmasters, their children, redis
        assert not any(port_is_free(p) for p in ports)
        assert stack.startup_seconds is not None
    assert alive(processes) == []
    assert all(port_is_free(p) for p in ports)
    assert directory is not None
    assert not directory.exists()


_OWNER = textwrap.dedent(
    """
    import json, sys, time
    from hotpath.stack import LocalStack
    stack = LocalStack(replicas=1, redis=True, stop_on_signals=True).start()
    print(json.dumps({"pids": stack.processes(), "ports": stack.ports(),
                      "dir": str(stack.directory)}), flush=True)
    time.sleep(120)
    """
)


def _start_owner() -> tuple[subprocess.Popen[str], dict[str, object]]:
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line, "the owner process did not start its stack"
    return owner, json.loads(line)


def test_sigterm_of_the_owner_stops_its_stack(isolated_root: Path) -> None:
    owner, info = _start_owner()
    owner.send_signal(signal.SIGTERM)
    assert owner.wait(timeout=30) == -signal.SIGTERM  # default action still happens
    assert alive(info["pids"]) == []  # type: ignore[arg-type]
    assert all(port_is_free(p) for p in info["ports"])  # type: ignore[attr-defined]
    assert not Path(str(info["dir"])).exists()


_DEFAULT_HANDLERS = textwrap.dedent(
    """
    import signal
    from hotpath.stack import LocalStack
    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)]
    with LocalStack(replicas=0, redis=True, postgres=False):
        during = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)]
    print(before == during, flush=True)
    """
)


def test_a_stack_installs_no_signal_handler_unless_asked(isolated_root: Path) -> None:
    """Signal handlers belong to the application: library code leaves them alone."""
    checked = subprocess.run(
        [sys.executable, "-c", _DEFAULT_HANDLERS],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "True"


def test_stack_of_a_killed_owner_is_reaped_on_next_start(isolated_root: Path) -> None:
    owner, info = _start_owner()
    owner.kill()  # SIGKILL: no handler runs, the servers are orphaned...
    owner.wait(timeout=10)
    pids = info["pids"]
    assert alive(pids)  # type: ignore[arg-type]
    reaped = reap_stale_stacks()  # ...until the next start reaps them (LocalStack.start does this)
    assert [str(p) for p in reaped] == [info["dir"]]
    assert alive(pids) == []  # type: ignore[arg-type]
    assert all(port_is_free(p) for p in info["ports"])  # type: ignore[attr-defined]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's start time: /proc")
def test_a_stepped_wall_clock_leaves_a_live_owner_alive() -> None:
    """A record made before the clock was stepped an hour: the owner still runs (the
    creation time psutil gives has moved with the boot time, the kernel's start has not)."""
    me = _Owner.of(os.getpid())
    assert me is not None
    assert not me.is_gone()
    assert not _Owner(me.pid, me.created - 3600, me.since_boot).is_gone()
    assert _Owner(me.pid, me.created, (me.since_boot or 0) - 1).is_gone()  # a reused PID
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert _Owner(int(dead.stdout), me.created, me.since_boot).is_gone()


def test_port_in_use_is_a_clear_error(isolated_root: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = LocalStack(replicas=0, redis=False, port=port)
        with pytest.raises(StackError, match=rf"port {port} .* already in use") as info:
            stack.start()
    assert "choose another port" in str(info.value)


def test_directory_that_is_not_ours_is_left_untouched(isolated_root: Path) -> None:
    foreign = isolated_root / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(StackError, match="holds no hotpath stack; refusing to touch it"):
        LocalStack(replicas=0, redis=False, directory=foreign).start()
    assert (foreign / "precious.txt").read_text() == "keep me"
    (foreign / "precious.txt").unlink()
    foreign.rmdir()


def test_running_stack_directory_is_not_reused(isolated_root: Path) -> None:
    directory = isolated_root / "busy"
    second = LocalStack(replicas=0, redis=False, directory=directory)
    with (
        LocalStack(replicas=0, redis=False, directory=directory),
        pytest.raises(StackError, match="already running"),
    ):
        second.start()


def test_missing_binaries_name_the_fix(
    monkeypatch: pytest.MonkeyPatch, isolated_root: Path
) -> None:
    monkeypatch.setenv("HOTPATH_PG_BIN", "/nonexistent/bin")
    with pytest.raises(StackError, match=r"HOTPATH_PG_BIN=/nonexistent/bin lacks postgres"):
        LocalStack(replicas=0, redis=False).start()
    monkeypatch.delenv("HOTPATH_PG_BIN")
    monkeypatch.setenv("HOTPATH_REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(StackError, match=r"HOTPATH_REDIS_SERVER=.* is not an executable"):
        LocalStack(replicas=0, redis=True).start()
    assert list(isolated_root.iterdir()) == []  # nothing was started or left behind


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"replicas": -1}, "replicas=-1"),
        ({"port": 80}, "port=80"),
        ({"postgres": False, "replicas": 1}, "need PostgreSQL"),
    ],
)
def test_bad_arguments_are_rejected_before_anything_starts(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(StackError, match=message):
        LocalStack(**kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(not (DEBIAN_PG15 / "postgres").exists(), reason="no Debian PostgreSQL 15")
def test_hotpath_pg_bin_selects_other_postgresql_binaries(
    monkeypatch: pytest.MonkeyPatch, isolated_root: Path
) -> None:
    monkeypatch.setenv("HOTPATH_PG_BIN", str(DEBIAN_PG15))
    with LocalStack(replicas=1, redis=False) as stack:
        assert int(scalar(stack.primary, "postgres", "SHOW server_version_num")) // 10000 == 15
        stack.primary.connect().execute("CREATE TABLE t AS SELECT 1 AS x").close()
        stack.wait_replicas_caught_up(timeout=10)
        assert scalar(stack.replicas[0], "postgres", "SELECT x FROM t") == 1
        assert scalar(stack.primary, "postgres", "SELECT count(*) FROM pg_stat_statements") > 0


def test_startup_budget_is_reported(isolated_root: Path) -> None:
    began = time.monotonic()
    with LocalStack(replicas=2, redis=True) as stack:
        elapsed = time.monotonic() - began
        assert stack.startup_seconds is not None
        assert 0 < stack.startup_seconds <= elapsed
        state = json.loads((stack.directory / "stack.json").read_text())  # type: ignore[operator]
        assert state["startup_seconds"] == stack.startup_seconds


def test_a_crashed_stack_in_a_directory_is_cleared_and_started_again(isolated_root: Path) -> None:
    directory = isolated_root / "dev"
    crashed = LocalStack(replicas=0, redis=True, postgres=False, directory=directory).start()
    pids = crashed.processes()
    for pid in pids:  # the servers die; their state file stays behind
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (directory / "stack.json").exists()
    with LocalStack(replicas=0, redis=True, postgres=False, directory=directory) as again:
        assert again.directory == directory
        assert alive(again.processes())


_SIGNAL_DURING_STOP = textwrap.dedent(
    """
    import os, signal, sys, time
    from hotpath.stack import LocalStack, _stack
    stack = LocalStack(replicas=0, redis=True, postgres=False, stop_on_signals=True).start()
    print(stack.directory, flush=True)
    with _stack._attached_lock:  # as a first signal's handler does while it stops stacks
        os.kill(os.getpid(), signal.SIGTERM)  # ...a second signal lands in the same thread
    time.sleep(60)
    """
)


def test_a_signal_during_the_stop_on_signal_does_not_deadlock(isolated_root: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _SIGNAL_DURING_STOP], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    directory = Path(owner.stdout.readline().strip())
    assert owner.wait(timeout=30) == -signal.SIGTERM
    assert not directory.exists()
