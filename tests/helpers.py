"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
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


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Until ``check()`` holds, or fail naming ``what`` after ``timeout`` seconds (a state
    another process reaches, with nothing to be notified by)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


async def eventually_async(check: Callable[[], bool], timeout: float, what: str) -> None:
    """``eventually`` for a test running on an event loop: the loop's tasks run meanwhile."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server for stubs: its listen backlog takes a burst of concurrent
    connects (the default 5 made a concurrent fan-out wait 1 s for SYN retries, and look
    sequential to the detectors)."""

    request_queue_size = 128
    daemon_threads = True
