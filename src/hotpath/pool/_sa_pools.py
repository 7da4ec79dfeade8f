"""QueuePool subclasses that time every acquire: wait, waiting callers, explained timeouts.

SQLAlchemy has no event *before* a checkout starts waiting, so these override the public
``Pool.connect()`` (and ``recreate()``, which ``engine.dispose()`` uses, to keep the metrics).
``PoolPlan.engine_kwargs()`` selects them; ``instrument_pool(engine)`` attaches the metrics.
"""

from __future__ import annotations

import warnings
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection, QueuePool

from ._errors import QueuePoolExhaustedError
from ._metrics import PoolMetrics

_warned_unmetered = False


class _MeteredMixin:
    hotpath_metrics: PoolMetrics | None = None

    def connect(self) -> PoolProxiedConnection:
        metrics = self.hotpath_metrics
        if metrics is None:
            _warn_unmetered()
            return super().connect()  # type: ignore[misc, no-any-return]
        started = metrics.acquire_started()
        try:
            connection: PoolProxiedConnection = super().connect()  # type: ignore[misc]
        except sa_exc.TimeoutError as exc:
            raise metrics.exhausted(started, exc, QueuePoolExhaustedError) from exc
        except BaseException:
            metrics.acquire_failed(started, timed_out=False)
            raise
        # Recorded here rather than in the checkout event: fewer frames to walk for the stack.
        # The key is the pool entry's info dict, the same object the events see.
        metrics.acquired(started, id(connection.info))
        return connection

    def recreate(self) -> Any:
        fresh = super().recreate()  # type: ignore[misc]
        fresh.hotpath_metrics = self.hotpath_metrics
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
