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
- the replacements are closures set on the pool instance by ``hotpath_meter()``
  (``instrument_pool``), with the metrics' hot state (``PoolMetrics.hot``) in their cells;
- detached connections never reach ``_return_conn``: the ``detach`` listener ends their hold.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import (
    AsyncAdaptedQueuePool,
    ConnectionPoolEntry,
    Pool,
    PoolProxiedConnection,
    QueuePool,
)
from sqlalchemy.pool.base import _ConnectionFairy

from ._callstack import checkout_hold
from ._errors import QueuePoolExhaustedError
from ._metrics import PoolMetrics

if TYPE_CHECKING:
    from ._sqlalchemy import EngineInstrumentation

_warned_unmetered = False
# What Pool.connect() does (typed loosely: it is called with the mixin's self).
_checkout: Callable[[Any], PoolProxiedConnection] = _ConnectionFairy._checkout
# A stale connection is replaced and the checkout retried; past this many in one checkout
# something else is wrong (a lifetime shorter than a connect): hand out the last one.
_ATTEMPTS = 3


class _MeteredMixin(Pool):
    # A Pool itself (nothing added to the object's layout), so ``Metered<X>(_MeteredMixin, X)``
    # has the layout of any Pool subclass X and an engine's own pool can become one in place
    # (``make_metered``): CPython allows ``__class__`` assignment only between equal layouts.
    hotpath_metrics: PoolMetrics | None = None
    hotpath_liveness: EngineInstrumentation | None = None

    def connect(self) -> PoolProxiedConnection:
        # Replaced per instance by ``hotpath_meter``: reached only when nobody instrumented it.
        _warn_unmetered()
        return _checkout(self)

    def hotpath_meter(self, liveness: EngineInstrumentation) -> None:
        """Meter this pool from now on: install its checkout and checkin (see the module)."""
        self.hotpath_liveness = liveness
        self.hotpath_metrics = liveness.metrics
        # Instance attributes shadow the class's methods (plain functions): SQLAlchemy calls
        # ``pool.connect()`` and ``pool._return_conn(record)``.
        connect, return_conn = _metered_checkout_checkin(self, liveness)
        self.__dict__.update(connect=connect, _return_conn=return_conn)

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
        return connection

    def recreate(self) -> Any:  # the pool class of the one metered (QueuePool, ...)
        fresh = super().recreate()  # built from type(self): metered too
        if self.hotpath_liveness is not None and isinstance(fresh, _MeteredMixin):
            fresh.hotpath_meter(self.hotpath_liveness)
        return fresh


def _metered_checkout_checkin(
    pool: _MeteredMixin, liveness: EngineInstrumentation
) -> tuple[Callable[[], PoolProxiedConnection], Callable[[ConnectionPoolEntry], None]]:
    """``connect()`` and ``_return_conn()`` for one metered pool.

    Closures rather than methods: everything they touch is a cell of their own (no attribute
    chain from ``self`` on each checkout), and they hold the containers of the metrics' hot
    state (``PoolMetrics.hot``, a ``CheckoutState``) directly, the parts of
    ``PoolMetrics.acquired``/``checked_in`` inlined.
    """
    return _metered_checkout(pool, liveness), _metered_checkin(pool, liveness)


def _metered_checkout(
    pool: _MeteredMixin, liveness: EngineInstrumentation
) -> Callable[[], PoolProxiedConnection]:
    metrics = liveness.metrics
    hot = metrics.hot
    holds = hot.holds
    acquire_sample = hot.acquire_samples.append
    capture_stacks = hot.capture_stacks  # fixed by instrument_pool()

    def connect() -> PoolProxiedConnection:
        started = perf_counter()
        try:
            connection: PoolProxiedConnection = _checkout(pool)
        except sa_exc.TimeoutError as exc:
            raise metrics.exhausted(started, exc, QueuePoolExhaustedError) from exc
        # The pool entry: the hold's key (the same object at checkin) and its
        # ``_hotpath_check_at`` (PoolProxiedConnection.info is a Python descriptor, ~0.25 µs).
        record = connection._connection_record
        now = perf_counter()
        try:
            stale = now >= record._hotpath_check_at  # see EngineInstrumentation
        except AttributeError:  # opened before instrument_pool(): stamped by the check
            stale = True
        if stale:
            connection = pool._hotpath_check(connection, liveness, metrics, started)
            record = connection._connection_record
            now = perf_counter()
        acquire_sample(now - started)
        # The call-site lookup is one helper shared with the psycopg pools: its call did not
        # show in `python -m bench pool`'s acquire+release against the lines inlined here
        # (alternating runs), so it is written once.
        holds[record] = checkout_hold(now) if capture_stacks else (now,)
        return connection

    return connect


def _metered_checkin(
    pool: _MeteredMixin, liveness: EngineInstrumentation
) -> Callable[[ConnectionPoolEntry], None]:
    metrics = liveness.metrics
    hot = metrics.hot
    holds = hot.holds
    reported = hot.reported
    hold_sample = hot.hold_samples.append
    idle_s = liveness.idle_s
    return_to_pool = pool._do_return_conn

    def return_conn(record: ConnectionPoolEntry) -> None:
        now = perf_counter()
        hold = holds.pop(record, None)
        if hold is not None:
            hold_sample(now - hold[0])
            if reported:
                metrics.returned(record, hold, now)
        # An expiry or a suspicion overwritten here is set again by the next sweep.
        record._hotpath_check_at = now + idle_s  # type: ignore[attr-defined]
        return_to_pool(record)

    return return_conn


class MeteredQueuePool(_MeteredMixin, QueuePool):
    """``QueuePool`` whose acquires are timed and whose timeouts name the holders."""


class AsyncMeteredQueuePool(_MeteredMixin, AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` whose acquires are timed and whose timeouts name the holders."""


_metered_classes: dict[type[QueuePool], type[QueuePool]] = {
    QueuePool: MeteredQueuePool,
    AsyncAdaptedQueuePool: AsyncMeteredQueuePool,
}


def meterable(pool: Pool) -> bool:
    """A ``QueuePool`` (any subclass) that still checks out and returns through ``Pool``'s
    trampolines, which the metered closures replace: only those can time out waiting."""
    return (
        isinstance(pool, QueuePool)
        and not isinstance(pool, _MeteredMixin)
        and type(pool).connect is Pool.connect
        and type(pool)._return_conn is Pool._return_conn
    )


def make_metered(pool: QueuePool) -> None:
    """Turn an engine's own ``QueuePool`` (``create_engine(url, pool_size=...)``, the usual
    way) into its metered twin in place, so every engine gets timed acquires and
    exhaustion errors that name the holders, not only engines built from a ``PoolPlan``.

    In place (its class, not a new pool): the engine, its listeners and the connections
    already checked out keep pointing at this object; ``recreate()`` (``engine.dispose()``)
    builds the next pool from ``type(self)``, so it stays metered.
    """
    cls = type(pool)
    metered = _metered_classes.get(cls)
    if metered is None:  # a subclass of the user's or of a dialect: the same mixin on top
        metered = type(f"Metered{cls.__name__}", (_MeteredMixin, cls), {"__module__": __name__})
        _metered_classes[cls] = metered
    pool.__class__ = metered


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
