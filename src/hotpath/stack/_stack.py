"""``LocalStack``: a PostgreSQL primary, streaming replicas, Redis (and optionally a Redis
Cluster and PgBouncer) on loopback, started from pip-installed binaries in seconds.

A stack lives in one directory: a ``stack.json`` state file plus one sub-directory per
server. An *attached* stack (the default) belongs to the process that started it: it is
stopped on exit, on SIGTERM/SIGHUP, and, if that process died hard, by the next stack
start, which reaps stacks whose owner is gone. A *detached* stack (``hotpath stack up``)
outlives its starter and is stopped with ``hotpath stack down``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

import psutil

from ._account import Account, server_account
from ._binaries import (
    PostgresBinaries,
    find_pgbouncer,
    find_postgres,
    find_redis_cli,
    find_redis_server,
)
from ._errors import StackError
from ._pgbouncer import PgBouncer
from ._postgres import SUPERUSER, PostgresNode, PostgresServer, wait_caught_up
from ._process import LOOPBACK, ensure_port_free, free_ports, pid_alive
from ._redis import RedisClusterGroup, RedisServer
from ._status import NodeStatus

STATE_FILE = "stack.json"
_STATE_FORMAT = 1
_CLUSTER_SIZE = 3
_CLUSTER_BUS_OFFSET = 10000  # Redis Cluster: a node's bus port is its port + 10000
_T = TypeVar("_T")


def stack_root() -> Path:
    """Where stacks live unless told otherwise (``HOTPATH_STACK_ROOT`` overrides)."""
    configured = os.environ.get("HOTPATH_STACK_ROOT")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"hotpath-{os.geteuid()}"


def default_stack_dir() -> Path:
    """The directory ``hotpath stack up/status/down`` use by default (``HOTPATH_STACK_DIR``)."""
    configured = os.environ.get("HOTPATH_STACK_DIR")
    return Path(configured) if configured else stack_root() / "default"


class LocalStack:
    """A real local PostgreSQL primary + streaming replicas + Redis, for development and tests.

    >>> with LocalStack(replicas=2) as stack:          # doctest: +SKIP
    ...     engine = create_engine(stack.primary.url)
    ...     stack.replicas[0].pause_replay()            # real replication lag
    """

    def __init__(
        self,
        replicas: int = 2,
        redis: bool = True,
        redis_cluster: bool = False,
        pgbouncer: bool = False,
        *,
        postgres: bool = True,
        directory: str | os.PathLike[str] | None = None,
        port: int | None = None,
        detached: bool = False,
        stop_on_signals: bool = False,
    ) -> None:
        if not isinstance(replicas, int) or not 0 <= replicas <= 8:
            raise StackError(f"replicas={replicas!r}: give a whole number from 0 to 8")
        if port is not None and not 1024 <= port <= 65535:
            raise StackError(f"port={port!r}: give a TCP port from 1024 to 65535, or none")
        if not postgres and (replicas or pgbouncer):
            raise StackError("replicas and pgbouncer need PostgreSQL: drop postgres=False")
        self.want_postgres = postgres
        self.replica_count = replicas
        self.want_redis = redis
        self.want_redis_cluster = redis_cluster
        self.want_pgbouncer = pgbouncer
        self.requested_port = port
        self.detached = detached
        # Signal handlers are the application's: a library installs them only when asked
        # (the CLI does, so that a SIGTERM/SIGHUP of `hotpath demo` stops its servers).
        self.stop_on_signals = stop_on_signals
        self.directory: Path | None = Path(directory).absolute() if directory else None
        self.startup_seconds: float | None = None
        self._password = ""
        self._primary: PostgresNode | None = None
        self._replicas: list[PostgresNode] = []
        self._redis: RedisServer | None = None
        self._cluster: RedisClusterGroup | None = None
        self._pgbouncer: PgBouncer | None = None
        self._owner: _Owner | None = None
        self._started = False

    # -- public view -----------------------------------------------------------------------

    @property
    def primary(self) -> PostgresNode:
        return self._need(self._primary, "primary", "drop postgres=False")

    @property
    def replicas(self) -> list[PostgresNode]:
        self._need(self._primary, "replicas", "drop postgres=False")
        return list(self._replicas)

    @property
    def postgres_nodes(self) -> list[PostgresNode]:
        """The primary then the replicas (empty for a Redis-only stack)."""
        return [self._primary, *self._replicas] if self._primary else []

    @property
    def redis(self) -> RedisServer:
        return self._need(self._redis, "redis", "pass redis=True")

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def redis_cluster(self) -> RedisClusterGroup:
        return self._need(self._cluster, "redis_cluster", "pass redis_cluster=True")

    @property
    def redis_cluster_url(self) -> str:
        return self.redis_cluster.url

    @property
    def pgbouncer(self) -> PgBouncer:
        return self._need(self._pgbouncer, "pgbouncer", "pass pgbouncer=True")

    @property
    def pgbouncer_url(self) -> str:
        return self.pgbouncer.url

    def env_exports(self) -> dict[str, str]:
        """The ``HOTPATH_*`` environment variables that point a process at this stack."""
        env = {}
        if self._primary:
            env["HOTPATH_PRIMARY_URL"] = self._primary.url
            env["HOTPATH_REPLICA_URLS"] = ",".join(r.url for r in self._replicas)
        if self._redis:
            env["HOTPATH_REDIS_URL"] = self._redis.url
        if self._cluster:
            env["HOTPATH_REDIS_CLUSTER_URL"] = self._cluster.url
        if self._pgbouncer:
            env["HOTPATH_PGBOUNCER_URL"] = self._pgbouncer.url
        return env

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalStack:
        """Start every server and wait until each accepts connections."""
        if self._started:
            return self
        began = time.monotonic()
        reap_stale_stacks()
        account = server_account()
        binaries = self._find_binaries(account)  # before anything starts: fail fast and clean
        if self.requested_port is not None:
            ensure_port_free(self.requested_port, "the primary")
        directory = self._claim_directory(account)
        self._password = secrets.token_urlsafe(18)
        self._build_servers(directory, account, binaries)
        if not self.detached:
            self._owner = _Owner.of(os.getpid())
        self._started = True
        self._write_state()  # from here on a crash leaves a stack the next start can reap
        if not self.detached:
            _register_attached(self, stop_on_signals=self.stop_on_signals)
        try:
            self._start_servers()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        self._write_state()
        return self

    def _find_binaries(self, account: Account) -> _Binaries:
        redis_server = None
        if self.want_redis or self.want_redis_cluster:
            redis_server = find_redis_server(account)
        bouncer = find_pgbouncer() if self.want_pgbouncer else None
        if self.want_pgbouncer and bouncer is None:
            raise StackError(
                "pgbouncer=True but no pgbouncer binary was found: install it "
                "(`apt-get install pgbouncer`), set HOTPATH_PGBOUNCER to its path, "
                "or drop --pgbouncer"
            )
        return _Binaries(
            postgres=find_postgres(account) if self.want_postgres else None,
            redis_server=redis_server,
            redis_cli=find_redis_cli(redis_server)
            if self.want_redis_cluster and redis_server
            else None,
            pgbouncer=bouncer,
        )

    def _build_servers(self, directory: Path, account: Account, binaries: _Binaries) -> None:
        env = _server_env(directory)
        ports = iter(free_ports(2 + self.replica_count + 1))
        if binaries.postgres:
            self._primary, *self._replicas = (
                _pg_node(name, port, directory, self._password, binaries.postgres, account, env)
                for name, port in [
                    ("primary", self.requested_port or next(ports)),
                    *((f"replica{i}", next(ports)) for i in range(1, self.replica_count + 1)),
                ]
            )
        if binaries.redis_server and self.want_redis:
            self._redis = RedisServer(
                "redis", next(ports), directory / "redis", binaries.redis_server, account, _env=env
            )
        if binaries.redis_server and binaries.redis_cli:
            self._cluster = _cluster_group(
                directory,
                free_ports(_CLUSTER_SIZE, bus_offset=_CLUSTER_BUS_OFFSET),
                binaries.redis_server,
                binaries.redis_cli,
                account,
                env,
            )
        if binaries.pgbouncer and self._primary:
            self._pgbouncer = PgBouncer(
                next(ports),
                directory / "pgbouncer",
                binaries.pgbouncer,
                account,
                self._primary.port,
                self._primary.user,
                self._password,
                _env=env,
            )

    def _start_servers(self) -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            side = [pool.submit(s.start) for s in (self._redis, self._cluster) if s is not None]
            primary = self._primary
            if primary:
                for node in self.postgres_nodes:
                    node.datadir.mkdir(mode=0o700)
                    node.account.own(node.datadir)
                primary.init_primary()
                primary.start()
                primary.create_extensions()

                def clone(replica: PostgresNode) -> None:
                    replica.init_replica(primary)
                    replica.start()

                side += [pool.submit(clone, r) for r in self._replicas]
            if self._pgbouncer:
                side.append(pool.submit(self._pgbouncer.start))
            for future in side:
                future.result()

    def stop(self, *, keep: bool = False) -> None:
        """Stop every server; remove the stack directory unless ``keep``."""
        if not self._started:
            return
        _unregister_attached(self)
        with ThreadPoolExecutor(max_workers=4) as pool:
            if self._pgbouncer:
                self._pgbouncer.stop()
            list(pool.map(lambda r: r.stop(), self._replicas))
            waits = [pool.submit(s.stop) for s in (self._redis, self._cluster) if s is not None]
            if self._primary:
                self._primary.stop()
            for future in waits:
                future.result()
        self._started = False
        if not keep and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def is_alive(self) -> bool:
        """Whether any server of this stack is running."""
        return any(pid_alive(pid) for pid in self._server_pids())

    def processes(self) -> list[int]:
        """PIDs of every server process and their children (backends, walsenders...)."""
        pids: list[int] = []
        for pid in self._server_pids():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                pids += [pid, *(c.pid for c in proc.children(recursive=True))]
        return pids

    def ports(self) -> list[int]:
        return [s.port for s in self._servers()]

    # -- replication helpers ---------------------------------------------------------------

    def wait_replicas_caught_up(
        self, timeout: float = 5.0, replicas: Sequence[PostgresServer] | None = None
    ) -> None:
        """Wait until every running replica has replayed the primary's current WAL position.

        Raises :class:`StackError` naming the replicas still behind (and whether their replay
        is paused) after ``timeout`` seconds.
        """
        chosen = replicas or self._replicas
        nodes = [r for r in chosen if getattr(r, "is_running", True) and r.is_in_recovery()]
        wait_caught_up(self.primary, nodes, timeout)

    def status(self) -> list[NodeStatus]:
        """One :class:`NodeStatus` per server, read live from the servers."""
        primary_lsn: str | None = None
        if self._primary and self._primary.is_running:
            with contextlib.suppress(Exception):
                primary_lsn = self._primary.current_lsn()
        rows = [n.status(primary_lsn) for n in self.postgres_nodes]
        rows += [s.status() for s in self._redis_servers()]
        if self._pgbouncer:
            rows.append(self._pgbouncer.status())
        return rows

    # -- persistence -----------------------------------------------------------------------

    @classmethod
    def attach(cls, directory: str | os.PathLike[str]) -> LocalStack:
        """The stack recorded in ``directory`` (running or not), to inspect or stop it."""
        path = Path(directory).absolute()
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except FileNotFoundError:
            raise StackError(
                f"no hotpath stack in {path}: start one with `hotpath stack up` (or pass --dir)"
            ) from None
        except (OSError, ValueError) as exc:
            raise StackError(
                f"{path / STATE_FILE} is unreadable ({exc}): remove {path} by hand"
            ) from exc
        if state.get("format") != _STATE_FORMAT:
            raise StackError(f"{path / STATE_FILE} has an unknown format: remove {path} by hand")
        return cls._from_state(path, state)

    @classmethod
    def _from_state(cls, path: Path, state: dict[str, Any]) -> LocalStack:
        account = server_account()
        env = _server_env(path)
        password = state["password"]
        nodes = [
            _pg_node(
                n["name"],
                n["port"],
                path,
                password,
                PostgresBinaries(Path(state["pg_bin"])),
                account,
                env,
            )
            for n in state["postgres"]
        ]
        stack = cls(
            replicas=max(0, len(nodes) - 1),
            postgres=bool(nodes),
            directory=path,
            detached=state["owner"] is None,
        )
        stack._password = password
        if nodes:
            stack._primary, stack._replicas = nodes[0], nodes[1:]
        if state.get("redis"):
            r = state["redis"]
            stack._redis = RedisServer(
                r["name"], r["port"], path / r["name"], Path(r["binary"]), account, _env=env
            )
        if state.get("redis_cluster"):
            c = state["redis_cluster"]
            stack._cluster = _cluster_group(
                path,
                [n["port"] for n in c["servers"]],
                Path(c["servers"][0]["binary"]),
                Path(c["cli"]),
                account,
                env,
            )
        if state.get("pgbouncer") and nodes:
            b = state["pgbouncer"]
            stack._pgbouncer = PgBouncer(
                b["port"],
                path / "pgbouncer",
                Path(b["binary"]),
                account,
                nodes[0].port,
                nodes[0].user,
                password,
                _env=env,
            )
        owner = state["owner"]
        stack._owner = _Owner(owner[0], owner[1], state.get("owner_since_boot")) if owner else None
        stack.startup_seconds = state.get("startup_seconds")
        stack._started = True
        return stack

    def _write_state(self) -> None:
        assert self.directory is not None
        state = {
            "format": _STATE_FORMAT,
            "owner": [self._owner.pid, self._owner.created] if self._owner else None,
            "owner_since_boot": self._owner.since_boot if self._owner else None,
            "password": self._password,
            "pg_bin": str(self._primary.binaries.bindir) if self._primary else None,
            "postgres": [{"name": n.name, "port": n.port} for n in self.postgres_nodes],
            "redis": _redis_entry(self._redis) if self._redis else None,
            "redis_cluster": {
                "cli": str(self._cluster.cli),
                "servers": [_redis_entry(s) for s in self._cluster.servers],
            }
            if self._cluster
            else None,
            "pgbouncer": {"port": self._pgbouncer.port, "binary": str(self._pgbouncer.binary)}
            if self._pgbouncer
            else None,
            "startup_seconds": self.startup_seconds,
        }
        target = self.directory / STATE_FILE
        temp = target.with_suffix(".tmp")
        temp.write_text(json.dumps(state, indent=2))
        temp.chmod(0o600)
        temp.replace(target)

    def owner_is_gone(self) -> bool:
        """An attached stack whose starting process no longer exists."""
        return self._owner is not None and self._owner.is_gone()

    # -- internals -------------------------------------------------------------------------

    def _need(self, value: _T | None, name: str, hint: str = "") -> _T:
        if not self._started:
            raise StackError(
                f"stack.{name}: the stack is not started: use `with LocalStack() as stack:` "
                "or call stack.start() first"
            )
        if value is None:
            raise StackError(f"stack.{name}: this stack was started without it ({hint})")
        return value

    def _redis_servers(self) -> list[RedisServer]:
        servers = [self._redis] if self._redis else []
        return servers + (self._cluster.servers if self._cluster else [])

    def _servers(self) -> list[PostgresNode | RedisServer | PgBouncer]:
        servers: list[PostgresNode | RedisServer | PgBouncer] = []
        if self._primary:
            servers += self.postgres_nodes
        servers += self._redis_servers()
        if self._pgbouncer:
            servers.append(self._pgbouncer)
        return servers

    def _server_pids(self) -> list[int]:
        return [pid for s in self._servers() if (pid := s.pid) is not None]

    def _claim_directory(self, account: Account) -> Path:
        if self.directory is None:
            root = _ensure_root(account)
            self.directory = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=root))
        directory = self.directory
        if directory.exists():
            if not directory.is_dir():
                raise StackError(f"{directory} is a file, not a directory: choose another --dir")
            if (directory / STATE_FILE).exists():
                previous = LocalStack.attach(directory)
                if previous.is_alive():
                    raise StackError(
                        f"a hotpath stack is already running in {directory}: stop it with "
                        f"`hotpath stack down --dir {directory}`, or choose another directory"
                    )
                # A stale stack from a crashed run: clear it (which removes the directory
                # with its data) and start afresh in the same place.
                previous.stop()
                directory.mkdir(parents=True, exist_ok=True)
            elif any(directory.iterdir()):
                raise StackError(
                    f"{directory} is not empty and holds no hotpath stack; refusing to touch it: "
                    "choose a new or empty directory"
                )
        else:
            if directory.parent == stack_root():
                _ensure_root(account)
            directory.mkdir(parents=True)
        directory.chmod(0o700)
        account.own(directory)
        if not account.can_reach(directory):
            raise StackError(
                f"{directory} cannot be reached by the account {account.name!r} that runs the "
                "servers (a parent directory is not searchable by it): choose a directory under "
                f"{stack_root()} or another world-searchable place"
            )
        return directory


@dataclass(frozen=True)
class _Binaries:
    postgres: PostgresBinaries | None
    redis_server: Path | None
    redis_cli: Path | None
    pgbouncer: Path | None


def _server_env(directory: Path) -> dict[str, str]:
    """The environment servers and tools run with: minimal, C locale, UTC."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "TZ": "UTC",
        "HOME": str(directory),
    }


