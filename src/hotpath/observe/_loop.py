"""Blocked event loops: which request's step held the loop, for how long, and on what line.

The ASGI middleware registers each request's coroutine on its loop's monitor: for a loop's
first requests and for those after a block (:func:`marks_steps`), :func:`timed_steps` marks
the start and end of
every step on its thread's :class:`LoopMonitor` (it works under uvloop, whose handles cannot
be patched); the other requests are only registered in flight, and a stall among them is seen
by the heartbeat below. A watchdog thread looks at the marks every few
milliseconds; when a step has run past ``blocking_ms`` it samples the loop thread's stack
(the application line that is running) and its CPU clock. When the step ends, a step that
long is a :class:`LoopBlock`: every request in flight on that loop waited for it, and each
of them gets it in its ``blocked`` layer when it concludes. The CPU clock tells a blocking
call (``time.sleep``, a sync driver: the thread waited) from CPU-bound work (serialization:
the thread computed).

Requests not marked, and work of the request that runs in tasks of its own (Starlette's
``BaseHTTPMiddleware``, what ``@app.middleware("http")`` makes, runs the endpoint in a new
task; so does any ``create_task``), have no marked steps: while requests are in flight a
heartbeat on the loop
(a callback every ``_BEAT_S`` while the loop's requests are marked, every ``_QUIET_BEAT_S``
otherwise) tells the watchdog when the loop stopped answering, and the task that was running
names the request. The watchdog looks once per beat, so a quiet loop (no block seen since its
first requests) has fewer of both timers and wake-ups; a stall there is seen for certain once
it outlasts a quiet beat plus 1.25 ``blocking_ms`` (it is first looked at a ``blocking_ms``
after the beat it missed, and judged only if looked at for a quarter of one more), when the
machine lets the watchdog run on time; its recorded length starts at that missed beat. The
block it makes turns marking, and the fast beat, back on for the requests after it.

asyncio's debug mode would time every handle too, at many times the cost per step; this
costs a generator resumption, a few attribute writes and two clock reads per step, and one
callback per beat on a loop with requests in flight.
"""

from __future__ import annotations

import asyncio
import linecache
import sys
import threading
import time
import types
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

# read per query and per request: bound once (see ``_records.LAYERS``)
_BLOCKED = Layer.BLOCKED

