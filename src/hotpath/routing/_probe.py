"""The SQL the router runs (probe, on-the-spot replay check, token), how to read the answers,
and what a driver error means for a node."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from ._health import ProbeResult
from ._lsn import parse_lsn
from ._router import RoutedNode, RouterCore

# One round trip that works on either role, so a promotion shows up in the same probe.
# A primary's position is what it has flushed: all that its replicas can have (a walsender
# streams flushed WAL only), so lag is measured against it. Not its insert position: reads
# write WAL too (HOT pruning; hint-bit page images under data checksums) in transactions that
# end with ROLLBACK, as a Session's do, and nothing flushes that WAL before the next commit or
# a full WAL page. Measured against it, the caught-up replicas of a primary serving reads
# lagged more seconds every probe and were ejected. Tokens stay insert positions
# (WRITE_POSITION_SQL). Timelines: a primary's is in the name of its current WAL file
# (exact, unlike pg_control_checkpoint(), which changes only at the next checkpoint after a
# promotion); a replica's is the one its WAL receiver streams (NULL when it streams nothing,
# or the user lacks pg_read_all_stats).
PROBE_SQL = (
    "SELECT pg_is_in_recovery(),"
    " (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_flush_lsn() END)::text,"
    " coalesce(CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END, false),"
    " CASE WHEN pg_is_in_recovery() THEN"
    " (SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming' LIMIT 1)"
    " ELSE ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int"
    " END"
)
# Taken after COMMIT: the commit record ends at or before this position.
# The insert position, not pg_current_wal_lsn() (written so far): with synchronous_commit=off
# COMMIT returns before its record is written, and a token short of it lets a replica that
# lacks the commit count as caught up.
WRITE_POSITION_SQL = "SELECT pg_current_wal_insert_lsn()::text"
# What a token beyond the primary is capped with (RouterCore.cap_token): the insert position
# that tells a forged token, and the flushed one it is cut to (replicas can reach only that).
CAP_POSITIONS_SQL = "SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text"
REPLAYED_SQL = "SELECT pg_last_wal_replay_lsn()::text"
READ_ONLY_SQL = "SET default_transaction_read_only = on"

_LIBPQ_DRIVERS = {"psycopg", "psycopg2", "psycopg_async", "psycopg2cffi"}


class ProbeFailed(Exception):
    """A probe answered something unusable (not a connection error)."""


def parse_probe_row(row: Sequence[Any] | None) -> ProbeResult:
    if row is None or row[1] is None:
        raise ProbeFailed("the server reported no WAL position yet")
    timeline = None if len(row) < 4 or row[3] is None else int(row[3])
    return ProbeResult(
        in_recovery=bool(row[0]),
        lsn=parse_lsn(row[1]),
        replay_paused=bool(row[2]),
        timeline=timeline,
    )


def parse_position(value: Any) -> int | None:
    return None if value is None else parse_lsn(str(value))


def probe_engine_options(url: URL, timeout_s: float) -> dict[str, Any]:
    """``create_engine`` options for a node's private probe pool: one connection, strict timeouts.

    Timeouts are passed the way each driver takes them; a hung server that neither answers nor
    drops the connection is still caught, by the router's probe deadline.
    """
    millis = max(1, int(timeout_s * 1000))
    driver = url.get_driver_name()
    connect_args: dict[str, Any] = {}
    if driver in _LIBPQ_DRIVERS:
        # libpq rounds connect_timeout up to at least 2 s.
        connect_args = {
            "connect_timeout": max(2, math.ceil(timeout_s)),
            "options": f"-c statement_timeout={millis}",
        }
    elif driver == "asyncpg":
        connect_args = {
            "timeout": timeout_s,
            "command_timeout": timeout_s,
            "server_settings": {"statement_timeout": str(millis)},
        }
    return {
        "pool_size": 1,
        "max_overflow": 0,
        "pool_pre_ping": False,
        "connect_args": connect_args,
    }


def describe_error(exc: BaseException) -> str:
    """One line naming a probe or connection failure, without parameters or passwords."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {text}"[:200] if text else type(orig).__name__


_SHUTDOWN_STATES = {"57P01", "57P02", "57P03"}


def is_connection_failure(exc: BaseException) -> bool:
    """A node could not be reached or dropped the connection (safe to retry a read elsewhere).

    Driver-neutral: SQLAlchemy's disconnect flag; then the SQLSTATE of the driver's error or
    its cause (class 08 connection exceptions, 57P01-3 shutdowns; any other SQLSTATE, such as
    57014 for a statement timeout, means the server answered: not a dead node); then OSError;
    then an operational or interface error that carries no SQLSTATE (no server answer at all).
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    seen: BaseException | None = exc
    for _ in range(4):  # the wrapper, the adapted driver error, the driver's own error
        if seen is None:
            break
        if isinstance(seen, OSError):
            return True
        state = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(state, str) and state:
            return state.startswith("08") or state in _SHUTDOWN_STATES
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return isinstance(exc, (OperationalError, InterfaceError))


def note_read_failure(router: RouterCore, node: RoutedNode, exc: BaseException) -> None:
    """A read could not reach ``node``: counted, and the node ejected at once."""
    router.counters["read failures"] += 1
    router.record_failure(
        node, f"read failed: {describe_error(exc)}", time.monotonic(), at_once=True
    )
