"""A planted app on the test stack and the RUN STATE ``hotpath run`` would make of it.

Real components only: a Profiler on an engine of this module's database (an N+1 and a slow
sequential scan planted in two endpoints), that engine's pool metered by
``instrument_pool``, a two-tier cache on the test Redis, a replica set over the stack's
replicas and a circuit breaker that has opened. ``Planted.state()`` assembles them the way
the supervisor does (``merge_reports`` of the profiler's snapshot, ``asdict`` of the pool
snapshot, ``CacheStats.as_dict``...), so each call reflects the requests served so far.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from hotpath.cache import Cache, MemoryTier, RedisTier
from hotpath.concurrent import CircuitBreaker
from hotpath.observe import Profiler, merge_reports
from hotpath.pool import PoolMetrics, instrument_pool
from hotpath.routing import ReplicaSet, routed_sessionmaker
from hotpath.testing import ModuleDatabase

from ..observe.models import Base, User, seed_rows

ORDERS = "GET /users/{user_id}/orders"
REPORT = "GET /reports/events"
HEALTH = "GET /health"
EVENTS = 60_000
CACHE_NAMESPACE = "shop"
SLOW_QUERY_MS = 25.0


class Planted:
    """The app: one method per endpoint, each one request in its own profiler scope."""

    def __init__(
        self,
        engine: Engine,
        profiler: Profiler,
        pool: PoolMetrics,
        cache: Cache,
        replicas: ReplicaSet,
        breaker: CircuitBreaker,
    ) -> None:
        self.engine = engine
        self.profiler = profiler
        self.pool = pool
        self.cache = cache
        self.replicas = replicas
        self.breaker = breaker

    def orders(self) -> None:
        """The N+1: each user's orders lazily loaded, one query per user."""
        with self.profiler.scope(ORDERS), Session(self.engine) as session:
            for user in session.scalars(select(User)).all():
                _ = [order.id for order in user.orders]

    def report(self) -> None:
        """The slow query: a sequential scan of an unindexed column (and a sleep, so that it
        is over the threshold however fast the machine)."""
        with self.profiler.scope(REPORT), self.engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM events WHERE customer_id = :c), "
                    f"pg_sleep({SLOW_QUERY_MS * 1.5 / 1000})"
                ),
                {"c": 42},
            ).all()

    def health(self) -> None:
        """A read placed on a replica, and a cached value (a miss, then hits)."""
        sessions = routed_sessionmaker(self.replicas, consistency="eventual")
        with self.profiler.scope(HEALTH), sessions() as session:
            users = session.execute(text("SELECT count(*) FROM users")).scalar_one()
            self.cache.get_or_set("health", lambda: {"users": users})

    def serve(self, rounds: int) -> None:
        for _ in range(rounds):
            self.orders()
            self.report()
            self.health()

    def state(self) -> dict[str, Any]:
        """The RUN STATE of one worker (this process), through JSON as the supervisor reads it."""
        report = merge_reports([self.profiler.snapshot()], self.profiler.settings)
        state = {
            "report": report.to_dict(),
            "workers": [{"pid": 1234, "written": 0.0, "alive": True}],
            "pools": [{"pid": 1234, **dataclasses.asdict(self.pool.snapshot())}],
            "caches": [{"pid": 1234, "namespace": CACHE_NAMESPACE, **self.cache.stats().as_dict()}],
            "routing": [
                {
                    "pid": 1234,
                    "name": "shop",
                    "nodes": [dataclasses.asdict(node) for node in self.replicas.status()],
                    "stats": self.replicas.stats(),
                }
            ],
            "breakers": [
                {
                    "pid": 1234,
                    **dataclasses.asdict(self.breaker.stats()),
                    "state": self.breaker.stats().state.value,
                }
            ],
            "doctor": [
                {
                    "check": "unused_indexes",
                    "severity": "warning",
                    "object": "public.events_kind_idx",
                    "message": "index never scanned since the statistics were reset (4 MB)",
                    "evidence": {"scans": 0},
                    "fix": "DROP INDEX CONCURRENTLY public.events_kind_idx;",
                    "fix_kind": "sql",
                    "gain": None,
                }
            ],
            "uninstrumented": [
                {"what": "engine sqlite:///local.db", "why": "hotpath measures PostgreSQL only"}
            ],
        }
        return orjson.loads(orjson.dumps(state))  # type: ignore[no-any-return]


def _fail() -> None:
    raise ConnectionError("payments is down")


@pytest.fixture(scope="module")
def planted(hotpath_db: ModuleDatabase) -> Iterator[Planted]:
    engine = create_engine(hotpath_db.url, pool_size=4)
    pool = instrument_pool(engine, name="app")  # first: it counts the connections it sees open
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(seed_rows())
        session.commit()
    with engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE events (id bigint PRIMARY KEY, customer_id int, kind text)")
        )
        conn.execute(
            text(
                "INSERT INTO events SELECT g, g % 5000, 'k' || (g % 7) "
                f"FROM generate_series(1, {EVENTS}) g"
            )
        )
        conn.execute(text("ANALYZE events"))
    profiler = Profiler(
        engine,
        slow_query_ms=SLOW_QUERY_MS,
        explain="plan",
        budget_ms=1,
        modes=dict.fromkeys(("n_plus_one", "slow_query", "duplicate"), "log"),
    )
    assert hotpath_db.redis_url is not None
    cache = Cache(MemoryTier(100), RedisTier(hotpath_db.redis_url), namespace=CACHE_NAMESPACE)
    replica_engines = [create_engine(url) for url in hotpath_db.replica_urls]
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=600, name="payments")
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_fail)
    with ReplicaSet(engine, replica_engines, probe_interval_s=0.1) as replicas:
        app = Planted(engine, profiler, pool, cache, replicas, breaker)
        try:
            yield app
        finally:
            profiler.uninstrument()
            cache.close()
            for replica in replica_engines:
                replica.dispose()
            engine.dispose()
