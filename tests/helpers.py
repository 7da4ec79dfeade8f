"""Small helpers shared by the tests."""

from __future__ import annotations

from typing import Any

import psutil

from hotpath.stack import PostgresServer


def execute(server: PostgresServer, database: str, sql: str, params: Any = None) -> None:
    with server.connect(database) as conn:
        conn.execute(sql, params)


def scalar(server: PostgresServer, database: str, sql: str, params: Any = None) -> Any:
    with server.connect(database) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def alive(pids: list[int]) -> list[int]:
    """The PIDs still running (zombies waiting to be reaped are not running)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running
