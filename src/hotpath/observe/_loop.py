"""Blocked event loops: which request's step held the loop, for how long, and on what line.

The ASGI middleware runs each request's coroutine through :class:`TimedCoroutine`, which
marks the start and end of every step on its thread's :class:`LoopMonitor` (it works under
uvloop, whose handles cannot be patched). A watchdog thread looks at the marks every few
milliseconds; when a step has run past ``blocking_ms`` it samples the loop thread's stack
(the application line that is running) and its CPU clock. When the step ends, a step that
long is a :class:`LoopBlock`: every request in flight on that loop waited for it, and each
of them gets it in its ``blocked`` layer when it concludes. The CPU clock tells a blocking
call (``time.sleep``, a sync driver: the thread waited) from CPU-bound work (serialization:
the thread computed).

asyncio's debug mode would time every handle too, but costs ~13x per step; this costs two
attribute writes and a clock read per step.
"""

from __future__ import annotations

import linecache
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Generator
from time import perf_counter
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._frames import is_library
from ._records import CallSite, Layer
from ._timeline import LoopBlock

if TYPE_CHECKING:
    from ._scope import Scope

_KEEP_BLOCKS = 1024
# library frames that name what blocked, innermost first wins
_KNOWN = (
    ("/psycopg", "a sync database call (psycopg)"),
    ("/sqlalchemy/", "a sync database call (SQLAlchemy)"),
    ("/requests/", "a requests call"),
    ("/urllib3/", "a blocking HTTP call (urllib3)"),
    ("/redis/", "a sync Redis call"),
    ("/fastapi/encoders", "response serialization"),
    ("/fastapi/routing", "response serialization"),
    ("/pydantic", "response serialization"),
    ("/json/", "JSON encoding"),
)


class LoopMonitor:
    """The step marks of one thread's event loop and the blocks seen on it."""

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.step_started = 0.0  # 0: no instrumented step running
        self.step_scope: Scope | None = None
        self.threshold_s = 0.02
        self.depth = 0
        # filled by the watchdog during a long step
        self.seen_at = 0.0
        self.cpu_at_seen = 0.0
        self.samples: list[tuple[CallSite | None, str]] = []
        self.blocks: deque[LoopBlock] = deque(maxlen=_KEEP_BLOCKS)
        self._clock: int | None = None
        try:
            self._clock = time.pthread_getcpuclockid(thread_id)
        except (AttributeError, OSError):  # not on this platform: no CPU-bound verdict
            self._clock = None

    def begin(self, scope: Scope) -> None:
        self.depth += 1
        if self.depth == 1:
            self.step_scope = scope
            self.threshold_s = scope.settings.blocking_ms / 1000
            # reset only what a long step left behind: most steps are short, and this runs
            # for every step of every request
            if self.samples:
                self.samples = []
            if self.seen_at:
                self.seen_at = 0.0
            self.step_started = perf_counter()

    def end(self) -> None:
        self.depth -= 1
        if self.depth:
            return
        started, self.step_started = self.step_started, 0.0
        ended = perf_counter()
        if ended - started >= self.threshold_s:
            self._record(started, ended)

    def _record(self, started: float, ended: float) -> None:
        scope = self.step_scope
        site, what = _verdict(self.samples)
        cpu_bound = False
        if self.seen_at and self._clock is not None:
            spent = time.clock_gettime(self._clock) - self.cpu_at_seen
            cpu_bound = spent >= 0.5 * (ended - self.seen_at)
        if what is None:
            what = "CPU-bound code" if cpu_bound else "a blocking call"
        self.blocks.append(
            LoopBlock(
                started,
                ended,
                id(scope),
                scope.name if scope is not None else "?",
                site,
                what,
                cpu_bound,
            )
        )

    def sample(self, now: float) -> float:
        """Called by the watchdog: look at the step running now, if it runs long. Returns
        how long the watchdog may sleep before this loop needs another look: until the
        running step (or one starting now) would become long, or, during a long step, the
        sampling interval."""
        started = self.step_started
        if not started:
            return self.threshold_s
        if now - started < self.threshold_s:
            return started + self.threshold_s - now
        frame = sys._current_frames().get(self.thread_id)
        if frame is None or not self.step_started:
            return _INTERVAL_S
        if not self.seen_at:
            self.seen_at = now
            if self._clock is not None:
                self.cpu_at_seen = time.clock_gettime(self._clock)
        if len(self.samples) < 32:
            self.samples.append(_describe(frame))
        return _INTERVAL_S

    def blocks_during(self, start: float, end: float) -> list[LoopBlock]:
        # Blocks are appended when their step ends, so their ends only grow: walk back from
        # the newest and stop at the first that ended before ``start`` (a loaded machine
        # keeps the deque full, and every async scope looks when it concludes).
        found = []
        for block in reversed(self.blocks):
            if block.end <= start:
                break
            if block.start < end:
                found.append(block)
        found.reverse()
        return found


