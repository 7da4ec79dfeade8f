"""Helpers for the routing tests: where did a statement run, and wait for a condition."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.helpers import eventually

__all__ = ["PORT", "RYW_ROUNDS", "VALUE", "eventually", "signal_all"]

# Write-then-read iterations of the read-your-writes stress tests (replay paused and resumed
# every 50): enough for the eventual path to serve stale reads every run; the fault suite
# takes more with HOTPATH_FAULT_ROUNDS.
RYW_ROUNDS = int(os.environ.get("HOTPATH_FAULT_ROUNDS", "600"))

PORT = text("SELECT inet_server_port()")
VALUE = text("SELECT value FROM counters WHERE id = :id")


def signal_all(processes: list[Any], sig: int) -> None:
    """Send ``sig`` to each process still there (backends come and go)."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)


class _Base(DeclarativeBase):
    pass


class Counter(_Base):
    """The ``counters`` table of the routing tests' database (``conftest.engines``), mapped."""

    __tablename__ = "counters"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int]
