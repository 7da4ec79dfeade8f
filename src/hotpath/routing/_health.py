"""Per-node health as a small state machine fed by probes: admitted or ejected, with hysteresis.

Lag in seconds is estimated from the primary's WAL history (when did the primary first have
WAL the replica has not replayed?) rather than from ``pg_last_xact_replay_timestamp()``, which
stalls while the primary is idle: an idle primary means a caught-up replica has lag 0.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from ._config import RoutingConfig

Role = Literal["primary", "replica", "unknown"]


@dataclass(frozen=True)
class ProbeResult:
    """One successful probe: the node's role and WAL position (written, or replayed)."""

    in_recovery: bool
    lsn: int
    replay_paused: bool = False


class WalHistory:
    """Recent (time, WAL position) samples of the primary, to turn byte lag into seconds."""

    def __init__(self, keep: int = 512) -> None:
        self._times: deque[float] = deque(maxlen=keep)
        self._lsns: deque[int] = deque(maxlen=keep)

    @property
    def latest(self) -> int | None:
        return self._lsns[-1] if self._lsns else None

    def record(self, lsn: int, now: float) -> None:
        if self._lsns and lsn <= self._lsns[-1]:
            return  # only the first sighting of a new position matters
        self._times.append(now)
        self._lsns.append(lsn)

    def lag_seconds(self, replayed: int, now: float) -> float:
        """Seconds since the primary first held WAL beyond ``replayed`` (0 if none is known)."""
        index = bisect.bisect_right(list(self._lsns), replayed)
        if index >= len(self._lsns):
            return 0.0
        return max(0.0, now - self._times[index])


@dataclass
class NodeHealth:
    """What the router knows about one node; mutated only through :meth:`observe`/:meth:`fail`."""

    name: str
    configured_role: Role
    role: Role = "unknown"
    admitted: bool = False
    reachable: bool = False  # the last probe answered (a lagging replica is reachable)
    reason: str | None = "not probed yet"
    lsn: int | None = None
    lag_s: float | None = None
    lag_bytes: int | None = None
    replay_paused: bool | None = None
    bad_streak: int = 0
    good_streak: int = 0
    ejections: int = 0
    probes: int = 0
    probe_started_at: float | None = None
    last_probe_at: float | None = None
    reads: int = 0
    _probed: bool = field(default=False, repr=False)

    def probe_hung(self, now: float, timeout: float) -> bool:
        started = self.probe_started_at
        return started is not None and now - started > timeout

    def observe(
        self,
        result: ProbeResult,
        primary_lsn: int | None,
        history: WalHistory,
        config: RoutingConfig,
        now: float,
    ) -> None:
        """Apply a successful probe: update role, position and lag, then admit or eject."""
        self.probes += 1
        self.last_probe_at = now
        self.reachable = True
        role: Role = "replica" if result.in_recovery else "primary"
        if self.role not in (role, "unknown"):
            self._probed = False  # a new role (promotion) is judged afresh, without hysteresis
        self.role = role
        self.replay_paused = result.replay_paused if result.in_recovery else None
        # A replica's replayed position never goes back; an on-the-spot check may be newer.
        keep_newer = self.role == "replica" and self.lsn is not None and self.lsn > result.lsn
        self.lsn = self.lsn if keep_newer else result.lsn
        if self.role == "primary":
            self.lag_s, self.lag_bytes = None, None
            self._verdict(None, config)
            return
        self.lag_bytes = None if primary_lsn is None else max(0, primary_lsn - result.lsn)
        self.lag_s = history.lag_seconds(result.lsn, now)
        problem = None
        if self.lag_s > config.max_lag_s:
            problem = f"lagging {self.lag_s:.2f}s > max_lag_s={config.max_lag_s:g}"
        elif (
            config.max_lag_bytes is not None
            and self.lag_bytes is not None
            and self.lag_bytes > config.max_lag_bytes
        ):
            problem = f"lagging {self.lag_bytes} bytes > max_lag_bytes={config.max_lag_bytes}"
        self._verdict(problem, config)

    def fail(self, reason: str, config: RoutingConfig, now: float, *, at_once: bool) -> None:
        """A failed probe (counts toward ejection) or a failed read (``at_once``: eject now)."""
        self.last_probe_at = now
        self.reachable = False
        if at_once:
            self.bad_streak = max(self.bad_streak, config.eject_after - 1)
        self._verdict(reason, config)

    def note_replayed(self, lsn: int) -> None:
        """An on-the-spot check saw this replica at ``lsn``: remember it for later reads."""
        if self.role == "replica" and (self.lsn is None or lsn > self.lsn):
            self.lsn = lsn

    def _verdict(self, problem: str | None, config: RoutingConfig) -> None:
        first = not self._probed
        self._probed = True
        if problem is None:
            self.bad_streak = 0
            self.good_streak += 1
            if not self.admitted and (first or self.good_streak >= config.readmit_after):
                self.admitted, self.reason = True, None
            return
        self.good_streak = 0
        self.bad_streak += 1
        if self.admitted and self.bad_streak >= config.eject_after:
            self.admitted = False
            self.ejections += 1
        if not self.admitted or first:
            self.admitted = False
            self.reason = problem
