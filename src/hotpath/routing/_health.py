"""Per-node health as a small state machine fed by probes: admitted or ejected, with hysteresis.

Whether a replica follows the current primary at all is judged by the router (it needs the
primary's position and timeline), recorded here as :data:`Following`.

Lag in seconds is estimated from the primary's WAL history (when did the primary first have
flushed WAL the replica has not replayed?) rather than from
``pg_last_xact_replay_timestamp()``, which stalls while the primary is idle: an idle primary
means a caught-up replica has lag 0.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from ._config import RoutingConfig

Role = Literal["primary", "replica", "unknown"]
# Does a replica replay the current primary's history? "unconfirmed" until a probe shows it
# (at start, and after every failover); "diverged" when it is on another timeline or ahead of
# the primary (a replica still on the old primary's timeline after a promotion). Only
# "follows" serves reads.
Following = Literal["unconfirmed", "follows", "diverged"]


@dataclass(frozen=True)
class ProbeResult:
    """One successful probe: the node's role, WAL position (flushed, or replayed), timeline.

    ``timeline``: a primary's current one; a replica's is the timeline its WAL receiver
    streams, or None when that is not known (not streaming, or the probing user may not see
    ``pg_stat_wal_receiver``: it needs ``pg_read_all_stats``).
    """

    in_recovery: bool
    lsn: int
    replay_paused: bool = False
    timeline: int | None = None


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
    lsn_seen_at: float | None = None  # when ``lsn`` was read (the probe's start, or a check's)
    timeline: int | None = None
    following: Following = "unconfirmed"
    # Why a replica is not "follows" (shown by status()).
    follow_reason: str | None = "not yet compared with the primary"
    # A replayed position beyond the primary's last known one, and when it was read: the
    # primary's next probe (begun after that) decides whether the replica is ahead of it.
    ahead: tuple[int, float] | None = None
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
        started: float | None = None,
    ) -> None:
        """Apply a successful probe begun at ``started``: role, position, lag; admit or eject."""
        self.probes += 1
        self.last_probe_at = now
        self.reachable = True
        started = now if started is None else started
        role: Role = "replica" if result.in_recovery else "primary"
        same_role = self.role == role
        if self.role not in (role, "unknown"):
            self._probed = False  # a new role (promotion) is judged afresh, without hysteresis
            self.start_following()
        self.role = role
        self.replay_paused = result.replay_paused if result.in_recovery else None
        self.timeline = result.timeline
        # An on-the-spot check read after this probe began may have seen a newer position:
        # keep it. Anything older is replaced by the probe's answer, even a lower one (a
        # replica rebuilt from a new primary, or back on another timeline, goes back).
        keep_newer = (
            same_role
            and self.role == "replica"
            and self.lsn is not None
            and self.lsn > result.lsn
            and self.lsn_seen_at is not None
            and self.lsn_seen_at > started
        )
        if not keep_newer:
            self.lsn, self.lsn_seen_at = result.lsn, started
        if self.role == "primary":
            self.lag_s, self.lag_bytes = None, None
            self._verdict(None, config)
            return
        self.lag_bytes = None if primary_lsn is None else max(0, primary_lsn - result.lsn)
        self.lag_s = history.lag_seconds(result.lsn, now)
        problem = None
        if self.following == "diverged":
            problem = self.follow_reason
            self.bad_streak = max(self.bad_streak, config.eject_after - 1)  # no hysteresis
        elif self.lag_s > config.max_lag_s:
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

    def note_replayed(self, lsn: int, seen_at: float) -> None:
        """An on-the-spot check saw this replica at ``lsn``: remember it for later reads."""
        if self.role == "replica" and (self.lsn is None or lsn > self.lsn):
            self.lsn, self.lsn_seen_at = lsn, seen_at

    def start_following(self) -> None:
        """Judge afresh whether this node follows the primary (a new primary, or a new role)."""
        self.following, self.follow_reason, self.ahead = (
            "unconfirmed",
            "not yet compared with the new primary",
            None,
        )

    def mark_diverged(self, reason: str) -> None:
        """On another history than the primary's; the probe being applied ejects it."""
        self.following, self.follow_reason, self.ahead = "diverged", reason, None

    def diverge(self, reason: str, config: RoutingConfig) -> None:
        """Found on another history than the primary's: no reads, ejected now (no hysteresis)."""
        self.mark_diverged(reason)
        self.bad_streak = max(self.bad_streak, config.eject_after - 1)
        self._verdict(reason, config)

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
