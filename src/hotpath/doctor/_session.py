"""The doctor's own connection: read-only, with statement and lock timeouts, and what it may see.

Every query doctor runs goes through :class:`Session`, one statement at a time, each in a
``READ ONLY`` transaction that is always rolled back, with ``statement_timeout`` and
``lock_timeout`` set by ``SET LOCAL`` inside it (and as startup options too, a second belt a
pooler may drop), so even a catalog query stuck behind DDL gives up instead of queueing other
sessions behind it. Statement text that is not doctor's own (``hotpath explain``, the
advisor's workload) is sent by :meth:`Session.plan` only: once pglast has found exactly one
explainable statement in it, and over the extended query protocol, in which the server itself
refuses several statements. :class:`Capabilities` records the server version, the extensions
and the roles the user holds, which decide which checks can run.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from ..plans import StatementSafety
from ._errors import DoctorError

# The documented timeouts (docs/doctor.md, "Safety"): checks and the advisor...
DEFAULT_STATEMENT_TIMEOUT_MS = 5_000
DEFAULT_LOCK_TIMEOUT_MS = 1_000
# ...and `hotpath explain`, whose ANALYZE runs the statement
EXPLAIN_STATEMENT_TIMEOUT_MS = 30_000

# Names of the prepared statements a generic plan is taken from: unique per session, so one
# left behind by a failed transaction never collides with the next
_PREPARED_NAMES = itertools.count(1)

_SQLALCHEMY_PREFIX = re.compile(r"^postgres(?:ql)?\+\w+://")


def libpq_url(url: str) -> str:
    """``postgresql+psycopg://...`` (SQLAlchemy) or ``postgres://`` -> a libpq URL/DSN."""
    if not isinstance(url, str) or not url.strip():
        raise DoctorError("no database URL given: pass postgresql://user:password@host:port/db")
    url = url.strip()
    if _SQLALCHEMY_PREFIX.match(url):
        return _SQLALCHEMY_PREFIX.sub("postgresql://", url)
    if url.startswith(("postgresql://", "postgres://")) or "=" in url:
        return url
    raise DoctorError(
        f"{_redact(url)!r} is not a PostgreSQL URL: give postgresql://user:password@host:port/db"
    )


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


@dataclass(frozen=True)
class Capabilities:
    """What the connected user can see and use on this server."""

    server_version: int
    user: str
    database: str
    superuser: bool
    roles: frozenset[str]
    extensions: dict[str, str] = field(default_factory=dict)
    in_recovery: bool = False

    def has_role(self, role: str) -> bool:
        return self.superuser or role in self.roles

    @property
    def monitor(self) -> bool:
        """pg_monitor or pg_read_all_stats: other sessions' queries and replication figures."""
        return self.has_role("pg_monitor") or self.has_role("pg_read_all_stats")

    @property
    def read_all_data(self) -> bool:
        return self.has_role("pg_read_all_data")


