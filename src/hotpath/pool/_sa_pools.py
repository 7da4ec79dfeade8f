"""QueuePool subclasses that time every acquire: wait, waiting callers, explained timeouts.

SQLAlchemy has no event *before* a checkout starts waiting, so these override ``connect()``
(and ``recreate()``, which ``engine.dispose()`` uses, to keep the metrics).
``PoolPlan.engine_kwargs()`` selects them; ``instrument_pool(engine)`` attaches the metrics.

The whole per-checkout cost budget is about 0.5 µs (10% of a bare QueuePool checkout+checkin),
so these do the checkout and checkin bookkeeping themselves, inline:

- no ``checkout``/``checkin`` listeners: having any makes SQLAlchemy take its slower path
  (~0.9 µs per checkout+checkin with no-op listeners);
- ``Pool.connect()`` and ``Pool._return_conn()`` are one-line trampolines
  (``_ConnectionFairy._checkout(pool)``, ``pool._do_return_conn(record)``); these replace them
  rather than wrap them, so no Python frame is added (each costs ~0.15 µs). The pool's own
  ``_do_return_conn`` (the QueuePool subclass hook) still does the return.
  ``tests/pool/test_metrics.py`` checks that they are still trampolines;
- detached connections never reach ``_return_conn``: the ``detach`` listener ends their hold.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import (
    AsyncAdaptedQueuePool,
    ConnectionPoolEntry,
    PoolProxiedConnection,
    QueuePool,
)
from sqlalchemy.pool.base import _ConnectionFairy

from ._callstack import application_files, stack_from
from ._errors import QueuePoolExhaustedError
from ._metrics import PoolMetrics

if TYPE_CHECKING:
    from ._sqlalchemy import EngineInstrumentation

_warned_unmetered = False
# What Pool.connect() does (typed loosely: it is called with the mixin's self).
_checkout: Callable[[Any], PoolProxiedConnection] = _ConnectionFairy._checkout
_getframe = sys._getframe
# A stale connection is replaced and the checkout retried; past this many in one checkout
# something else is wrong (a lifetime shorter than a connect): hand out the last one.
_ATTEMPTS = 3


class _MeteredMixin:
    hotpath_metrics: PoolMetrics | None = None
    hotpath_liveness: EngineInstrumentation | None = None

    def connect(self) -> PoolProxiedConnection:
        liveness = self.hotpath_liveness
        if liveness is None:
            _warn_unmetered()
            return _checkout(self)
        metrics = liveness.metrics
        next(metrics._acquiring)
        started = perf_counter()
        try:
            connection: PoolProxiedConnection = _checkout(self)
        except sa_exc.TimeoutError as exc:
            raise metrics.exhausted(started, exc, QueuePoolExhaustedError) from exc
        except BaseException:
            metrics.acquire_failed(started, timed_out=False)
            raise
        # The pool entry: the hold's key (the same object at checkin) and its info dict, read
        # here because PoolProxiedConnection.info is a Python descriptor (~0.25 µs a read).
        record = connection._connection_record
        now = perf_counter()
        try:
            stale = now >= record._hotpath_check_at  # see EngineInstrumentation
        except AttributeError:  # opened before instrument_pool(): stamped by the check
            stale = True
        if stale:
            connection = self._hotpath_check(connection, liveness, metrics, started)
            record = connection._connection_record
            now = perf_counter()
        metrics._acquire_raw.append(now - started)
        if metrics.capture_stacks:
            # Called from the application directly: one frame is the whole stack to keep.
            frame = _getframe(1)
            code = frame.f_code
            if code.co_filename in application_files:
                metrics._holds[record] = (now, code, frame.f_lasti)
            else:
                metrics._holds[record] = (now, *stack_from(frame))
        else:
            metrics._holds[record] = (now,)
        return connection

    def _hotpath_check(
        self,
        connection: PoolProxiedConnection,
        liveness: EngineInstrumentation,
        metrics: PoolMetrics,
        started: float,
    ) -> PoolProxiedConnection:
        """Idle too long, past its lifetime or suspect: ping or replace it, as SQLAlchemy
        does for a ``DisconnectionError`` raised in a ``checkout`` listener."""
        for attempt in range(_ATTEMPTS):
            try:
                liveness.check(
                    connection.dbapi_connection,
                    connection._connection_record,
                )
                return connection
            except sa_exc.DisconnectionError as exc:
                if attempt == _ATTEMPTS - 1:
                    return connection
                # Invalidating returns the entry to the pool without its DBAPI connection:
                # the next checkout of it (LIFO: this one) opens a new one.
                connection.invalidate(exc)
            try:
                connection = _checkout(self)
            except sa_exc.TimeoutError as exc:
                raise metrics.exhausted(started, exc, QueuePoolExhaustedError) from exc
            except BaseException:
                metrics.acquire_failed(started, timed_out=False)
                raise
        return connection

    def _return_conn(self, record: ConnectionPoolEntry) -> None:
        liveness = self.hotpath_liveness
        if liveness is not None:
            # PoolMetrics.checked_in inlined: this is the hot path.
            metrics = liveness.metrics
            now = perf_counter()
            hold = metrics._holds.pop(record, None)
            if hold is not None:
                metrics._hold_raw.append(now - hold[0])
                if metrics._reported:
                    metrics.returned(record, hold, now)
            # An expiry or a suspicion overwritten here is set again by the next sweep.
            record._hotpath_check_at = now + liveness.idle_s  # type: ignore[attr-defined]
        self._do_return_conn(record)  # type: ignore[attr-defined]

    def recreate(self) -> Any:
        fresh = super().recreate()  # type: ignore[misc]
        fresh.hotpath_metrics = self.hotpath_metrics
        fresh.hotpath_liveness = self.hotpath_liveness
        return fresh


class MeteredQueuePool(_MeteredMixin, QueuePool):
    """``QueuePool`` whose acquires are timed and whose timeouts name the holders."""


class AsyncMeteredQueuePool(_MeteredMixin, AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` whose acquires are timed and whose timeouts name the holders."""


def _warn_unmetered() -> None:
    global _warned_unmetered
    if not _warned_unmetered:
        _warned_unmetered = True
        warnings.warn(
            "a hotpath MeteredQueuePool is in use without instrument_pool(engine): connections "
            "are not validated (pool_pre_ping is off in PoolPlan.engine_kwargs()); call "
            "hotpath.pool.instrument_pool(engine) or plan.instrument(engine) after create_engine",
            RuntimeWarning,
            stacklevel=4,
        )
