"""Query budgets for tests: ``with assert_max_queries(3):``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from ._profiler import Profiler
from ._scope import Scope


@contextmanager
def assert_max_queries(
    limit: int, *engines: Engine | AsyncEngine, name: str = "query budget"
) -> Iterator[Scope]:
    """Fail with ``QueryBudgetError`` (the queries and their call sites) if the block runs
    more than ``limit`` queries on ``engines`` (every engine when none are given)."""
    profiler = Profiler(*engines) if engines else Profiler().instrument()
    try:
        with profiler.assert_max_queries(limit, name) as scope:
            yield scope
    finally:
        profiler.uninstrument()
