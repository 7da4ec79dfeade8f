"""Redis servers of the stack: a standalone server and an optional 3-master Redis Cluster."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ._account import Account
from ._errors import StackError
from ._process import (
    LOOPBACK,
    pid_alive,
    signal_pid,
    stop_tree,
    wait_pid_gone,
    wait_port_closed,
)
from ._status import NodeStatus


@dataclass
class RedisServer:
    """One ``redis-server`` process; ``pause()`` (SIGSTOP) and ``kill()`` make real faults."""

    name: str
    port: int
    directory: Path
    binary: Path
    account: Account
    cluster: bool = False
    _env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def pid(self) -> int | None:
        try:
            pid = int((self.directory / "redis.pid").read_text().strip())
        except (FileNotFoundError, ValueError, PermissionError):
            return None
        return pid if pid_alive(pid) else None

    @property
    def is_running(self) -> bool:
        return self.pid is not None

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=5, **kwargs)  # type: ignore[arg-type]

    def start(self, timeout: float = 15.0) -> None:
        if self.is_running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.account.own(self.directory)
        conf = self.directory / "redis.conf"
        conf.write_text(_config(self.port, self.directory, cluster=self.cluster))
        result = self.account.run([self.binary, conf], env=self._env, cwd=self.directory)
        if result.returncode != 0:
            raise StackError(
                f"redis-server {self.name} (port {self.port}) did not start: "
                f"{(result.stderr or result.stdout).strip() or self._tail_log()}"
            )
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError), self.client() as client:
                if client.ping():
                    return
            if time.monotonic() > deadline:
                raise StackError(
                    f"redis-server {self.name} (port {self.port}) did not answer PING within "
                    f"{timeout:.0f}s; its log ends with:\n{self._tail_log()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid
        if pid is None:
            return
        stop_tree(pid, signal.SIGTERM, timeout)
        wait_port_closed(self.port, 5.0)

    def kill(self) -> None:
        pid = self.pid
        if pid is not None:
            signal_pid(pid, signal.SIGKILL)
            wait_pid_gone(pid, 10.0)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a hung Redis)."""
        self._signal_running(signal.SIGSTOP, "pause")

    def resume(self) -> None:
        self._signal_running(signal.SIGCONT, "resume")

    def status(self) -> NodeStatus:
        pid = self.pid
        role = ("cluster-master" if self.cluster else "redis") if pid else "down"
        return NodeStatus(self.name, role, self.port, pid, pid is not None)

    def _signal_running(self, sig: signal.Signals, action: str) -> None:
        pid = self.pid
        if pid is None:
            raise StackError(f"{self.name} is not running: start() it before {action}()")
        signal_pid(pid, sig)

    def _tail_log(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _config(port: int, directory: Path, *, cluster: bool) -> str:
    lines = [
        f"bind {LOOPBACK}",
        f"port {port}",
        "protected-mode yes",
        "daemonize yes",
        f"pidfile {directory / 'redis.pid'}",
        f"logfile {directory / 'redis.log'}",
        f"dir {directory}",
        'save ""',
        "appendonly no",
    ]
    if cluster:
        lines += [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            "cluster-node-timeout 3000",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class RedisClusterGroup:
    """Three cluster-enabled masters joined into one Redis Cluster (16384 slots split 3 ways)."""

    servers: list[RedisServer]
    cli: Path
    account: Account
    _env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        """A seed URL; ``redis.cluster.RedisCluster.from_url`` discovers the other masters."""
        return f"redis://{LOOPBACK}:{self.servers[0].port}"

    def start(self, timeout: float = 30.0) -> None:
        for server in self.servers:
            server.start()
        if self._state() == "ok":
            return  # restarted servers rejoin from their nodes.conf
        addresses = [f"{LOOPBACK}:{s.port}" for s in self.servers]
        result = self.account.run(
            [
                self.cli,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            env=self._env,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise StackError(
                f"redis-cli --cluster create failed: {(result.stdout + result.stderr)[-600:]}"
            )
        deadline = time.monotonic() + timeout
        while self._state() != "ok":
            if time.monotonic() > deadline:
                raise StackError(f"Redis Cluster on {addresses} did not reach cluster_state:ok")
            time.sleep(0.05)

    def _state(self) -> str:
        states = set()
        for server in self.servers:
            try:
                with server.client() as client:
                    info = client.execute_command("CLUSTER INFO")
            except redis.RedisError:
                return "down"
            if isinstance(
                info, bytes
            ):  # redis-py parses CLUSTER INFO into a dict; older ones don't
                info = dict(line.split(":", 1) for line in info.decode().split() if ":" in line)
            states.add(str(info.get("cluster_state", "?")))
            if str(info.get("cluster_known_nodes")) != str(len(self.servers)):
                return "forming"
        return states.pop() if len(states) == 1 else "forming"

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
