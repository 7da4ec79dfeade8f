"""On-the-spot read-your-writes checks: has this replica replayed the token? (optionally wait)

Written against the sync Engine API, which also runs inside an ``AsyncSession`` (SQLAlchemy
calls ``Session.get_bind`` and ORM events in its greenlet, where sync I/O is awaited), so the
session twins share it. The wait happens on the server (a PL/pgSQL loop), so it does not
block an event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine

from ._lsn import format_lsn
from ._probe import REPLAYED_SQL, WRITE_POSITION_SQL, parse_position
from ._router import RoutedNode, RouterCore


def wait_sql(token: int, timeout_s: float) -> str:
    """A DO block that returns once the replica replayed ``token`` or ``timeout_s`` passed."""
    return (
        "DO $$ DECLARE deadline timestamptz := clock_timestamp() + "
        f"interval '{timeout_s:.3f} seconds'; BEGIN "
        f"WHILE pg_last_wal_replay_lsn() < '{format_lsn(token)}'::pg_lsn "
        "AND clock_timestamp() < deadline LOOP PERFORM pg_sleep(0.002); END LOOP; END $$"
    )


def replayed_on(
    router: RouterCore,
    node: RoutedNode,
    token: int,
    wait_s: float | None,
    cap: Callable[[int], int],
) -> tuple[int | None, int]:
    """The position ``node`` has replayed, once past ``token`` or after waiting up to ``wait_s``.

    Returns it with the token it was checked against: ``cap(token)`` when the replica is
    behind ``token`` (a token beyond the primary's position is cut to it before any wait).
    """
    router.counters["token checks"] += 1
    with node.bind.connect() as conn:
        position = _replayed(conn)
        if position is None or position < token:
            token = cap(token)
        if (position is None or position < token) and wait_s:
            router.counters["token waits"] += 1
            conn.exec_driver_sql(wait_sql(token, wait_s))
            position = _replayed(conn)
        conn.rollback()
    return position, token


def write_position(bind: Engine | Connection) -> int | None:
    """The primary's WAL position now (after a COMMIT: at or past its commit record)."""
    if isinstance(bind, Connection):
        return parse_position(bind.exec_driver_sql(WRITE_POSITION_SQL).scalar())
    with bind.connect() as conn:
        position = parse_position(conn.exec_driver_sql(WRITE_POSITION_SQL).scalar())
        conn.rollback()
    return position


def _replayed(conn: Any) -> int | None:
    return parse_position(conn.exec_driver_sql(REPLAYED_SQL).scalar())
