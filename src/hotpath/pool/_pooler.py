"""Transaction-pooler mode (PgBouncer ``pool_mode=transaction``, PgCat, RDS Proxy).

Behind such a pooler each transaction may run on a different server connection: driver-side
prepared statements break (psycopg ``prepare_threshold=None``, asyncpg
``statement_cache_size=0`` with unique statement names fix that), and session state leaks to
other clients or vanishes. This module owns the driver settings and the detection of
statements that set session state.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

# Statement prefixes (after comments/whitespace) that leave state on the server *session*.
# SET LOCAL / SET TRANSACTION and pg_advisory_xact_lock are transaction-scoped and fine.
_SESSION_STATE = re.compile(
    r"""^\s*(?:
        (?P<set>SET\s+(?!LOCAL\b|TRANSACTION\b|CONSTRAINTS\b)(?:SESSION\s+)?\w)
      | (?P<reset>RESET\s)
      | (?P<listen>LISTEN\s)
      | (?P<prepare>PREPARE\s)
      | (?P<temp>CREATE\s+(?:GLOBAL\s+|LOCAL\s+)?TEMP(?:ORARY)?\s)
      | (?P<hold>DECLARE\s.*\sWITH\s+HOLD\b)
    )""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
_ADVISORY = re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE)
_SET_CONFIG_SESSION = re.compile(r"\bset_config\s*\([^)]*,\s*false\s*\)", re.IGNORECASE)

_WHAT = {
    "set": "SET (session-level; use SET LOCAL inside the transaction)",
    "reset": "RESET",
    "listen": "LISTEN (notifications go to whichever client holds the server connection)",
    "prepare": "SQL-level PREPARE",
    "temp": "CREATE TEMP TABLE (lives past the transaction on a shared server connection)",
    "hold": "DECLARE ... WITH HOLD",
    "advisory": "a session advisory lock (use pg_advisory_xact_lock)",
    "set_config": "set_config(..., false) (session-level; pass true for transaction-level)",
}


def session_state_use(statement: str) -> str | None:
    """What session state ``statement`` sets, in words, or None if it sets none."""
    match = _SESSION_STATE.match(statement)
    if match is not None:
        return _WHAT[match.lastgroup or "set"]
    if _ADVISORY.search(statement):
        return _WHAT["advisory"]
    if _SET_CONFIG_SESSION.search(statement):
        return _WHAT["set_config"]
    return None


def unique_statement_name() -> str:
    """asyncpg prepared-statement names that cannot collide across pooled server sessions."""
    return f"__asyncpg_{uuid.uuid4()}__"


def driver_connect_args(
    driver: str, *, transaction_pooler: bool, keepalives: bool, connect_timeout_s: float
) -> dict[str, Any]:
    """``connect_args`` for ``driver`` (psycopg or asyncpg) in plain or pooler mode."""
    if driver == "asyncpg":
        args: dict[str, Any] = {"timeout": connect_timeout_s}
        if transaction_pooler:
            args |= {
                "statement_cache_size": 0,
                "prepared_statement_cache_size": 0,
                "prepared_statement_name_func": unique_statement_name,
            }
        return args
    args = {"connect_timeout": max(1, round(connect_timeout_s))}
    if keepalives:  # libpq TCP keepalives: a dead peer is noticed in ~1 min, not ~2 h
        args |= {
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
    if transaction_pooler:
        args["prepare_threshold"] = None
    return args
