"""Fixtures for doctor's tests: a database on the session stack (PostgreSQL 18, no HypoPG) and a
PostgreSQL 15 server with HypoPG (Debian's binaries, as CI installs them)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hotpath.doctor._session import libpq_url

PG15_BIN = "/usr/lib/postgresql/15/bin"
HYPOPG = Path("/usr/share/postgresql/15/extension/hypopg.control")


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_url(url), autocommit=True)


def flush_stats(conn: psycopg.Connection[Any]) -> None:
    """Make this session's table/statement counters visible to other sessions now."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


@pytest.fixture(scope="session")
def pg15_url() -> Iterator[str]:
    """A database on a PostgreSQL 15 server with HypoPG created in it."""
    if not HYPOPG.exists():
        pytest.skip("needs postgresql-15-hypopg (make system-deps)")
    from hotpath.stack import LocalStack

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOTPATH_PG_BIN", PG15_BIN)
        stack = LocalStack(replicas=0, redis=False).start()
    try:
        name = f"doctor_{secrets.token_hex(3)}"
        with stack.primary.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = stack.primary.url_for(name)
        with connect(url) as conn:
            conn.execute("CREATE EXTENSION hypopg")
        yield url
    finally:
        stack.stop()