class Session:
    """A read-only psycopg connection with timeouts; rows come back as dicts."""

    def __init__(
        self,
        url: str,
        *,
        statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
        lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
        connect_timeout: int = 5,
    ) -> None:
        dsn = libpq_url(url)
        self.statement_timeout_ms = int(statement_timeout_ms)
        self.lock_timeout_ms = int(lock_timeout_ms)
        options = (
            f"-c default_transaction_read_only=on -c statement_timeout={int(statement_timeout_ms)}"
            f" -c lock_timeout={int(lock_timeout_ms)} -c idle_in_transaction_session_timeout=60000"
        )
        try:
            self.conn: psycopg.Connection[dict[str, Any]] = psycopg.connect(
                dsn,
                autocommit=True,
                connect_timeout=connect_timeout,
                options=options,
                application_name="hotpath doctor",
                row_factory=dict_row,
            )
        except psycopg.OperationalError as exc:
            first = " ".join(str(exc).split()) or type(exc).__name__
            raise DoctorError(
                f"cannot connect to {_redact(dsn)}: {first} — check host, port, user and password"
            ) from None
        except psycopg.ProgrammingError as exc:
            raise DoctorError(f"invalid database URL {_redact(dsn)!r}: {exc}") from None
        self.conn.read_only = True  # every transaction psycopg opens is BEGIN READ ONLY
        self.capabilities = self._capabilities()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        with self.rolled_back() as conn:
            return list(conn.execute(sql, params).fetchall())

    def row(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> dict[str, Any]:
        with self.rolled_back() as conn:
            found = conn.execute(sql, params).fetchone()
        if found is None:
            raise DoctorError(f"catalog query returned no row: {sql[:60]}")
        return found

    @contextmanager
    def rolled_back(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A READ ONLY transaction with the session's timeouts, always rolled back (EXPLAIN
        ANALYZE, HypoPG, SET LOCAL). Inside one already, the queries simply join it."""
        if self.conn.info.transaction_status != TransactionStatus.IDLE:
            yield self.conn
            return
        with self.conn.transaction(force_rollback=True):
            # SET LOCAL: a pooler may have dropped the startup options, and it ends with the
            # transaction whatever happens
            self.conn.execute(
                "SELECT set_config('statement_timeout', %s, true),"
                " set_config('lock_timeout', %s, true)",
                (f"{self.statement_timeout_ms}ms", f"{self.lock_timeout_ms}ms"),
            )
            yield self.conn

    def plan(
        self,
        conn: psycopg.Connection[dict[str, Any]],
        safety: StatementSafety,
        *,
        analyze: bool = False,
        verbose: bool = False,
    ) -> Any:
        """``EXPLAIN (FORMAT JSON)`` of the one statement ``safety`` was judged on, inside a
        :meth:`rolled_back` transaction. ``$n`` parameters get the generic plan, from a
        prepared statement forced to it (``PREPARE`` takes exactly one statement).
        ``verbose``: each node names its schema too (what a person reads and the DDL built
        from it need; the advisor's cost look-ups do not)."""
        if safety.refusal is not None:  # never reaches the server
            raise DoctorError(f"cannot EXPLAIN this: {safety.refusal}")
        # binary=True makes psycopg use the extended query protocol even without parameters:
        # the server refuses several statements in it (the simple protocol would run them all)
        if not safety.parameters:
            options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
            if verbose:
                options = f"VERBOSE, {options}"
            row = conn.execute(f"EXPLAIN ({options}) {safety.statement}", binary=True).fetchone()
        else:
            if analyze:
                raise DoctorError("EXPLAIN ANALYZE needs values for the $n parameters")
            name = f"hotpath_plan_{next(_PREPARED_NAMES)}"
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            # the generic plan is shown by executing it with NULLs, which prune every
            # partition at executor start-up (no scan, no index left to see): plan it whole
            conn.execute("SET LOCAL enable_partition_pruning = off")
            conn.execute(f"PREPARE {name} AS {safety.statement}", binary=True)
            nulls = ", ".join(["NULL"] * safety.parameters)
            how = "VERBOSE, FORMAT JSON" if verbose else "FORMAT JSON"
            row = conn.execute(f"EXPLAIN ({how}) EXECUTE {name}({nulls})").fetchone()
            conn.execute(f"DEALLOCATE {name}")
        assert row is not None
        return next(iter(row.values()))

    def _capabilities(self) -> Capabilities:
        info = self.row(
            "SELECT current_setting('server_version_num')::int AS version, current_user AS usr,"
            " current_database() AS db, pg_is_in_recovery() AS recovery,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser"
        )
        roles = self.rows(
            "SELECT rolname FROM pg_roles WHERE pg_has_role(current_user, oid, 'USAGE')"
        )
        extensions = self.rows("SELECT extname, extversion FROM pg_extension")
        return Capabilities(
            server_version=int(info["version"]),
            user=str(info["usr"]),
            database=str(info["db"]),
            superuser=bool(info["superuser"]),
            roles=frozenset(str(r["rolname"]) for r in roles),
            extensions={str(e["extname"]): str(e["extversion"]) for e in extensions},
            in_recovery=bool(info["recovery"]),
        )
