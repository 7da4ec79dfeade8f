"""instrument_pool(): attach PoolMetrics (and liveness) to an engine or a psycopg pool."""

from __future__ import annotations

import warnings
import weakref
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from . import _housekeeping
from ._errors import PoolConfigError, PoolInstrumentationWarning
from ._metrics import PoolMetrics
from ._options import check_liveness_options
from ._psycopg import _Metering
from ._sa_pools import _MeteredMixin, make_metered, meterable
from ._sqlalchemy import EngineInstrumentation, pool_shape

_instrumented: weakref.WeakKeyDictionary[Any, PoolMetrics] = weakref.WeakKeyDictionary()


def instrument_pool(
    target: Engine | AsyncEngine | Any,
    *,
    name: str | None = None,
    leak_threshold_s: float | None = 30.0,
    validate_idle_s: float | None = 0.5,
    max_lifetime_s: float | None = 1800.0,
    lifetime_jitter: float = 0.05,
    transaction_pooler: bool = False,
    capture_stacks: bool = True,
) -> PoolMetrics:
    """Meter ``target``'s pool; return its :class:`PoolMetrics` (``.snapshot()``).

    ``target``: a SQLAlchemy ``Engine`` or ``AsyncEngine`` (an engine's own ``QueuePool`` /
    ``AsyncAdaptedQueuePool`` becomes its metered twin in place: timed acquires, and
    exhaustion errors that name the holders; other pools never wait and get the events), or a
    ``MeteredConnectionPool`` / ``AsyncMeteredConnectionPool``. For engines it also installs
    the liveness rules: ping on checkout only after ``validate_idle_s`` idle, replace
    connections after ``max_lifetime_s`` (minus up to ``lifetime_jitter``), and, with
    ``transaction_pooler``, warn about statements that set session state.
    """
    check_liveness_options(leak_threshold_s, validate_idle_s, max_lifetime_s, lifetime_jitter)
    key = target.sync_engine if isinstance(target, AsyncEngine) else target
    if key in _instrumented:
        raise PoolConfigError(
            f"{_describe(target)} is already instrumented: keep and reuse the PoolMetrics the "
            "first instrument_pool() call returned"
        )
    if isinstance(key, Engine):
        metrics = _instrument_engine(
            key,
            name,
            leak_threshold_s=leak_threshold_s,
            validate_idle_s=validate_idle_s,
            max_lifetime_s=max_lifetime_s,
            lifetime_jitter=lifetime_jitter,
            transaction_pooler=transaction_pooler,
            capture_stacks=capture_stacks,
        )
    elif isinstance(key, _Metering):
        metrics = key.hotpath_metrics
        metrics.name = name or metrics.name
        metrics.leak_threshold_s = leak_threshold_s
        metrics.capture_stacks = capture_stacks
        if not key.hotpath_user_check:  # the check passed to the pool stays the only one
            key.validate_idle_s = validate_idle_s
    else:
        raise PoolConfigError(
            f"cannot instrument {_describe(target)}: pass a SQLAlchemy Engine or AsyncEngine, "
            "or a hotpath.pool.MeteredConnectionPool / AsyncMeteredConnectionPool (a drop-in "
            "psycopg_pool subclass: psycopg_pool itself has no checkout hooks to attach to)"
        )
    _instrumented[key] = metrics
    _housekeeping.watch(metrics)
    return metrics


def _instrument_engine(
    engine: Engine,
    name: str | None,
    *,
    leak_threshold_s: float | None,
    validate_idle_s: float | None,
    max_lifetime_s: float | None,
    lifetime_jitter: float,
    transaction_pooler: bool,
    capture_stacks: bool,
) -> PoolMetrics:
    pool = engine.pool
    if meterable(pool):
        make_metered(pool)  # type: ignore[arg-type]  # meterable() checked it is a QueuePool
    elif isinstance(pool, QueuePool) and not isinstance(pool, _MeteredMixin):
        warnings.warn(
            f"{type(pool).__qualname__} overrides Pool.connect() or _return_conn(), so hotpath "
            "meters it through pool events only: acquire wait and timeouts read None, and an "
            "exhausted pool raises SQLAlchemy's TimeoutError without the holders. Keep those "
            "methods, or use poolclass=hotpath.pool.MeteredQueuePool.",
            PoolInstrumentationWarning,
            stacklevel=3,
        )
    metrics = PoolMetrics(
        name or _engine_name(engine),
        lambda: pool_shape(engine.pool),
        leak_threshold_s=leak_threshold_s,
        capture_stacks=capture_stacks,
        metered_acquire=isinstance(engine.pool, _MeteredMixin),
    )
    EngineInstrumentation(
        engine,
        metrics,
        validate_idle_s=validate_idle_s,
        max_lifetime_s=max_lifetime_s,
        lifetime_jitter=lifetime_jitter,
        transaction_pooler=transaction_pooler,
    ).install()
    return metrics


def _engine_name(engine: Engine) -> str:
    url = engine.url
    return f"{url.host or 'local'}:{url.port or 5432}/{url.database or ''}"


def _describe(target: object) -> str:
    return f"{type(target).__module__}.{type(target).__qualname__}"
