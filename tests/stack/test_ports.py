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

from hotpath.stack import _process
from hotpath.stack._process import LOOPBACK, _ephemeral_range, free_ports, port_is_free, quiet_ports


def _outside_ephemeral(port: int) -> bool:
    first, last = _ephemeral_range()
    return not first <= port <= last


def test_an_outgoing_connection_takes_its_local_port_from_the_ephemeral_range() -> None:
    # The unprotected path: the range free_ports avoids is where clients' ports come from.
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen()
        assert not _outside_ephemeral(server.getsockname()[1])  # what bind(0) hands out
        with socket.create_connection(server.getsockname()) as client:
            assert not _outside_ephemeral(client.getsockname()[1])


def test_free_ports_are_distinct_free_and_outside_the_ephemeral_range() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(_outside_ephemeral(p) and port_is_free(p) for p in ports)


def test_cluster_ports_leave_room_for_the_bus_port() -> None:
    ports = free_ports(3, bus_offset=10000)
    taken = ports + [p + 10000 for p in ports]
    assert len(set(taken)) == 6
    assert all(_outside_ephemeral(p) and port_is_free(p) for p in taken)


def test_a_busy_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, free_ports(1)[0]))
        busy.listen()
        port = busy.getsockname()[1]
        ports = quiet_ports()
        # Start the walk so that its first candidate is the busy port.
        index = ports.index(port)
        monkeypatch.setattr(random, "randrange", lambda span: (index - 7919) % span)
        chosen = free_ports(1)[0]
        assert chosen != port
        assert chosen == ports[(index + 7919) % len(ports)]  # the walk's next candidate


@pytest.mark.parametrize(
    ("setting", "bus_offset", "expected"),
    [
        ("32768\t60999\n", 0, range(10000, 32768)),  # Linux's default: below it
        ("32768\t60999\n", 10000, range(10000, 22768)),  # bus ports below it too
        ("1024\t40000\n", 0, range(40001, 65536)),  # starts low: above it
        ("1024\t65535\n", 0, range(10000, 65536)),  # all of it: no quiet place left
    ],
)
def test_where_free_ports_look(
    tmp_path: Path, setting: str, bus_offset: int, expected: range
) -> None:
    source = tmp_path / "ip_local_port_range"
    source.write_text(setting)
    assert quiet_ports(bus_offset, source) == expected
    assert _ephemeral_range(tmp_path / "missing") == (32768, 60999)


def test_the_walk_visits_every_port_when_the_stride_divides_the_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 7919 ports to walk: a stride of 7919 would look at one port over and over
    monkeypatch.setattr(_process, "quiet_ports", lambda bus_offset=0: range(10000, 17919))
    looked: list[int] = []
    monkeypatch.setattr(_process, "port_is_free", lambda port: looked.append(port) or False)
    with pytest.raises(_process.StackError):
        free_ports(1)
    assert len(set(looked)) == len(looked) == 4000  # as many ports as looks, none twice
