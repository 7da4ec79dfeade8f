"""Process and port helpers shared by every server the stack runs."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import socket
import time
from pathlib import Path

import psutil

from ._errors import StackError

LOOPBACK = "127.0.0.1"


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` runs; a zombie counts as gone (PID 1 here may never reap it)."""
    if not pid:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def process_family(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants (empty when it is gone)."""
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def wait_all_gone(family: list[psutil.Process], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    return all(wait_pid_gone(p.pid, max(0.0, deadline - time.monotonic())) for p in family)


def kill_tree(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL ``pid`` and every descendant, and wait until all are gone."""
    family = process_family(pid)
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    wait_all_gone(family, timeout)


def stop_tree(pid: int, sig: signal.Signals, timeout: float) -> None:
    """Ask ``pid`` to exit with ``sig``; wait for it and all its children, SIGKILL if they hang."""
    family = process_family(pid)
    signal_pid(pid, signal.SIGCONT)  # a stopped (paused) process cannot act on ``sig``
    signal_pid(pid, sig)
    if not wait_all_gone(family, timeout):
        kill_tree(pid)
        for proc in family:  # orphans whose parent was already gone
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def port_owner(port: int) -> str | None:
    """Describe the process listening on ``port`` of loopback, when the OS lets us see it."""
    with contextlib.suppress(psutil.AccessDenied, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return "an unknown process"
                with contextlib.suppress(psutil.NoSuchProcess):
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    return None


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def ensure_port_free(port: int, what: str) -> None:
    if not port_is_free(port):
        owner = port_owner(port)
        by = f" by {owner}" if owner else ""
        raise StackError(
            f"port {port} on {LOOPBACK} (asked for {what}) is already in use{by}: "
            "stop that process, choose another port, or leave the port out to pick a free one"
        )


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10000  # below it live the well-known services (5432, 6379, 8000, ...)
_ENOUGH_PORTS = 1000


def _ephemeral_range(source: Path = _EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections (Linux's default 32768-60999)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        first, last = source.read_text().split()[:2]
        return int(first), int(last)
    return 32768, 60999


def quiet_ports(bus_offset: int = 0, source: Path = _EPHEMERAL_RANGE_FILE) -> range:
    """Where :func:`free_ports` looks: below the ephemeral range, else (a range that starts
    too low) above it, else anywhere above the well-known ports (no quiet place left)."""
    first, last = _ephemeral_range(source)
    if first - bus_offset - _LOWEST_PORT >= _ENOUGH_PORTS:
        return range(_LOWEST_PORT, first - bus_offset)
    if 65536 - bus_offset - (last + 1) >= _ENOUGH_PORTS:
        return range(last + 1, 65536 - bus_offset)
    return range(_LOWEST_PORT, 65536 - bus_offset)


def free_ports(count: int, *, bus_offset: int = 0) -> list[int]:
    """``count`` distinct free loopback ports outside the kernel's ephemeral range.

    A port asked of the kernel (bind to port 0) comes from the ephemeral range, and once
    released it may be handed to any outgoing connection as its local port, say a test's
    client, in the seconds before the server (initdb, then postgres) binds it, or while a
    fault test has the server stopped. Outside the range no outgoing connection takes it.
    ``bus_offset`` asks for port + offset to be free and outside the range too (a Redis
    Cluster node's bus port; Redis < 7 cannot choose it).
    """
    ports = quiet_ports(bus_offset)
    span = len(ports)
    # a stride coprime with the span walks all of it without repeats, from a random start
    stride = 7919
    while math.gcd(stride, span) != 1:
        stride += 2
    chosen: list[int] = []
    candidate = random.randrange(span)
    for _ in range(min(span, 4000)):
        candidate = (candidate + stride) % span
        port = ports[candidate]
        if port in chosen or port + bus_offset in chosen or port - bus_offset in chosen:
            continue
        if port_is_free(port) and (not bus_offset or port_is_free(port + bus_offset)):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise StackError(f"no {count} free loopback ports in {ports.start}-{ports.stop - 1} were found")


def wait_port_closed(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not port_is_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
