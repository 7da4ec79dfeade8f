"""Helpers for the routing tests: where did a statement run, and wait for a condition."""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import text

from tests.helpers import eventually

__all__ = ["PORT", "VALUE", "eventually", "signal_all"]

PORT = text("SELECT inet_server_port()")
VALUE = text("SELECT value FROM counters WHERE id = :id")


def signal_all(processes: list[Any], sig: int) -> None:
    """Send ``sig`` to each process still there (backends come and go)."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
