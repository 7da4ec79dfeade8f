"""Reading a server's connection budget: max_connections, reserved slots, other clients."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from sqlalchemy.engine import make_url

from ._errors import PoolConfigError

_SETTINGS_SQL = """
SELECT name, setting FROM pg_settings
WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections',
               'server_version_num')
"""
# Client backends other than this probe (walsenders have their own slots since PG 12), and
# the CONNECTION LIMITs of this role and database with the connections already counted there.
_CLIENTS_SQL = """
SELECT
  (SELECT count(*) FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()),
  (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user),
  (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
  (SELECT count(*) FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND usename = current_user),
  (SELECT datconnlimit FROM pg_database WHERE datname = current_database()),
  (SELECT count(*) FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
      AND datname = current_database())
"""


@dataclass(frozen=True)
class ServerBudget:
    """One server's connection slots as read from it."""

    name: str
    host: str
    port: int
    server_version_num: int
    max_connections: int
    superuser_reserved: int
    reserved: int  # reserved_connections (PostgreSQL 16+, for pg_use_reserved_connections)
    other_clients: int
    behind_proxy: bool  # the server's own port differs from the one we dialled
    role: str = ""
    role_limit: int | None = None  # the role's CONNECTION LIMIT (not enforced for superusers)
    role_other_clients: int = 0
    database: str = ""
    database_limit: int | None = None  # the database's CONNECTION LIMIT (idem)
    database_other_clients: int = 0

    def _server_available(self, headroom: int) -> int:
        return (
            self.max_connections
            - self.superuser_reserved
            - self.reserved
            - self.other_clients
            - headroom
        )

    def available(self, headroom: int) -> int:
        """Slots an application may use: the tightest of the server, role and database limits."""
        limits = [self._server_available(headroom)]
        if self.role_limit is not None:
            limits.append(self.role_limit - self.role_other_clients)
        if self.database_limit is not None:
            limits.append(self.database_limit - self.database_other_clients)
        return min(limits)

    def arithmetic(self, headroom: int) -> str:
        reserved = f" - {self.reserved} reserved_connections" if self.reserved else ""
        text = (
            f"{self.max_connections} max_connections - {self.superuser_reserved} "
            f"superuser_reserved_connections{reserved} - {self.other_clients} other clients "
            f"connected now - {headroom} headroom = {self._server_available(headroom)}"
        )
        if self.role_limit is not None:
            text += (
                f"; role {self.role} CONNECTION LIMIT {self.role_limit} - "
                f"{self.role_other_clients} of its connections open now = "
                f"{self.role_limit - self.role_other_clients}"
            )
        if self.database_limit is not None:
            text += (
                f"; database {self.database} CONNECTION LIMIT {self.database_limit} - "
                f"{self.database_other_clients} connections open now = "
                f"{self.database_limit - self.database_other_clients}"
            )
        return text


def libpq_conninfo(url: str) -> str:
    """A libpq conninfo for a SQLAlchemy URL (``postgresql+driver://``) or a libpq DSN/URI."""
    if "://" not in url:
        return url
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        raise PoolConfigError(
            f"{parsed.drivername!r} is not a PostgreSQL URL: pass the server's "
            "postgresql:// (or postgresql+psycopg://) URL"
        )
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def read_server_budget(url: str, name: str, other_clients: int | None = None) -> ServerBudget:
    """Connect once (no prepared statements, so it works through PgBouncer) and read."""
    conninfo = libpq_conninfo(url)
    try:
        with psycopg.connect(
            conninfo, autocommit=True, prepare_threshold=None, connect_timeout=10
        ) as conn:
            settings: dict[str, str] = dict(conn.execute(_SETTINGS_SQL).fetchall())
            clients = conn.execute(_CLIENTS_SQL).fetchone()
            port_row = conn.execute(
                "SELECT inet_server_port(), current_user, current_database()"
            ).fetchone()
            info = conn.info
            host, dialled = info.host, info.port
    except psycopg.Error as exc:
        raise PoolConfigError(
            f"could not read connection settings from {name} ({exc.__class__.__name__}: "
            f"{str(exc).strip()}): check server_url / replica_urls, or pass the numbers "
            "yourself with PoolPlan.from_settings(...)"
        ) from exc
    assert clients is not None  # one-row aggregates: always a row
    assert port_row is not None
    total, role_limit, superuser, role_clients, db_limit, db_clients = clients
    server_port, role, database = port_row
    exempt = bool(superuser)  # PostgreSQL does not apply role/database limits to superusers
    return ServerBudget(
        name=name,
        host=host,
        port=dialled,
        server_version_num=int(settings["server_version_num"]),
        max_connections=int(settings["max_connections"]),
        superuser_reserved=int(settings["superuser_reserved_connections"]),
        reserved=int(settings.get("reserved_connections", 0)),
        other_clients=int(total) if other_clients is None else other_clients,
        behind_proxy=server_port is not None and int(server_port) != int(dialled),
        role=role,
        role_limit=None if exempt or role_limit is None or role_limit < 0 else int(role_limit),
        role_other_clients=int(role_clients),
        database=database,
        database_limit=None if exempt or db_limit is None or db_limit < 0 else int(db_limit),
        database_other_clients=int(db_clients),
    )