_KEEP_BLOCKS = 1024
# Requests whose every step is marked: the first ones a loop serves, and those after a block.
# The marks time a long step exactly and name the request it belonged to; in between, the
# heartbeat and the watchdog still see every stall (its start known to a heartbeat's period,
# its request from the running task). Marking every step of every request cost a served app
# about 4% of its loop's CPU (docs/benchmarks.md, observe), for blocks most loops never have.
_MARKED_FIRST = 256
_MARKED_AFTER_BLOCK = 64
_BEAT_S = 0.01  # the heartbeat's period: a loop stalled past blocking_ms misses some beats
# The period on a quiet loop. Each beat is a timer on the loop and a watchdog wake-up taking
# the GIL from it: the served shop under load had 19 beats and 22 looks a second with it,
# against 69 and 51 at _BEAT_S (docs/benchmarks.md, observe, session 10).
_QUIET_BEAT_S = 0.05
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
        # made on its thread: the OS gives a finished thread's id to new threads (a test
        # client's loop thread per test module), whose monitor and CPU clock are their own
        self.thread = threading.current_thread()
        self.step_started = 0.0  # 0: no instrumented step running
        self.step_ended = 0.0
        self.step_scope: Scope | None = None
        self.threshold_s = 0.02
        self.depth = 0
        # filled by the watchdog during a long step
        self.seen_at = 0.0
        self.cpu_at_seen = 0.0
        self.samples: list[tuple[CallSite | None, str]] = []
        # a stall outside marked steps (the heartbeat was late), while the watchdog sees it
        self.stall_started = 0.0
        self.stall_scope: Scope | None = None  # the request whose task held the loop
        self.blocks: deque[LoopBlock] = deque(maxlen=_KEEP_BLOCKS)
        # the heartbeat: when the next beat is due on ``loop`` (0: not beating), and the
        # requests whose coroutines are in flight there (it beats while there are any)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.beat_due = 0.0
        self.in_flight: list[Scope] = []
        self.marked_left = _MARKED_FIRST  # requests still to be served with every step marked
        self._clock: int | None = None
        try:
            self._clock = time.pthread_getcpuclockid(thread_id)
        except (AttributeError, OSError):  # not on this platform: no CPU-bound verdict
            self._clock = None
        # the kernel's account of this thread (Linux): time on a core and time waiting for
        # one, which tells a step the machine starved from one the application made long
        self._schedstat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self.sched_at_seen: tuple[int, int] | None = None
        # how long the watchdog itself held the GIL while looking at this loop: on a starved
        # machine it can be preempted holding it, and the loop thread then sleeps on the GIL
        # (which the scheduler's statistics cannot tell from a blocking call)
        self.watchdog_held_s = 0.0
        self.held_at_seen = 0.0

    def _record(self, started: float, ended: float, scope: Scope | None) -> None:
        if self.blocks:  # one loop runs one step at a time: its blocks never overlap
            started = max(started, self.blocks[-1].end)
        if ended - started < self.threshold_s:
            return
        site, what = _verdict(self.samples)
        cpu_bound = False
        looked = ended - self.seen_at
        if self.seen_at and looked < self.threshold_s * _MIN_LOOKED:
            # the watchdog first looked at the step's very end (it waited for a core or the
            # GIL itself): what it saw says nothing of the rest, and a machine that starves
            # the watchdog starves the loop too (seen on a loaded machine: a 25 ms step
            # looked at for its last 0.9 ms, the thread running then, taken for CPU-bound
            # code). It is no block of the application's.
            return
        sched = _schedstat(self._schedstat) if self.seen_at else None
        if sched is not None and self.sched_at_seen is not None and looked > 0:
            ran_s = (sched[0] - self.sched_at_seen[0]) / 1e9
            waited_s = (sched[1] - self.sched_at_seen[1]) / 1e9
            waited_s += self.watchdog_held_s - self.held_at_seen
            slept_s = looked - ran_s - waited_s  # off a core by its own call (I/O, sleep)
            if waited_s >= 0.5 * looked and max(ran_s, slept_s) < self.threshold_s:
                # the thread was ready to run and waited for a core, and neither computed
                # nor waited on a call for a threshold's worth: an overloaded machine made
                # the step long, not the code it ran (no block of the application's). A
                # sleep still counts when the core it wakes to is slow to come.
                return
            cpu_bound = ran_s >= 0.5 * looked
        elif self.seen_at and self._clock is not None:
            spent = _cpu_seconds(self._clock) - self.cpu_at_seen
            cpu_bound = spent >= 0.5 * looked
        if what is None:
            what = "CPU-bound code" if cpu_bound else "a blocking call"
        # blocks recur (one endpoint's blocking call): the next requests are marked
        if self.marked_left <= 0:
            _wake.set()  # a quiet loop's watchdog may be asleep for a quiet beat
        self.marked_left = max(self.marked_left, _MARKED_AFTER_BLOCK)
        self.blocks.append(
            LoopBlock(
                started,
                ended,
                id(scope) if scope is not None else 0,
                # the route's name: a blocking line is judged per endpoint, not per URL
                scope.current_name() if scope is not None else "?",
                site,
                what,
                cpu_bound,
            )
        )

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """A new loop on this thread (``asyncio.run`` per test): its own state, and its own
        first requests marked."""
        self.loop, self.in_flight, self.beat_due = loop, [], 0.0
        self.samples, self.stall_started = [], 0.0
        self.marked_left = _MARKED_FIRST
        _wake.set()  # its first requests are marked: the watchdog looks at them from now

    def arrive(self, loop: asyncio.AbstractEventLoop, scope: Scope) -> None:
        """A request's coroutine starts on ``loop``: beat while it is in flight."""
        if loop is not self.loop:
            self.attach(loop)
        self.in_flight.append(scope)
        if not self.beat_due:
            period = self.beat_period()
            self.beat_due = perf_counter() + period
            loop.call_later(period, self._beat)

    def beat_period(self) -> float:
        """Fast while the loop's requests are marked (its first ones, those after a block)."""
        return _BEAT_S if self.marked_left > 0 else _QUIET_BEAT_S

    def leave(self, scope: Scope) -> None:
        if scope in self.in_flight:
            self.in_flight.remove(scope)

    def _close_stall(self, now: float) -> None:
        """The loop runs again after a stall the watchdog saw outside any marked step (it
        comes back to a marked step or to the heartbeat first, whichever is ready first)."""
        started, self.stall_started = self.stall_started, 0.0
        if now - started >= self.threshold_s:
            self._record(started, now, self.stall_scope)
        self.samples = []
        self.seen_at = 0.0
        self.stall_scope = None

    def _beat(self) -> None:
        now = perf_counter()
        if self.stall_started and not self.step_started:
            self._close_stall(now)
        if self.in_flight and self.loop is not None and not self.loop.is_closed():
            period = self.beat_period()
            self.beat_due = now + period
            self.loop.call_later(period, self._beat)
        else:
            self.beat_due = 0.0

    def sample(self, now: float) -> float:
        """Called by the watchdog: look at the step running now, if it runs long (a marked
        step of a request, or whatever keeps the loop from its heartbeat). Returns how long
        the watchdog may sleep before this loop needs another look: until the running step
        (or one starting now, or a late heartbeat) would become long, or, during a long step,
        the sampling interval."""
        started = self.step_started
        # the loop was last seen alive at a marked step's start or end, or at a heartbeat
        alive_at = max(self.beat_due, self.step_ended)
        stalled = not started and self.beat_due and now - alive_at >= self.threshold_s
        if stalled:
            loop = self.loop
            if loop is None or loop.is_closed() or not loop.is_running():
                self.beat_due = 0.0  # its loop is gone: no heartbeat to wait for
                return self.threshold_s
            if not self.stall_started:
                self.stall_scope = _running_scope(loop, self.in_flight)
                self.stall_started = alive_at
                self.samples = []
            started = self.stall_started
        if not started:
            if self.beat_due:  # requests in flight: a heartbeat late by the threshold is a stall
                return max(_INTERVAL_S, alive_at + self.threshold_s - now)
            # nothing in flight: a marked request's first step may start any moment
            return self.threshold_s if self.marked_left > 0 else _QUIET_BEAT_S
        look_from = started + self.threshold_s * _LOOK_AT
        if now < look_from:
            return look_from - now
        frame = sys._current_frames().get(self.thread_id)
        if frame is None or not (self.step_started or self.beat_due):
            return _INTERVAL_S
        if not self.seen_at:
            self.seen_at = now
            self.sched_at_seen = _schedstat(self._schedstat)
            self.held_at_seen = self.watchdog_held_s
            if self.sched_at_seen is None and self._clock is not None:
                self.cpu_at_seen = _cpu_seconds(self._clock)
        # a stall of seconds is named by what ran most of it, not by its first samples (an
        # SSL context loaded before a 1 s sync call); 2048 samples cover 10 s
        if len(self.samples) < 2048:
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


