"""A circuit breaker: stop calling a dependency that keeps failing, try again later.

States: **closed** (calls pass; ``failure_threshold`` consecutive failures open it), **open**
(calls fail fast with :class:`CircuitOpenError`, or get the fallback, without reaching the
dependency, for ``reset_timeout`` seconds), **half-open** (up to ``half_open_max_calls`` trial
calls pass; a success closes the circuit, a failure opens it again). The same object guards
sync and async calls: ``with breaker:`` / ``async with breaker:``, ``breaker.call(fn, ...)`` /
``await breaker.acall(fn, ...)``, or as a decorator on either kind of function.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .._validate import check_number
from ._errors import CircuitOpenError, ConcurrencyConfigError

_F = TypeVar("_F", bound=Callable[..., Any])


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerStats:
    name: str
    state: BreakerState
    consecutive_failures: int
    successes: int
    failures: int
    rejected: int
    opened: int


class CircuitBreaker:
    """Guards calls to one dependency (see the module doc)."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        *,
        name: str = "dependency",
        failure_types: tuple[type[BaseException], ...] = (Exception,),
        fallback: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_number(
            ConcurrencyConfigError,
            "failure_threshold",
            failure_threshold,
            integer=True,
            at_least=1,
            meaning="consecutive failures that open the circuit",
        )
        check_number(
            ConcurrencyConfigError,
            "reset_timeout",
            reset_timeout,
            above=0,
            meaning="seconds the circuit stays open before a trial call",
        )
        check_number(
            ConcurrencyConfigError,
            "half_open_max_calls",
            half_open_max_calls,
            integer=True,
            at_least=1,
            meaning="trial calls let through while half open",
        )
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self.failure_types = failure_types
        self.fallback = fallback
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._consecutive = 0
        self._trials = 0
        self._successes = self._failures = self._rejected = self._opened = 0

    # -- the state machine -----------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current()

    def _current(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.reset_timeout
        ):
            self._state, self._trials = BreakerState.HALF_OPEN, 0
        return self._state

    def _admit(self) -> None:
        if self._state is BreakerState.CLOSED:
            return  # the hot path: one attribute read, no lock (closing only ever takes it)
        with self._lock:
            state = self._current()
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and self._trials < self.half_open_max_calls:
                self._trials += 1
                return
            self._rejected += 1
            retry_in = max(0.0, self.reset_timeout - (self._clock() - self._opened_at))
        raise CircuitOpenError(
            f"circuit {self.name!r} is open after {self._consecutive} consecutive failures; "
            f"next trial in {retry_in:.1f}s"
        )

    def _record(self, error: BaseException | None) -> None:
        if error is None and self._state is BreakerState.CLOSED and not self._consecutive:
            # The hot path: a success while healthy changes nothing but a counter (a racing
            # increment may be lost: ``successes`` is a statistic, not a decision input).
            self._successes += 1
            return
        with self._lock:
            if error is None or not isinstance(error, self.failure_types):
                self._successes += 1
                self._consecutive = 0
                self._state = BreakerState.CLOSED
                return
            self._failures += 1
            self._consecutive += 1
            if self._state is BreakerState.HALF_OPEN or self._consecutive >= self.failure_threshold:
                if self._state is not BreakerState.OPEN:
                    self._opened += 1
                self._state, self._opened_at = BreakerState.OPEN, self._clock()

    def stats(self) -> BreakerStats:
        with self._lock:
            return BreakerStats(
                self.name,
                self._current(),
                self._consecutive,
                self._successes,
                self._failures,
                self._rejected,
                self._opened,
            )

    # -- ways in ---------------------------------------------------------------------------

    def __enter__(self) -> CircuitBreaker:
        if self._state is not BreakerState.CLOSED:  # the closed check inlined: hot path
            self._admit()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None and self._state is BreakerState.CLOSED and not self._consecutive:
            # as in _record, inlined: the guarded call can be as cheap as a Redis GET, so
            # the common path (closed, no failure streak) skips a method call
            self._successes += 1
            return
        self._record(exc)

    async def __aenter__(self) -> CircuitBreaker:
        self._admit()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._record(exc)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            self._admit()
        except CircuitOpenError:
            if self.fallback is None:
                raise
            return self.fallback(*args, **kwargs)
        with self._recording():
            return fn(*args, **kwargs)

    async def acall(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        try:
            self._admit()
        except CircuitOpenError:
            if self.fallback is None:
                raise
            result = self.fallback(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result
        with self._recording():
            return await fn(*args, **kwargs)

    def __call__(self, fn: _F) -> _F:
        """Use as a decorator on a sync or an async function."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return guarded_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return guarded  # type: ignore[return-value]

    def _recording(self) -> _Recording:
        return _Recording(self)


class _Recording:
    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._breaker._record(exc)


class BreakerCollector:
    """Prometheus collector: each breaker's state and its counters."""

    def __init__(self, *breakers: CircuitBreaker) -> None:
        self._breakers = breakers

    def collect(self) -> Iterable[Metric]:
        return breaker_families(breaker.stats() for breaker in self._breakers)


def breaker_families(every: Iterable[BreakerStats]) -> list[Metric]:
    """The breaker metric families of these breakers' stats: what :class:`BreakerCollector`
    exports for live breakers and ``hotpath.metrics`` for breakers of another process."""
    state = GaugeMetricFamily(
        "hotpath_breaker_state",
        "1 for the breaker's current state",
        labels=["breaker", "state"],
    )
    counters = {
        key: CounterMetricFamily(f"hotpath_breaker_{key}", f"calls {key}", labels=["breaker"])
        for key in ("successes", "failures", "rejected", "opened")
    }
    for stats in every:
        for candidate in BreakerState:
            state.add_metric([stats.name, candidate.value], float(stats.state is candidate))
        for key, family in counters.items():
            family.add_metric([stats.name], float(getattr(stats, key)))
    return [state, *counters.values()]
