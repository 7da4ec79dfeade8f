"""The doctor's own connection: read-only, with statement and lock timeouts, and what it may see.

Every query doctor runs goes through :class:`Session`. The connection is opened with
``default_transaction_read_only``, ``statement_timeout`` and ``lock_timeout`` as startup
options, so even a catalog query stuck behind DDL gives up instead of queueing other sessions
behind it. :class:`Capabilities` records the server version, the extensions and the roles the
user holds, which decide which checks can run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ._errors import DoctorError

DEFAULT_STATEMENT_TIMEOUT_MS = 5_000
DEFAULT_LOCK_TIMEOUT_MS = 1_000

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
        return list(self.conn.execute(sql, params).fetchall())

    def row(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> dict[str, Any]:
        found = self.conn.execute(sql, params).fetchone()
        if found is None:
            raise DoctorError(f"catalog query returned no row: {sql[:60]}")
        return found

    @contextmanager
    def rolled_back(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A transaction that is always rolled back (EXPLAIN ANALYZE, HypoPG, SET LOCAL)."""
        tx = self.conn.transaction(force_rollback=True)
        with tx:
            yield self.conn

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
