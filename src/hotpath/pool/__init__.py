"""hotpath.pool: connection pools sized from the workload, observable, leak-proof, self-healing.

- :class:`PoolPlan`: ``PoolPlan.for_app(processes=, concurrency_per_process=, server_url=)``
  reads ``max_connections``, the reserved slots and the other clients of the primary and each
  replica, sizes the per-process pool, ``explain()``\\s the arithmetic, recommends PgBouncer
  past the budget, and hands the result to SQLAlchemy / psycopg_pool (``engine_kwargs()``,
  ``async_engine_kwargs()``, ``psycopg_pool_kwargs()``); its options are one validated
  :class:`PlanOptions`, given as keywords or as ``options=``.
- :func:`instrument_pool`: metrics (:class:`PoolSnapshot`: size, checked out, idle, overflow,
  waiting, acquire wait / hold / connect p50/p99, timeouts, invalidations, oldest connection),
  leak reports with the checking-out stack, :class:`PoolExhaustedError` naming the holders,
  ping-only-when-idle validation, jittered max lifetime, transaction-pooler warnings.
- :class:`PoolCollector`: the same for Prometheus.
"""

from ._budget import ServerBudget
from ._errors import (
    ConnectionPoolExhaustedError,
    PoolConfigError,
    PoolError,
    PoolExhaustedError,
    PoolInstrumentationWarning,
    QueuePoolExhaustedError,
    SessionStateWarning,
)
from ._instrument import instrument_pool
from ._metrics import Holder, Percentiles, PoolMetrics, PoolSnapshot
from ._options import PlanKeywords, PlanOptions, PoolerMode
from ._plan import PoolPlan
from ._pooler import session_state_use
from ._prometheus import PoolCollector
from ._psycopg_async import AsyncMeteredConnectionPool
from ._psycopg_sync import MeteredConnectionPool
from ._sa_pools import AsyncMeteredQueuePool, MeteredQueuePool

__all__ = [
    "AsyncMeteredConnectionPool",
    "AsyncMeteredQueuePool",
    "ConnectionPoolExhaustedError",
    "Holder",
    "MeteredConnectionPool",
    "MeteredQueuePool",
    "Percentiles",
    "PlanKeywords",
    "PlanOptions",
    "PoolCollector",
    "PoolConfigError",
    "PoolError",
    "PoolExhaustedError",
    "PoolInstrumentationWarning",
    "PoolMetrics",
    "PoolPlan",
    "PoolSnapshot",
    "PoolerMode",
    "QueuePoolExhaustedError",
    "ServerBudget",
    "SessionStateWarning",
    "instrument_pool",
    "session_state_use",
]
