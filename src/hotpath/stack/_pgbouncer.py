"""PgBouncer in transaction-pooling mode in front of the primary (when a binary is found)."""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg

from ._account import Account
from ._errors import StackError
from ._process import LOOPBACK, pid_alive, stop_tree, wait_port_closed
from ._status import NodeStatus


@dataclass
class PgBouncer:
    """A ``pgbouncer`` daemon; its admin console is the ``pgbouncer`` database."""

    port: int
    directory: Path
    binary: Path
    account: Account
    target_port: int
    user: str
    password: str
    pool_mode: str = "transaction"
    _env: dict[str, str] = field(default_factory=dict, repr=False)

    name = "pgbouncer"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str, driver: str = "psycopg") -> str:
        secret = quote(self.password, safe="")
        return f"postgresql+{driver}://{self.user}:{secret}@{LOOPBACK}:{self.port}/{database}"

    def dsn_for(self, database: str) -> str:
        return (
            f"host={LOOPBACK} port={self.port} user={self.user} "
            f"password={self.password} dbname={database}"
        )

    @property
    def pid(self) -> int | None:
        try:
            pid = int((self.directory / "pgbouncer.pid").read_text().strip())
        except (FileNotFoundError, ValueError, PermissionError):
            return None
        return pid if pid_alive(pid) else None

    def start(self, timeout: float = 15.0) -> None:
        if self.pid is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.account.own(self.directory)
        userlist = self.directory / "userlist.txt"
        userlist.write_text(f'"{self.user}" "{self.password}"\n')
        userlist.chmod(0o600)
        self.account.own(userlist)
        ini = self.directory / "pgbouncer.ini"
        ini.write_text(self._config(userlist))
        result = self.account.run([self.binary, "-d", ini], env=self._env, cwd=self.directory)
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise StackError(f"pgbouncer (port {self.port}) did not start: {output}")
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(psycopg.OperationalError),
                psycopg.connect(
                    self.dsn_for("pgbouncer"), autocommit=True, connect_timeout=2
                ) as conn,
            ):
                conn.execute("SHOW VERSION")
                return
            if time.monotonic() > deadline:
                raise StackError(f"pgbouncer (port {self.port}) did not accept connections in time")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid
        if pid is None:
            return
        stop_tree(pid, signal.SIGINT, timeout)  # "safe shutdown": finish transactions, exit
        wait_port_closed(self.port, 5.0)

    def status(self) -> NodeStatus:
        pid = self.pid
        return NodeStatus(
            self.name,
            "pgbouncer" if pid else "down",
            self.port,
            pid,
            pid is not None,
            note=f"{self.pool_mode} pooling",
        )

    def _config(self, userlist: Path) -> str:
        d = self.directory
        return f"""\
[databases]
* = host={LOOPBACK} port={self.target_port}

[pgbouncer]
listen_addr = {LOOPBACK}
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
admin_users = {self.user}
stats_users = {self.user}
pool_mode = {self.pool_mode}
max_client_conn = 1000
default_pool_size = 20
ignore_startup_parameters = extra_float_digits,options
logfile = {d / "pgbouncer.log"}
pidfile = {d / "pgbouncer.pid"}
"""
