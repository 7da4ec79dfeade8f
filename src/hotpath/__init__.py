"""hotpath: make PostgreSQL + Redis backends fast, and prove it.

Components (each a sub-package with its own public API):

- :mod:`hotpath.stack` — a real local PostgreSQL primary + streaming replicas + Redis.
- :mod:`hotpath.testing` — the pytest plugin with fixtures on that stack.
- :mod:`hotpath.observe` — query capture, N+1/duplicate/slow detection, reports, middleware.
- :mod:`hotpath.plans` — EXPLAIN plan analysis shared by observe and doctor.
- :mod:`hotpath.doctor` — diagnose a live database; index advice validated with HypoPG.
- :mod:`hotpath.pool` — pools sized from the server's budget, metrics, leak detection,
  self-healing.
- :mod:`hotpath.bulk` — COPY bulk writes and upserts.
- :mod:`hotpath.concurrent` — bounded gather, deadlines, circuit breaker, retries.
- :mod:`hotpath.partitions` — time partitions ahead of time, old ones detached.
- :mod:`hotpath.paging` — keyset pagination with signed cursors, keyset iteration.
- :mod:`hotpath.cache` — multi-tier cache (in-process L1 + Redis L2): stampede-proof, never
  stale, coherent across processes; ``hotpath.cache.orm`` for SQLAlchemy.
- :mod:`hotpath.routing` — reads to replicas, writes to the primary, read-your-writes by WAL
  position, lag ejection, failover.

The names below are imported on first use, so ``import hotpath`` (which the pytest plugin
does in every project that installs hotpath) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import HotpathError
from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .cache import AsyncCache, Cache, MemoryTier, RedisTier
    from .concurrent import CircuitBreaker, gather_bounded
    from .doctor import advise_indexes, diagnose
    from .observe import Profiler
    from .pool import PoolPlan, instrument_pool
    from .routing import (
        AsyncReplicaSet,
        ReplicaSet,
        async_routed_sessionmaker,
        routed_sessionmaker,
    )
    from .stack import LocalStack, StackError

__version__ = "0.1.0"

__getattr__ = lazy_exports(
    __name__,
    {
        "LocalStack": "hotpath.stack",
        "Cache": "hotpath.cache",
        "AsyncCache": "hotpath.cache",
        "MemoryTier": "hotpath.cache",
        "RedisTier": "hotpath.cache",
        "StackError": "hotpath.stack",
        "Profiler": "hotpath.observe",
        "diagnose": "hotpath.doctor",
        "CircuitBreaker": "hotpath.concurrent",
        "gather_bounded": "hotpath.concurrent",
        "advise_indexes": "hotpath.doctor",
        "PoolPlan": "hotpath.pool",
        "instrument_pool": "hotpath.pool",
        "ReplicaSet": "hotpath.routing",
        "AsyncReplicaSet": "hotpath.routing",
        "routed_sessionmaker": "hotpath.routing",
        "async_routed_sessionmaker": "hotpath.routing",
    },
)

__all__ = [
    "AsyncCache",
    "AsyncReplicaSet",
    "Cache",
    "CircuitBreaker",
    "HotpathError",
    "LocalStack",
    "MemoryTier",
    "PoolPlan",
    "Profiler",
    "RedisTier",
    "ReplicaSet",
    "StackError",
    "__version__",
    "advise_indexes",
    "async_routed_sessionmaker",
    "diagnose",
    "gather_bounded",
    "instrument_pool",
    "routed_sessionmaker",
]