def _running_scope(loop: asyncio.AbstractEventLoop, in_flight: list[Scope]) -> Scope | None:
    """The request of the task running on ``loop`` (read from the watchdog thread): its
    context's scope (``Task.get_context()``, Python 3.12+); before 3.12 a task's context
    cannot be read, and only a request alone in flight is known (``None``: not known)."""
    from ._scope import current_scope  # noqa: PLC0415 - _scope imports this module's users

    try:
        task = asyncio.current_task(loop)
        get_context = getattr(task, "get_context", None)
        if get_context is not None:
            return get_context().get(current_scope)  # type: ignore[no-any-return]
    except Exception:  # a task or loop being torn down: no name for the stall
        return None
    flights = list(in_flight)
    return flights[0] if len(flights) == 1 else None


def _verdict(samples: list[tuple[CallSite | None, str]]) -> tuple[CallSite | None, str | None]:
    if not samples:
        return None, None
    counts: dict[tuple[CallSite | None, str], int] = {}
    for sample in samples:
        counts[sample] = counts.get(sample, 0) + 1
    (site, what), _ = max(counts.items(), key=lambda item: item[1])
    return site, what or None


_monitors: dict[int, LoopMonitor] = {}
_monitors_lock = threading.Lock()
_watchdog_lock = threading.Lock()
_watchdog: threading.Thread | None = None
_INTERVAL_S = 0.005  # between two looks at a step already long
# A step is first looked at when it has run this share of blocking_ms (a step that becomes a
# block is then seen for at least the rest of the threshold), and judged only if it was seen
# for at least _MIN_LOOKED of it.
_LOOK_AT = 0.5
_MIN_LOOKED = 0.25
_MIN_SLEEP_S = 0.0005
_IDLE_WAIT_S = _QUIET_BEAT_S  # the longest sleep (a new or marking loop wakes it: _wake)
# Set when a loop starts marking its requests (a new loop, a block on a quiet one): the
# watchdog, which may sleep a quiet beat, then looks at once.
_wake = threading.Event()


def _schedstat(path: str) -> tuple[int, int] | None:
    """A thread's nanoseconds on a core and waiting for one, from the kernel's scheduler
    statistics (``None`` where there are none: not Linux, or a kernel without them)."""
    try:
        with open(path, "rb") as stats:
            ran, waited = stats.read().split()[:2]
        return int(ran), int(waited)
    except (OSError, ValueError):
        return None


def _cpu_seconds(clock: int) -> float:
    try:
        return time.clock_gettime(clock)
    except OSError:  # the thread is gone: its clock with it
        return 0.0


# this thread's monitor, read per request without a lookup by thread id: a new thread that
# reuses a finished one's id starts with an empty local, so it never finds that one's monitor
_this_thread = threading.local()


