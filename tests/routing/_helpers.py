"""Helpers for the routing tests: where did a statement run, and wait for a condition."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

PORT = text("SELECT inet_server_port()")
VALUE = text("SELECT value FROM counters WHERE id = :id")


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def signal_all(processes: list[Any], sig: int) -> None:
    """Send ``sig`` to each process still there (backends come and go)."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
