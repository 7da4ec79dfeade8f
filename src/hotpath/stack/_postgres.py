"""A PostgreSQL server of the stack: primary (initdb) or streaming replica (pg_basebackup -R)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import psycopg
from psycopg.conninfo import make_conninfo

from ._account import Account
from ._binaries import PostgresBinaries
from ._errors import StackError
from ._process import (
    LOOPBACK,
    pid_alive,
    process_family,
    stop_tree,
    wait_all_gone,
    wait_port_closed,
)
from ._status import NodeStatus

SUPERUSER = "postgres"

# A throwaway cluster for development and tests: durability settings are relaxed
# (fsync=off), everything that matters to hotpath's behaviour is production-like.
_BASE_SETTINGS: Mapping[str, str] = {
    "listen_addresses": f"'{LOOPBACK}'",
    "unix_socket_directories": "''",
    "max_connections": "300",
    "shared_buffers": "'128MB'",
    "wal_level": "replica",
    "max_wal_senders": "16",
    "max_replication_slots": "16",
    "wal_keep_size": "'256MB'",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_receiver_status_interval": "'1s'",
    "wal_retrieve_retry_interval": "'200ms'",  # replicas reconnect fast after a fault
    "shared_preload_libraries": "'pg_stat_statements'",
    "pg_stat_statements.track": "top",
    "track_io_timing": "on",
    "fsync": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
    "timezone": "'UTC'",
}

_HBA = f"""\
# written by hotpath.stack: password auth on loopback only
host all all {LOOPBACK}/32 scram-sha-256
host replication {SUPERUSER} {LOOPBACK}/32 scram-sha-256
"""


def _conf_lines(settings: Mapping[str, str]) -> str:
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def connection_url(
    host: str, port: int, user: str, password: str, database: str, driver: str = "psycopg"
) -> str:
    """A SQLAlchemy URL (``postgresql+<driver>://``) with the password escaped."""
    secret = quote(password, safe="")
    return f"postgresql+{driver}://{quote(user, safe='')}:{secret}@{host}:{port}/{database}"


def wait_caught_up(
    primary: PostgresServer, replicas: Sequence[PostgresServer], timeout: float
) -> None:
    """Wait until each replica has replayed ``primary``'s current WAL position.

    Raises :class:`StackError` naming the replicas still behind (and whether their replay is
    paused) after ``timeout`` seconds.
    """
    target = primary.current_lsn()
    pending = list(replicas)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [r for r in pending if not r.has_replayed(target)]
        if not pending:
            return
        if time.monotonic() > deadline:
            behind = ", ".join(
                f"{r.name} at {r.current_lsn()}"
                + (" (replay paused)" if r.is_replay_paused() else "")
                for r in pending
            )
            raise StackError(
                f"replicas still behind the primary's {target} after {timeout:.1f}s: {behind}"
            )
        time.sleep(0.005)


@dataclass
class PostgresServer:
    """A PostgreSQL server reached over the network: queries and replication controls.

    Works on any server (``from_url``); :class:`PostgresNode` adds process control for
    servers the stack runs. ``url`` is a SQLAlchemy URL (``postgresql+psycopg://``), ``dsn``
    a libpq connection string.
    """

    name: str
    host: str
    port: int
    user: str
    password: str
    database: str = "postgres"

    @classmethod
    def from_url(cls, url: str, name: str) -> PostgresServer:
        """A server from a SQLAlchemy or libpq URL (``postgresql[+driver]://user:pw@host:port/db``)."""
        from sqlalchemy.engine import make_url  # noqa: PLC0415 - only the testing plugin needs it

        try:
            parsed = make_url(url)
        except Exception as exc:
            raise StackError(f"{name}: {url!r} is not a database URL ({exc})") from exc
        return cls(
            name,
            parsed.host or LOOPBACK,
            parsed.port or 5432,
            parsed.username or SUPERUSER,
            parsed.password if isinstance(parsed.password, str) else "",
            parsed.database or "postgres",
        )

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def url_for(self, database: str, driver: str = "psycopg") -> str:
        """SQLAlchemy URL of ``database`` on this server (``driver``: psycopg or asyncpg)."""
        return connection_url(self.host, self.port, self.user, self.password, database, driver)

    def dsn_for(self, database: str) -> str:
        return make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=database
        )

    # -- replication controls --------------------------------------------------------------

    def is_in_recovery(self) -> bool:
        return bool(self.scalar("SELECT pg_is_in_recovery()"))

    @property
    def role(self) -> str:
        """``primary`` or ``replica``, as the server says (a promoted replica is a primary)."""
        return "replica" if self.is_in_recovery() else "primary"

    def pause_replay(self, timeout: float = 10.0) -> None:
        """Stop applying WAL (``pg_wal_replay_pause()``): the replica keeps receiving, and lags."""
        self._require_replica("pause_replay")
        self.scalar("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + timeout
        while self.scalar("SELECT pg_get_wal_replay_pause_state()") != "paused":
            if time.monotonic() > deadline:
                raise StackError(f"{self.name}: WAL replay did not pause within {timeout:.0f}s")
            time.sleep(0.01)

    def resume_replay(self) -> None:
        self._require_replica("resume_replay")
        self.scalar("SELECT pg_wal_replay_resume()")

    def is_replay_paused(self) -> bool:
        return bool(self.scalar("SELECT pg_is_wal_replay_paused()"))

    def promote(self, timeout: float = 30.0) -> None:
        """Make this replica a writable primary (failover) and wait until it is."""
        self._require_replica("promote")
        if not self.scalar("SELECT pg_promote(true, %s)", [int(timeout)]):
            raise StackError(f"{self.name}: promotion did not finish within {timeout:.0f}s")

    def current_lsn(self) -> str:
        """The WAL position of this server: written (primary) or replayed (replica)."""
        return str(
            self.scalar(
                "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
                " ELSE pg_current_wal_lsn() END"
            )
        )

    def has_replayed(self, lsn: str) -> bool:
        return bool(self.scalar("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]))

    def status(self, primary_lsn: str | None, pid: int | None = None) -> NodeStatus:
        """Role, replay state and lag of this server, read live (``primary_lsn`` for lag)."""
        try:
            row = self.fetchone(
                "SELECT pg_is_in_recovery(),"
                " CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END,"
                " CASE WHEN NOT pg_is_in_recovery() OR %(p)s::pg_lsn IS NULL THEN NULL"
                "  ELSE greatest(pg_wal_lsn_diff(%(p)s::pg_lsn, pg_last_wal_replay_lsn()), 0) END,"
                " CASE WHEN NOT pg_is_in_recovery() THEN NULL"
                "  WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
                "  ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END",
                {"p": primary_lsn},
            )
        except psycopg.OperationalError as exc:
            return NodeStatus(self.name, "unreachable", self.port, pid, False, note=str(exc))
        in_recovery, paused, lag_bytes, lag_seconds = row
        return NodeStatus(
            self.name,
            "replica" if in_recovery else "primary",
            self.port,
            pid,
            True,
            lag_bytes=None if lag_bytes is None else int(lag_bytes),
            lag_seconds=None if lag_seconds is None else float(lag_seconds),
            replay_paused=paused,
        )

    # -- queries ---------------------------------------------------------------------------

    def connect(
        self, database: str | None = None, *, autocommit: bool = True
    ) -> psycopg.Connection[Any]:
        """A psycopg connection as the superuser (autocommit by default)."""
        return psycopg.connect(
            self.dsn_for(database or self.database), autocommit=autocommit, connect_timeout=5
        )

    def fetchone(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> tuple[Any, ...]:
        with self.connect() as conn:
            row = conn.execute(sql, params).fetchone()
        if row is None:
            raise StackError(f"{self.name}: {sql!r} returned no row")
        return tuple(row)

    def scalar(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
        return self.fetchone(sql, params)[0]

    # -- internals -------------------------------------------------------------------------

    def _require_replica(self, action: str) -> None:
        if not self.is_in_recovery():
            raise StackError(
                f"{self.name} is a primary (not in recovery): {action}() needs a replica"
            )


@dataclass
class PostgresNode(PostgresServer):
    """A PostgreSQL server the stack runs: adds start/stop/kill for real faults."""

    datadir: Path = field(kw_only=True)
    binaries: PostgresBinaries = field(kw_only=True, repr=False)
    account: Account = field(kw_only=True, repr=False)
    _env: dict[str, str] = field(default_factory=dict, kw_only=True, repr=False)

    @property
    def log_path(self) -> Path:
        return self.datadir.parent / f"{self.name}.log"

    # -- set-up ----------------------------------------------------------------------------

    def init_primary(self) -> None:
        """Create a new cluster in ``datadir`` (initdb) configured as a replication primary."""
        pwfile = self.datadir.parent / f".{self.name}.pw"
        pwfile.write_text(self.password + "\n")
        self.account.own(pwfile)
        try:
            self._run_tool(
                "initdb",
                [
                    "-D",
                    self.datadir,
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--no-sync",
                ],
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# hotpath.stack\n" + _conf_lines({**_BASE_SETTINGS, "port": str(self.port)})
            )
        (self.datadir / "pg_hba.conf").write_text(_HBA)

    def init_replica(self, primary: PostgresNode) -> None:
        """Clone ``primary`` (``pg_basebackup -R``) into a streaming replica with its own slot."""
        slot = self.name.replace("-", "_")
        self._run_tool(
            "pg_basebackup",
            [
                "-D",
                self.datadir,
                "-h",
                primary.host,
                "-p",
                str(primary.port),
                "-U",
                primary.user,
                "-X",
                "stream",
                "-c",
                "fast",
                "-R",
                "-C",
                "-S",
                slot,
                "--no-sync",
            ],
            env={"PGPASSWORD": primary.password},
            timeout=120,
        )
        conninfo = (
            f"host={primary.host} port={primary.port} user={primary.user} "
            f"password={primary.password} application_name={self.name}"
        )
        with (self.datadir / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                _conf_lines(
                    {
                        "port": str(self.port),
                        "primary_conninfo": f"'{conninfo}'",
                        "primary_slot_name": f"'{slot}'",
                    }
                )
            )

    def create_extensions(self) -> None:
        """Create pg_stat_statements in postgres and template1, so new databases have it."""
        for database in ("postgres", "template1"):
            with self.connect(database) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs."""
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, PermissionError):
            return None
        pid = int(first) if first.strip().isdigit() else None
        return pid if pid_alive(pid) else None

    @property
    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections (read-only ones on a replica)."""
        if self.is_running:
            return
        deadline = time.monotonic() + timeout
        while True:
            result = self._run_tool(
                "pg_ctl",
                [
                    "start",
                    "-D",
                    self.datadir,
                    "-l",
                    self.log_path,
                    "-w",
                    "-s",
                    "-t",
                    str(max(1, int(deadline - time.monotonic()))),
                ],
                check=False,
                timeout=timeout + 5,
            )
            if result == 0:
                return
            # After kill(), orphaned backends of the old postmaster may still hold its shared
            # memory for a few milliseconds; PostgreSQL then refuses to start. Retry briefly.
            if "shared memory block" in self.tail_log() and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise StackError(
                f"PostgreSQL {self.name} (port {self.port}) did not start; its log "
                f"{self.log_path} ends with:\n{self.tail_log()}"
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (clients disconnected, then a clean checkpoint); SIGKILL if it hangs."""
        pid = self.pid
        if pid is None:
            return
        stop_tree(pid, signal.SIGINT, timeout)
        wait_port_closed(self.port, 5.0)

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would: no shutdown checkpoint, clients cut off."""
        pid = self.pid
        if pid is None:
            return
        backends = process_family(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # Orphaned backends notice the postmaster's death and exit on their own; wait for them
        # so no process still maps the old shared memory when the server starts again.
        wait_all_gone(backends, 10.0)
        wait_port_closed(self.port, 5.0)
        if psutil.pid_exists(pid):
            # An unreaped zombie keeps its PID, and PostgreSQL would take the stale lock file
            # for a live postmaster. Every process of the old server is gone: drop the lock.
            (self.datadir / "postmaster.pid").unlink(missing_ok=True)

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    def status(self, primary_lsn: str | None, pid: int | None = None) -> NodeStatus:
        pid = self.pid
        if pid is None:
            return NodeStatus(self.name, "down", self.port, None, False)
        return super().status(primary_lsn, pid)

    # -- internals -------------------------------------------------------------------------

    def _require_replica(self, action: str) -> None:
        if not self.is_running:
            raise StackError(f"{self.name} is not running: start() it before {action}()")
        super()._require_replica(action)

    def tail_log(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def _run_tool(
        self,
        tool: str,
        args: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> int:
        result = self.account.run(
            [self.binaries.tool(tool), *args],
            env={**self._env, **(env or {})},
            cwd=self.datadir.parent,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise StackError(f"{tool} failed for {self.name} (exit {result.returncode}): {output}")
        return result.returncode
