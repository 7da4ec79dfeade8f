"""A short workload proving the local stack is real: replication, lag, Redis."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import redis

from ..stack import LocalStack, PostgresNode

_ROWS = 10_000


@dataclass
class ReplicaObservation:
    name: str
    rows_seen: int
    visible_after_ms: float
    lsn_before: str
    lsn_after: str


@dataclass
class SmokeReport:
    """What the smoke workload measured."""

    rows_written: int
    write_ms: float
    replicas: list[ReplicaObservation] = field(default_factory=list)
    paused_replica: str = ""
    paused_rows_seen: int = 0
    primary_rows: int = 0
    paused_lag_bytes: int = 0
    resumed_rows_seen: int = 0
    redis_p50_us: float = 0.0
    redis_p99_us: float = 0.0
    redis_roundtrips: int = 0


def run_smoke(stack: LocalStack, *, rows: int = _ROWS, redis_roundtrips: int = 2000) -> SmokeReport:
    """Write on the primary, watch each replica receive it, make one lag, time Redis."""
    primary = stack.primary
    with primary.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS hotpath_smoke")
        conn.execute(
            "CREATE TABLE hotpath_smoke (id bigserial PRIMARY KEY, customer int NOT NULL,"
            " total numeric(10,2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        )
    stack.wait_replicas_caught_up(timeout=10)
    before = {r.name: r.current_lsn() for r in stack.replicas}

    began = time.perf_counter()
    with primary.connect() as conn:
        conn.execute(
            "INSERT INTO hotpath_smoke (customer, total)"
            " SELECT g %% 977, (g %% 10000) / 100.0 FROM generate_series(1, %s) g",
            [rows],
        )
    committed = time.perf_counter()
    report = SmokeReport(rows_written=rows, write_ms=(committed - began) * 1000)

    for replica in stack.replicas:
        seen = _wait_rows(replica, rows, timeout=10)
        report.replicas.append(
            ReplicaObservation(
                replica.name,
                seen,
                (time.perf_counter() - committed) * 1000,
                before[replica.name],
                replica.current_lsn(),
            )
        )

    if stack.replicas:
        lagging = stack.replicas[0]
        lagging.pause_replay()
        try:
            with primary.connect() as conn:
                conn.execute("INSERT INTO hotpath_smoke (customer, total) VALUES (1, 9.99)")
            report.paused_replica = lagging.name
            report.primary_rows = primary.scalar("SELECT count(*) FROM hotpath_smoke")
            report.paused_rows_seen = lagging.scalar("SELECT count(*) FROM hotpath_smoke")
            report.paused_lag_bytes = next(
                s.lag_bytes or 0 for s in stack.status() if s.name == lagging.name
            )
        finally:
            lagging.resume_replay()
        stack.wait_replicas_caught_up(timeout=10)
        report.resumed_rows_seen = lagging.scalar("SELECT count(*) FROM hotpath_smoke")

    with redis.Redis.from_url(stack.redis_url) as client:
        timings = []
        for i in range(redis_roundtrips):
            t0 = time.perf_counter()
            client.set(f"smoke:{i % 100}", i)
            client.get(f"smoke:{i % 100}")
            timings.append((time.perf_counter() - t0) * 1e6)
        client.delete(*[f"smoke:{i}" for i in range(100)])
    quantiles = statistics.quantiles(timings, n=100)
    report.redis_p50_us, report.redis_p99_us = statistics.median(timings), quantiles[98]
    report.redis_roundtrips = redis_roundtrips
    return report


def _wait_rows(replica: PostgresNode, expected: int, timeout: float) -> int:
    deadline = time.perf_counter() + timeout
    while True:
        seen = int(replica.scalar("SELECT count(*) FROM hotpath_smoke"))
        if seen >= expected or time.perf_counter() > deadline:
            return seen
        time.sleep(0.001)