def _pg_node(
    name: str,
    port: int,
    directory: Path,
    password: str,
    binaries: PostgresBinaries,
    account: Account,
    env: dict[str, str],
) -> PostgresNode:
    return PostgresNode(
        name,
        LOOPBACK,
        port,
        SUPERUSER,
        password,
        datadir=directory / name,
        binaries=binaries,
        account=account,
        _env=env,
    )


def _cluster_group(
    directory: Path,
    ports: Sequence[int],
    server: Path,
    cli: Path,
    account: Account,
    env: dict[str, str],
) -> RedisClusterGroup:
    servers = [
        RedisServer(
            f"redis-cluster{i}",
            port,
            directory / f"redis-cluster{i}",
            server,
            account,
            cluster=True,
            _env=env,
        )
        for i, port in enumerate(ports, start=1)
    ]
    return RedisClusterGroup(servers, cli, account, _env=env)


def _redis_entry(server: RedisServer) -> dict[str, Any]:
    return {"name": server.name, "port": server.port, "binary": str(server.binary)}


def _ensure_root(account: Account) -> Path:
    root = stack_root()
    root.mkdir(parents=True, exist_ok=True)
    # the service account must traverse it; other users must not list it
    if not account.is_current:
        root.chmod(0o711)
    return root


@dataclass(frozen=True)
class _Owner:
    """The process that started an attached stack, told apart from a later one given its PID.

    ``created`` is psutil's creation time: on Linux the boot time plus the kernel's start
    time, and the boot time moves whenever the wall clock is stepped (a VM resumed from a
    snapshot, NTP), which made every running stack's owner look gone to the next start, and
    that start stopped them all. ``since_boot`` (Linux) is the kernel's own record, which
    never moves; stacks written without it are judged by ``created``.
    """

    pid: int
    created: float
    since_boot: float | None

    @classmethod
    def of(cls, pid: int) -> _Owner | None:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            return None
        return cls(pid, created, _started_since_boot(pid))

    def is_gone(self) -> bool:
        now = _Owner.of(self.pid)
        if now is None:
            return True
        if self.since_boot is not None and now.since_boot is not None:
            return now.since_boot != self.since_boot
        return now.created != self.created


