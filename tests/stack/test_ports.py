"""Ports the stack picks stay out of the kernel's ephemeral range.

A port released after ``bind(0)`` comes from the range the kernel hands to outgoing
connections; a client connecting anywhere during initdb, or while a fault test has a server
stopped, can take it, and the server then cannot bind (a CI run lost its session stack so).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from hotpath.stack._process import LOOPBACK, _ephemeral_start, free_ports, port_is_free


def test_an_outgoing_connection_takes_its_local_port_from_the_ephemeral_range() -> None:
    # The unprotected path: the range free_ports avoids is where clients' ports come from.
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen()
        assert server.getsockname()[1] >= _ephemeral_start()  # what bind(0) hands out
        with socket.create_connection(server.getsockname()) as client:
            assert client.getsockname()[1] >= _ephemeral_start()


def test_free_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(10000 <= p < _ephemeral_start() and port_is_free(p) for p in ports)


def test_cluster_ports_leave_room_for_the_bus_port() -> None:
    ports = free_ports(3, bus_offset=10000)
    taken = ports + [p + 10000 for p in ports]
    assert len(set(taken)) == 6
    assert all(p < _ephemeral_start() and port_is_free(p) for p in taken)


def test_a_busy_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, free_ports(1)[0]))
        busy.listen()
        port = busy.getsockname()[1]
        span = _ephemeral_start() - 10000
        # Start the walk so that its first candidate is the busy port.
        monkeypatch.setattr(random, "randrange", lambda _n: (port - 10000 - 7919) % span)
        chosen = free_ports(1)[0]
        assert chosen != port
        assert chosen == 10000 + (port - 10000 + 7919) % span  # the walk's next candidate


def test_ephemeral_start_reads_the_kernel_setting(tmp_path: Path) -> None:
    setting = tmp_path / "ip_local_port_range"
    setting.write_text("40000\t60999\n")
    assert _ephemeral_start(setting) == 40000
    assert _ephemeral_start(tmp_path / "missing") == 32768