def monitor_for_this_thread() -> LoopMonitor:
    monitor: LoopMonitor | None = getattr(_this_thread, "monitor", None)
    if monitor is None:
        thread_id = threading.get_ident()
        with _monitors_lock:  # the watchdog's view, by thread id
            monitor = _monitors[thread_id] = LoopMonitor(thread_id)
        _this_thread.monitor = monitor
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
        _wake.wait(max(wait, _MIN_SLEEP_S))
        _wake.clear()
        now = perf_counter()
        wait = _IDLE_WAIT_S
        for thread_id, monitor in list(_monitors.items()):
            if not monitor.thread.is_alive():  # its loop thread ended
                with _monitors_lock:  # a new thread with its id may have a monitor by now
                    if _monitors.get(thread_id) is monitor:
                        del _monitors[thread_id]
                continue
            try:
                wait = min(wait, monitor.sample(now))
            except Exception:  # a watchdog never takes the app down
                continue
            # from its wake-up (when it had the GIL) to now: what the loop may have waited
            monitor.watchdog_held_s += perf_counter() - now


def monitor_for_this_loop(loop: asyncio.AbstractEventLoop) -> LoopMonitor:
    """The monitor of the running loop's thread (a new loop on it starts afresh)."""
    monitor = monitor_for_this_thread()
    if loop is not monitor.loop:
        monitor.attach(loop)
    return monitor


def marks_steps(monitor: LoopMonitor) -> bool:
    """Whether the next request on ``monitor``'s loop is awaited through :func:`timed_steps`
    (a loop's first requests, and those after a block); the others are only registered in
    flight (``arrive``/``leave``), which the heartbeat watches."""
    if monitor.marked_left > 0:
        monitor.marked_left -= 1
        return True
    return False


@types.coroutine
def timed_steps(
    awaitable: Awaitable[Any], scope: Scope, monitor: LoopMonitor
) -> Generator[Any, Any, Any]:
    """Await ``awaitable`` (a request's coroutine) with each of its steps marked on the loop
    thread's monitor: its start, and at its end whether it ran long enough to be a block.

    A generator the awaiting coroutine resumes directly (in C), with the marks inline: this
    runs for every step of a marked request, where a method call per mark was most of what
    watching the loop cost. Steps of an awaitable nested in another's (a middleware inside
    another) are the outer one's: only the outermost marks.
    """
    coro: Any = awaitable if hasattr(awaitable, "send") else awaitable.__await__()
    monitor.arrive(asyncio.get_running_loop(), scope)
    threshold_s = scope.settings.blocking_ms / 1000
    value: Any = None
    thrown: BaseException | None = None
    started = 0.0
    try:
        while True:
            outermost = not monitor.depth
            monitor.depth += 1
            if outermost:
                if monitor.stall_started:  # the loop has just come back from an unmarked stall
                    monitor._close_stall(perf_counter())
                monitor.step_scope = scope
                monitor.threshold_s = threshold_s
                if monitor.samples or monitor.seen_at:  # only a long step leaves them
                    monitor.samples, monitor.seen_at = [], 0.0
                monitor.step_started = started = perf_counter()
            try:
                yielded = coro.send(value) if thrown is None else coro.throw(thrown)
            except StopIteration as done:
                return done.value
            finally:
                monitor.depth -= 1
                if outermost:
                    monitor.step_started = 0.0
                    monitor.step_ended = ended = perf_counter()
                    if ended - started >= threshold_s:
                        monitor._record(started, ended, scope)
                    # what the watchdog saw belongs to this step: a late heartbeat after it
                    # is not another stall
                    if monitor.samples or monitor.seen_at or monitor.stall_started:
                        monitor.samples, monitor.seen_at, monitor.stall_started = [], 0.0, 0.0
            thrown = None
            try:
                value = yield yielded
            except GeneratorExit:  # the awaiting coroutine is closed: so is the request's
                coro.close()
                raise
            except BaseException as error:  # thrown in (a cancellation): the next step's
                value, thrown = None, error
    finally:
        monitor.leave(scope)


def collect_blocks(scope: Scope) -> None:
    """Give a concluding async scope the loop blocks that happened while it ran."""
    monitor = _monitors.get(threading.get_ident())
    if monitor is None or not monitor.blocks or monitor.blocks[-1].end <= scope.started:
        return  # no block ended while it ran (most scopes): nothing to walk, nothing to make
    blocks = monitor.blocks_during(scope.started, scope.ended)
    scope.timeline.blocks = blocks
    for block in blocks:
        scope.timeline.add_span((_BLOCKED, block.start, block.end))
