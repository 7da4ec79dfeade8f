"""Helpers shared by the pool tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hotpath.pool import PoolMetrics, PoolPlan

TIMEOUT_S = 5.0  # generous: the 2-core machine is shared


def small_plan(pool_size: int, timeout_s: float = TIMEOUT_S, **options: Any) -> PoolPlan:
    """A plan of ``pool_size`` connections per process (no server round trip)."""
    return PoolPlan.from_settings(
        processes=1,
        concurrency_per_process=pool_size,
        max_connections=300,
        timeout_s=timeout_s,
        **options,
    )


def planned_engine(
    url: str, pool_size: int, timeout_s: float = TIMEOUT_S, **options: Any
) -> tuple[Engine, PoolMetrics]:
    plan = small_plan(pool_size, timeout_s, **options)
    engine = create_engine(url, **plan.engine_kwargs())
    return engine, plan.instrument(engine, name="test")


def planned_async_engine(
    url: str, pool_size: int, timeout_s: float = TIMEOUT_S, **options: Any
) -> tuple[AsyncEngine, PoolMetrics]:
    plan = small_plan(pool_size, timeout_s, **options)
    engine = create_async_engine(url, **plan.async_engine_kwargs())
    return engine, plan.instrument(engine, name="test-async")