def _describe(frame: FrameType) -> tuple[CallSite | None, str]:
    """The application line running in ``frame``'s stack, and what the library frames
    above it say it is doing."""
    what = ""
    current: FrameType | None = frame
    while current is not None:
        code = current.f_code
        if not is_library(code):
            line = linecache.getline(code.co_filename, current.f_lineno).strip()
            site = CallSite(code.co_filename, current.f_lineno, code.co_name)
            return site, what or (f"`{line}`" if line else "")
        if not what:
            filename = code.co_filename.replace("\\", "/")
            for fragment, label in _KNOWN:
                if fragment in filename:
                    what = label
                    break
        current = current.f_back
    return None, what


def _verdict(samples: list[tuple[CallSite | None, str]]) -> tuple[CallSite | None, str | None]:
    if not samples:
        return None, None
    counts: dict[tuple[CallSite | None, str], int] = {}
    for sample in samples:
        counts[sample] = counts.get(sample, 0) + 1
    (site, what), _ = max(counts.items(), key=lambda item: item[1])
    return site, what or None


_monitors: dict[int, LoopMonitor] = {}
_watchdog_lock = threading.Lock()
_watchdog: threading.Thread | None = None
_INTERVAL_S = 0.005  # between two looks at a step already long
_MIN_SLEEP_S = 0.0005
_IDLE_WAIT_S = 0.02  # the longest sleep (a loop may be registered meanwhile)


def monitor_for_this_thread() -> LoopMonitor:
    thread_id = threading.get_ident()
    monitor = _monitors.get(thread_id)
    if monitor is None:
        monitor = _monitors[thread_id] = LoopMonitor(thread_id)
        _start_watchdog()
    return monitor


def _start_watchdog() -> None:
    global _watchdog
    with _watchdog_lock:
        if _watchdog is None or not _watchdog.is_alive():
            _watchdog = threading.Thread(target=_watch, name="hotpath-loop-watchdog", daemon=True)
            _watchdog.start()


def _watch() -> None:
    # It wakes when a step could have become long, not every interval: each wake-up takes
    # the GIL from the loop it watches (a fixed 5 ms tick cost a busy server ~1% of a core).
    wait = _INTERVAL_S
    while True:
        time.sleep(max(wait, _MIN_SLEEP_S))
        now = perf_counter()
        wait = _IDLE_WAIT_S
        for monitor in list(_monitors.values()):
            try:
                wait = min(wait, monitor.sample(now))
            except Exception:  # a watchdog never takes the app down
                continue


class TimedCoroutine:
    """Await ``coro`` with each of its steps marked on the loop thread's monitor."""

    __slots__ = ("_coro", "_monitor", "_scope")

    def __init__(self, coro: Awaitable[Any], scope: Scope) -> None:
        # an ASGI app returns a coroutine; any other awaitable is driven by its iterator
        self._coro: Any = coro if hasattr(coro, "send") else coro.__await__()
        self._scope = scope
        self._monitor = monitor_for_this_thread()

    def __await__(self) -> Generator[Any, Any, Any]:
        return self

    def __iter__(self) -> TimedCoroutine:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        monitor = self._monitor
        monitor.begin(self._scope)
        try:
            return self._coro.send(value)
        finally:
            monitor.end()

    def throw(self, *args: Any) -> Any:
        monitor = self._monitor
        monitor.begin(self._scope)
        try:
            return self._coro.throw(*args)
        finally:
            monitor.end()

    def close(self) -> None:
        self._coro.close()


def collect_blocks(scope: Scope) -> None:
    """Give a concluding async scope the loop blocks that happened while it ran."""
    monitor = _monitors.get(threading.get_ident())
    if monitor is None or not monitor.blocks:
        return
    blocks = monitor.blocks_during(scope.started, scope.ended)
    scope.timeline.blocks = blocks
    scope.timeline.spans.extend((Layer.BLOCKED, b.start, b.end) for b in blocks)