def _started_since_boot(pid: int) -> float | None:
    """When ``pid`` started, in seconds after boot (``/proc/PID/stat``: Linux only)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the name, in parentheses, may hold spaces
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks


def reap_stale_stacks(root: Path | None = None) -> list[Path]:
    """Stop and remove attached stacks under ``root`` whose owning process has died."""
    root = root or stack_root()
    reaped: list[Path] = []
    if not root.is_dir():
        return reaped
    for directory in sorted(root.glob("run-*")):
        with contextlib.suppress(StackError, OSError, KeyError, ValueError, TypeError):
            if not (directory / STATE_FILE).exists():
                if time.time() - directory.stat().st_mtime > 60:
                    shutil.rmtree(
                        directory, ignore_errors=True
                    )  # crashed before its state was written
                continue
            stack = LocalStack.attach(directory)
            if stack.owner_is_gone():
                stack.stop()
                reaped.append(directory)
    return reaped


# -- stopping attached stacks when the process ends ----------------------------------------

_attached: set[LocalStack] = set()
# Reentrant: a second signal can arrive while the first one's handler holds it (same thread).
_attached_lock = threading.RLock()
_atexit_installed = False
_signals_installed = False
_previous_handlers: dict[int, Any] = {}


def _register_attached(stack: LocalStack, *, stop_on_signals: bool) -> None:
    global _atexit_installed, _signals_installed
    with _attached_lock:
        _attached.add(stack)
        install_atexit = not _atexit_installed
        _atexit_installed = True
        # signal.signal() works in the main thread only
        install_signals = (
            stop_on_signals
            and not _signals_installed
            and threading.current_thread() is threading.main_thread()
        )
        if install_signals:
            _signals_installed = True
    if install_atexit:
        atexit.register(_stop_attached)
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue
            _previous_handlers[sig] = previous
            signal.signal(sig, _on_signal)


def _unregister_attached(stack: LocalStack) -> None:
    with _attached_lock:
        _attached.discard(stack)


def _stop_attached() -> None:
    with _attached_lock:
        stacks = list(_attached)
    for stack in stacks:
        with contextlib.suppress(Exception):
            stack.stop()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _stop_attached()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
