"""Read-your-writes SQL helpers: the server-side wait for a replica to replay a token, and the
primary's WAL position (sync Engine API, shared by the sessions of both twins). The check
itself is ``_reads.route_read`` (generated from ``_async_reads.py``)."""

from __future__ import annotations

from sqlalchemy import Connection, Engine

from ._lsn import format_lsn
from ._probe import WRITE_POSITION_SQL, parse_position


def wait_sql(token: int, timeout_s: float) -> str:
    """A DO block that returns once the replica replayed ``token`` or ``timeout_s`` passed."""
    return (
        "DO $$ DECLARE deadline timestamptz := clock_timestamp() + "
        f"interval '{timeout_s:.3f} seconds'; BEGIN "
        f"WHILE pg_last_wal_replay_lsn() < '{format_lsn(token)}'::pg_lsn "
        "AND clock_timestamp() < deadline LOOP PERFORM pg_sleep(0.002); END LOOP; END $$"
    )


def write_position(bind: Engine | Connection) -> int | None:
    """The primary's WAL position now (after a COMMIT: at or past its commit record)."""
    if isinstance(bind, Connection):
        return parse_position(bind.exec_driver_sql(WRITE_POSITION_SQL).scalar())
    with bind.connect() as conn:
        position = parse_position(conn.exec_driver_sql(WRITE_POSITION_SQL).scalar())
        conn.rollback()
    return position
