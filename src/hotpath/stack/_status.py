"""What ``LocalStack.status()`` reports per server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeStatus:
    """One server of the stack as seen right now.

    ``role`` is ``primary``/``replica`` for PostgreSQL (read from the server, so a promoted
    replica reports ``primary``), ``redis``, ``cluster-master`` or ``pgbouncer``, or ``down``.
    Lag is reported for replicas only: bytes of WAL not yet replayed, and seconds since the
    last replayed commit while replay is behind (0 when caught up).
    """

    name: str
    role: str
    port: int
    pid: int | None
    running: bool
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    replay_paused: bool | None = None
    note: str = ""
