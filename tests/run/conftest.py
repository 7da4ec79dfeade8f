"""Helpers for ``hotpath run`` tests: the command as a real subprocess, a payment stub on
loopback, a bounded load, and the planted apps' lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from hotpath.stack._process import free_ports
from tests.helpers import LoopbackHTTPServer

STUB_LATENCY_S = 0.03
START_TIMEOUT_S = 60.0


class _Payments(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        # the provider's own latency: waiting on I/O, as a real one would
        threading.Event().wait(STUB_LATENCY_S)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def payments_url() -> Iterator[str]:
    server = LoopbackHTTPServer(("127.0.0.1", 0), _Payments)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def hotpath_run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``hotpath run ARGS`` as a real process (the console script's code path)."""
    return subprocess.Popen(
        [sys.executable, "-m", "hotpath", "run", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def port() -> int:
    return free_ports(1)[0]


def wait_listening(process: subprocess.Popen[str], port: int) -> None:
    """Until something accepts connections on ``port`` (the server's socket is bound), or
    the process ended."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the run ended early ({process.returncode}):\n{out}\n{err}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        threading.Event().wait(0.05)  # polling a port: nothing to be notified by
    raise AssertionError(f"nothing listens on {port} after {START_TIMEOUT_S} s")


def load(run: subprocess.Popen[str], base_url: str, paths: list[str], concurrency: int = 4) -> int:
    """GET each path once, ``concurrency`` at a time; the number of 200 answers. On a
    failure, the run is stopped and its output shown."""
    try:
        with httpx.Client(base_url=base_url, timeout=30) as client:

            def get(path: str) -> int:
                return client.get(path).status_code

            with ThreadPoolExecutor(concurrency) as pool:
                statuses = list(pool.map(get, paths))
    except httpx.HTTPError as exc:
        out, err = interrupt(run)
        raise AssertionError(f"{exc!r} under load; the run's output:\n{out}\n{err}") from exc
    assert statuses == [200] * len(paths), statuses
    return len(paths)


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def interrupt(process: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[str, str]:
    """Send ``sig`` to ``hotpath run`` alone (as ``kill -INT`` would) and wait for it."""
    process.send_signal(sig)
    out, err = process.communicate(timeout=90)
    return out, err


def read_report(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "hotpath-report.json").read_text())


def planted_line(source: str, marker: str) -> int:
    """The line of ``source`` tagged ``# PLANT: marker``."""
    for number, line in enumerate(source.splitlines(), 1):
        if line.rstrip().endswith(f"# PLANT: {marker}"):
            return number
    raise AssertionError(f"no line tagged {marker}")


def site_line(call_site: str | None) -> str:
    """``planted.py:12`` of ``/tmp/.../planted.py:12 in orders``."""
    assert call_site is not None
    where = call_site.split(" in ")[0]
    path, _, line = where.rpartition(":")
    return f"{Path(path).name}:{line}"
