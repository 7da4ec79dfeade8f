"""PoolMetrics: the one place a pool's events are counted, timed and attributed.

The adapters (SQLAlchemy events, the metered pool classes, psycopg_pool) only translate their
own callbacks into the calls below; every number in a :class:`PoolSnapshot`, the leak reports
and the exhaustion message come from here. Times are kept in microseconds in HdrHistograms
(1 µs .. 1 h, 3 significant digits). A checkout only appends to a deque (atomic, no lock); the
samples are folded into the histograms by the housekeeping thread every second and when they
are read, at half-float precision (``_fold_samples``).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat, starmap
from typing import Any

from hdrh.histogram import HdrHistogram

from ._callstack import call_site, capture_stack, format_stack
from ._errors import PoolExhaustedError

logger = logging.getLogger("hotpath.pool")

_HOUR_US = 3_600_000_000
_US = 1e6
_HALF = struct.Struct("e")


def _histogram() -> HdrHistogram:
    return HdrHistogram(1, _HOUR_US, 3)


def _fold_samples(raw: deque[float], hist: HdrHistogram) -> None:
    """Record the samples (seconds) pending in ``raw`` into ``hist`` (microseconds).

    A checkout adds two samples, so this runs twice per checkout: it is kept in C as far as
    possible. The samples are packed as IEEE half floats, 11 significant bits: 0.06 µs steps
    below 61 µs, then 1/2048 of the value, finer than the histogram's own 3 significant
    digits. Equal halves are then counted and recorded once with their count
    (``HdrHistogram.record_value`` is Python: a call per distinct value, not per sample).
    """
    # popleft, not a swap: appends racing the fold are never lost.
    samples = tuple(starmap(raw.popleft, repeat((), len(raw))))
    if not samples:
        return
    try:
        packed = struct.pack(f"{len(samples)}e", *samples)
    except OverflowError:  # a sample over 65504 s (18 h): whole microseconds instead
        for value, count in Counter(map(round, map(_US.__mul__, samples))).items():
            hist.record_value(min(max(1, value), _HOUR_US), count)
        return
    for half, count in Counter(memoryview(packed).cast("H")).items():
        (seconds,) = _HALF.unpack(half.to_bytes(2, sys.byteorder))
        # Clamped: a sample past the histogram's hour would be dropped, and with it a checkout.
        # Rounded, not truncated: 3 µs reads back from a half float as 2.9998 µs.
        hist.record_value(min(max(1, int(seconds * _US + 0.5)), _HOUR_US), count)


@dataclass(frozen=True)
class Percentiles:
    """Milliseconds: median, 99th percentile and maximum over ``count`` samples."""

    p50: float
    p99: float
    max: float
    count: int

    def __str__(self) -> str:
        return (
            f"p50 {self.p50:.2f} ms, p99 {self.p99:.2f} ms, max {self.max:.2f} ms (n={self.count})"
        )


def _percentiles(hist: HdrHistogram) -> Percentiles:
    count = hist.get_total_count()
    if count == 0:
        return Percentiles(0.0, 0.0, 0.0, 0)
    return Percentiles(
        hist.get_value_at_percentile(50) / 1e3,
        hist.get_value_at_percentile(99) / 1e3,
        hist.get_max_value() / 1e3,
        count,
    )


@dataclass(frozen=True)
class PoolShape:
    """What the pool itself says about its limits and, where it can tell, its state: open and
    idle connections (psycopg_pool), callers waiting (psycopg_pool, SQLAlchemy's queue pools).
    """

    pool_size: int
    max_overflow: int
    timeout_s: float | None
    kind: str
    size: int | None = None  # open connections, when the pool reports them itself
    idle: int | None = None
    waiting: int | None = None


@dataclass(frozen=True)
class Holder:
    """Connections checked out from one call site right now."""

    call_site: str
    count: int
    longest_s: float
    median_s: float

    def __str__(self) -> str:
        held = f"held up to {self.longest_s:.2f} s"
        if self.count > 1:
            held += f", median {self.median_s:.2f} s"
        return f"{self.count}x {self.call_site} ({held})"


@dataclass(frozen=True)
class PoolSnapshot:
    """A consistent view of one pool at one instant (see ``docs/pool.md`` for each field)."""

    name: str
    kind: str
    size: int
    checked_out: int
    idle: int
    overflow: int
    pool_size: int
    max_overflow: int
    waiting: int | None
    acquire_wait: Percentiles | None
    hold: Percentiles
    connect: Percentiles
    checkouts: int
    timeouts: int | None
    invalidations: int
    expired: int
    connects: int
    pings: int
    pings_failed: int
    leaks: int
    oldest_connection_age_s: float | None
    holders: tuple[Holder, ...] = field(default=())

    def describe(self) -> str:
        """A few lines for logs and the CLI."""
        wait = str(self.acquire_wait) if self.acquire_wait else "n/a (pool not metered)"
        age = (
            f"{self.oldest_connection_age_s:.1f} s"
            if self.oldest_connection_age_s is not None
            else "-"
        )
        lines = [
            f"pool {self.name} ({self.kind}): {self.size} open = {self.checked_out} checked out"
            f" + {self.idle} idle; overflow {self.overflow}/{self.max_overflow};"
            f" waiting {self.waiting if self.waiting is not None else 'n/a'}",
            f"  acquire wait: {wait}",
            f"  hold: {self.hold}",
            f"  connect: {self.connect}",
            f"  checkouts {self.checkouts}, timeouts {self.timeouts}, invalidations"
            f" {self.invalidations}, expired {self.expired}, connects {self.connects},"
            f" pings {self.pings} ({self.pings_failed} failed), leaks {self.leaks},"
            f" oldest connection {age}",
        ]
        lines += [f"  holder: {h}" for h in self.holders]
        return "\n".join(lines)


# (perf_counter() at checkout, *checkout stack): flat, one tuple per checkout.
Hold = tuple[Any, ...]
# What a hold is keyed by: the pool entry (SQLAlchemy) or the connection (psycopg_pool),
# hashed by identity, the same object at checkout and at checkin.
Key = object


class CheckoutState:
    """What a metered pool's checkout and checkin touch, and nothing more: the hot path.

    :class:`PoolMetrics` owns one (``PoolMetrics.hot``) and reads it; the metered pools'
    checkout and checkin (``_sa_pools``' closures, the psycopg pools' ``getconn``/``putconn``)
    write only here, with plain dict and deque operations (atomic under the GIL, no lock),
    because a method call per checkout would cost as much as all of that work. Slotted: each
    attribute read is a fixed offset, and nothing else can be hung on it.
    """

    __slots__ = ("acquire_samples", "capture_stacks", "hold_samples", "holds", "reported")

    def __init__(self, capture_stacks: bool) -> None:
        # Raw samples in seconds, folded into the histograms off the request path (every
        # pool's metrics are watched by the housekeeping thread, which folds them). With a
        # metered acquire, each checkout adds exactly one acquire sample: that is the
        # checkout count, so no counter is needed for it.
        self.acquire_samples: deque[float] = deque()
        self.hold_samples: deque[float] = deque()
        # Key -> Hold; a checkout adds, a checkin pops (both atomic).
        self.holds: dict[Key, Hold] = {}
        # Holds reported as leaks (by PoolMetrics.check_leaks); a checkin only looks here
        # when it is not empty.
        self.reported: dict[Key, Hold] = {}
        # Whether a checkout keeps its call site (set by instrument_pool()).
        self.capture_stacks = capture_stacks


def _counted(counter: itertools.count[int]) -> int:
    """How many times ``next(counter)`` has run (``itertools.count`` has no getter)."""
    return int(repr(counter)[6:-1])


class PoolMetrics:
    """Counters, histograms and holders of one pool; thread-safe, cheap per checkout.

    The per-checkout work is plain dict and deque operations (atomic under the GIL, no lock)
    and ``time.perf_counter()``; the metered pool classes do it inline on :attr:`hot`, the
    :class:`CheckoutState` this object owns and reads (a method call per checkout would cost
    as much as all of that work).
    Waiting callers are read from the pool itself (``PoolShape.waiting``), not counted here.
    Everything else takes the lock.
    """

    def __init__(
        self,
        name: str,
        shape: Callable[[], PoolShape],
        *,
        leak_threshold_s: float | None = 30.0,
        capture_stacks: bool = True,
        metered_acquire: bool = True,
    ) -> None:
        self.name = name
        self.leak_threshold_s = leak_threshold_s
        self.hot = CheckoutState(capture_stacks)
        self.metered_acquire = metered_acquire
        self._shape = shape
        self._lock = threading.Lock()
        self._fold_lock = threading.Lock()
        self._acquire_us = _histogram()
        self._hold_us = _histogram()
        self._connect_us = _histogram()
        # The hot state's containers under this object's own names (the same objects).
        self._acquire_raw = self.hot.acquire_samples
        self._hold_raw = self.hot.hold_samples
        self._holds = self.hot.holds
        self._reported = self.hot.reported
        self._connect_raw: deque[float] = deque()
        self._checkouts = itertools.count()  # checkouts of pools without a metered acquire
        self._opened: dict[int, float] = {}  # connection key -> monotonic open time
        self._timeouts = 0
        self._invalidations = 0
        self._expired = 0
        self._connects = 0
        self._pings = 0
        self._pings_failed = 0
        self._leaks = 0
        # Periodic liveness work of the pool's adapter, run by the housekeeping thread.
        self.sweep: Callable[[], Callable[[], None] | None] | None = None

    @property
    def capture_stacks(self) -> bool:
        """Whether a checkout keeps its call site (leak reports and holders name it)."""
        return self.hot.capture_stacks

    @capture_stacks.setter
    def capture_stacks(self, value: bool) -> None:
        self.hot.capture_stacks = value

    def after_fork(self) -> None:
        """In a forked child: new locks (another thread may have held these at the fork), and
        none of the parent's checkouts, which the child can never return."""
        self._lock = threading.Lock()
        self._fold_lock = threading.Lock()
        self._holds.clear()
        self._reported.clear()

    # -- acquiring (the sync metered pools inline ``acquired``: their hot path) -------------

    def acquire_started(self) -> float:
        return time.perf_counter()

    def acquired(self, started: float, key: Key, skip: int = 1) -> None:
        """An acquire that began at ``started`` got connection ``key``: wait time and hold."""
        now = time.perf_counter()
        self._acquire_raw.append(now - started)
        self._holds[key] = (now, *capture_stack(skip + 1)) if self.capture_stacks else (now,)

    def exhausted(
        self, started: float, original: BaseException, error: type[PoolExhaustedError]
    ) -> PoolExhaustedError:
        """Count the timeout and build the error that names the pool state and the holders."""
        waited = time.perf_counter() - started
        with self._lock:
            self._timeouts += 1
        snap = self.snapshot()
        holders = "; ".join(str(h) for h in snap.holders) or "none tracked"
        timeout = self._shape().timeout_s
        limit = f"{timeout:g} s" if timeout is not None else f"{waited:.2f} s"
        return error(
            f"pool {self.name} exhausted: no connection within {limit} "
            f"({snap.checked_out} of {snap.pool_size}+{snap.max_overflow} checked out, "
            f"{snap.idle} idle, {snap.waiting} other callers waiting, {snap.timeouts} timeouts "
            f"so far). Holders: {holders}. Fix: return connections sooner (no network calls "
            "or sleeps while a session or transaction is open; close sessions), or size the "
            "pool from the workload within the server's budget (PoolPlan.for_app(...)."
            f"explain()). Original error: {original}"
        )

    # -- connection lifecycle --------------------------------------------------------------

    def connection_opened(self, key: int, connect_s: float | None) -> None:
        with self._lock:
            self._opened[key] = time.monotonic()
            self._connects += 1
        if connect_s is not None:
            self._connect_raw.append(connect_s)

    def connection_closed(self, key: int) -> None:
        with self._lock:
            self._opened.pop(key, None)

    def invalidated(self, *, expired: bool = False) -> None:
        with self._lock:
            if expired:
                self._expired += 1
            else:
                self._invalidations += 1

    def pinged(self, *, ok: bool) -> None:
        with self._lock:
            self._pings += 1
            if not ok:
                self._pings_failed += 1

    # -- checkout / checkin (pools without a metered acquire) ------------------------------

    def checked_out(self, key: Key, skip: int = 1) -> None:
        next(self._checkouts)
        now = time.perf_counter()
        self._holds[key] = (now, *capture_stack(skip + 1)) if self.capture_stacks else (now,)

    def checked_in(self, key: Key) -> None:
        hold = self._holds.pop(key, None)  # dict.pop is atomic; holds are keyed per checkout
        if hold is not None:
            now = time.perf_counter()
            self._hold_raw.append(now - hold[0])
            if self._reported:
                self.returned(key, hold, now)

    def returned(self, key: Key, hold: Hold, now: float) -> None:
        """A checkin while leaks are reported: log the return of a reported one."""
        if self._reported.get(key) is hold and self._reported.pop(key, None) is hold:
            logger.info(
                "pool %s: the connection reported as leaked was returned after %.2f s (from %s)",
                self.name,
                now - hold[0],
                call_site(hold[1:]),
            )

    # -- histograms ------------------------------------------------------------------------

    def fold(self) -> None:
        """Move every pending sample into the histograms (the housekeeping thread calls it
        every second, snapshots before reading)."""
        with self._fold_lock:
            for raw, hist in (
                (self._acquire_raw, self._acquire_us),
                (self._hold_raw, self._hold_us),
                (self._connect_raw, self._connect_us),
            ):
                _fold_samples(raw, hist)

    # -- leak detection (driven by the watcher thread) -------------------------------------

    def check_leaks(self) -> int:
        """Log (once each) connections held longer than the threshold; return how many."""
        threshold = self.leak_threshold_s
        reported = self._reported
        holds = self._holds
        for key, hold in list(reported.items()):  # returned in a race with the last check
            if holds.get(key) is not hold:
                reported.pop(key, None)
        if threshold is None:
            return 0
        now = time.perf_counter()
        found: list[tuple[float, Hold]] = []
        for key, hold in list(holds.items()):
            if now - hold[0] > threshold and key not in reported:
                reported[key] = hold
                found.append((now - hold[0], hold))
        if found:
            with self._lock:
                self._leaks += len(found)
        for held, hold in found:
            logger.warning(
                "pool %s: possible connection leak: checked out %.2f s ago (threshold %g s) "
                "at %s and not returned; checked out by:\n%s",
                self.name,
                held,
                threshold,
                call_site(hold[1:]),
                format_stack(hold[1:])
                or ("  (no caller frame)" if self.capture_stacks else "  (stack capture is off)"),
            )
        return len(found)

    # -- reading ---------------------------------------------------------------------------

    def holders(self, top: int = 5) -> tuple[Holder, ...]:
        """Call sites holding connections now, the biggest holders first."""
        now = time.perf_counter()
        holds = list(self._holds.values())
        by_site: dict[str, list[float]] = {}
        for started, *stack in holds:
            if stack:
                site = call_site(stack)
            else:
                site = "<no caller frame>" if self.capture_stacks else "<stack capture off>"
            by_site.setdefault(site, []).append(now - started)
        ranked = sorted(by_site.items(), key=lambda item: (-len(item[1]), -max(item[1])))
        return tuple(
            Holder(site, len(times), max(times), statistics.median(times))
            for site, times in ranked[:top]
        )

    def snapshot(self, *, holders: bool = True) -> PoolSnapshot:
        shape = self._shape()
        self.fold()
        now = time.monotonic()
        with self._fold_lock, self._lock:
            checked_out = len(self._holds)
            size = shape.size if shape.size is not None else len(self._opened)
            oldest = min(self._opened.values(), default=None)
            acquire = _percentiles(self._acquire_us) if self.metered_acquire else None
            hold = _percentiles(self._hold_us)
            connect = _percentiles(self._connect_us)
            checkouts = (
                self._acquire_us.get_total_count() + len(self._acquire_raw)
                if self.metered_acquire
                else _counted(self._checkouts)
            )
            counters = (
                checkouts,
                self._timeouts,
                self._invalidations,
                self._expired,
                self._connects,
                self._pings,
                self._pings_failed,
                self._leaks,
            )
        idle = shape.idle if shape.idle is not None else max(0, size - checked_out)
        checkouts, timeouts, invalidations, expired, connects, pings, failed, leaks = counters
        return PoolSnapshot(
            name=self.name,
            kind=shape.kind,
            size=size,
            checked_out=checked_out,
            idle=idle,
            overflow=max(0, size - shape.pool_size),
            pool_size=shape.pool_size,
            max_overflow=shape.max_overflow,
            waiting=shape.waiting,
            acquire_wait=acquire,
            hold=hold,
            connect=connect,
            checkouts=checkouts,
            timeouts=timeouts if self.metered_acquire else None,
            invalidations=invalidations,
            expired=expired,
            connects=connects,
            pings=pings,
            pings_failed=failed,
            leaks=leaks,
            oldest_connection_age_s=None if oldest is None else now - oldest,
            holders=self.holders() if holders else (),
        )

    def histograms(self) -> dict[str, HdrHistogram]:
        """Copies of the raw histograms (µs), for exporters."""
        self.fold()
        with self._fold_lock:
            out = {"hold": _copy(self._hold_us), "connect": _copy(self._connect_us)}
            if self.metered_acquire:
                out["acquire_wait"] = _copy(self._acquire_us)
        return out


def _copy(hist: HdrHistogram) -> HdrHistogram:
    clone = _histogram()
    clone.add(hist)
    return clone
