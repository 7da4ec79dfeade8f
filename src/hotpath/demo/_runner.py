"""The demo run: a local stack, the shop's data, then each configuration under the same load.

Every configuration starts from the same database state for what it controls: secondary
indexes are dropped before each run and the configuration's own are created. Each run gets a
fresh shop server process, so pools, caches and interpreters never carry over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import redis

from ..stack import LocalStack
from ._load import LoadResult, LoadSpec, run_load
from ._process import shop_server
from ._server import serve
from ._workload import shop_mix
from .shop import SCALES, load_shop
from .shop.app import ShopSettings
from .shop.data import Scale, expected_rows
from .shop.fixes import FIX_DESCRIPTIONS, Fixes
from .shop.payments import PaymentBehaviour, create_payment_app

if TYPE_CHECKING:
    from ._ladder import Ladder

# Only if the advisor cannot run (say, pg_stat_statements missing on an external server):
# the indexes it finds on this workload, stated by hand.
FALLBACK_INDEXES = (
    "CREATE INDEX ON products (category_id, created_at DESC, id DESC) WHERE is_active",
    "CREATE INDEX ON reviews (product_id)",
    "CREATE INDEX ON orders (user_id, created_at DESC, id DESC)",
    "CREATE INDEX ON order_items (order_id)",
    "CREATE INDEX ON orders (created_at)",
    "CREATE INDEX ON products USING gin (to_tsvector('simple', name))",
)


@dataclass
class RunResult:
    """One configuration's run: the load's view and the server's own counters."""

    fixes: Fixes
    load: LoadResult
    queries_per_request: dict[str, float] = field(default_factory=dict)
    connections_opened: int = 0
    replica_reads: int = 0
    primary_reads: int = 0
    cache: dict[str, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)  # exceptions the server logged
    report: dict[str, Any] = field(default_factory=dict)  # observe's diagnosis of the run
    worker_requests: list[int] = field(default_factory=list)  # requests each process served

    @property
    def cache_hit_rates(self) -> tuple[float, float] | None:
        """Shares of cache lookups answered by L1 and by Redis (None without the cache fix)."""
        l1, l2 = self.cache.get("l1_hits", 0), self.cache.get("l2_hits", 0)
        total = l1 + l2 + self.cache.get("misses", 0)
        return (l1 / total, l2 / total) if total else None

    @property
    def replica_share(self) -> float | None:
        """Share of routed reads served by replicas (None without the replicas fix)."""
        total = self.replica_reads + self.primary_reads
        return self.replica_reads / total if total else None

    @property
    def label(self) -> str:
        return self.fixes.label


@dataclass
class DemoResult:
    """Every configuration's run, with what the runs had in common."""

    scale: str
    runs: list[RunResult]
    setup_seconds: float
    duration_s: float = 0.0
    concurrency: int = 0
    indexes: list[str] = field(default_factory=list)  # what hotpath advise recommended
    workers: int = 1
    ladder: Ladder | None = None  # the optimization loop, when it ran


def prepare_indexes(dsn: str, fixes: Fixes, indexes: Sequence[str]) -> None:
    """Drop every secondary index, then create ``indexes`` if the configuration has the fix."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for (name,) in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
            " AND indexname NOT LIKE '%%_pkey'"
        ).fetchall():
            conn.execute(f'DROP INDEX "{name}"')
        if fixes.indexes:
            for statement in indexes:
                conn.execute(statement)
            conn.execute("ANALYZE")


def advised_indexes(dsn: str, progress: Callable[[str], None]) -> list[str]:
    """What ``hotpath advise`` recommends for the workload pg_stat_statements recorded (the
    naive run's), as plain ``CREATE INDEX`` statements."""
    from ..doctor import advise_indexes  # noqa: PLC0415 - doctor is only needed here
    from ..doctor._errors import DoctorError  # noqa: PLC0415

    try:
        advice = advise_indexes(dsn)
    except DoctorError as error:
        progress(f"hotpath advise could not run ({error}); using the known indexes instead")
        return list(FALLBACK_INDEXES)
    found = [s.candidate.definition(concurrently=False).rstrip(";") for s in advice.suggestions]
    how = "validated with HypoPG" if advice.hypopg else "not validated: no HypoPG"
    progress(f"hotpath advise recommends {len(found)} indexes ({how})")
    return found


def _reset_statement_stats(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


async def run_configuration(
    settings: ShopSettings, spec: LoadSpec, scale: str, stats: bool = True
) -> RunResult:
    """One configuration on a fresh server under ``spec``'s load; with ``stats``, the server's
    counters and observe's diagnosis too (a verify round needs only the load's view)."""
    with shop_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            # warm up: first connections, compiled statements, caches
            await client.get("/products/1")
            await client.post("/__hotpath/reset")
            load = await run_load(server.url, shop_mix(SCALES[scale]), spec)
            counters = (await client.get("/__hotpath/stats")).json() if stats else None
        server_errors = server.errors()
    if counters is None:
        return RunResult(settings.fixes, load, server_errors=server_errors)
    queries = {s["name"]: float(s["queries_p50"]) for s in counters["observe"]["endpoints"]}
    return RunResult(
        settings.fixes,
        load,
        queries,
        int(counters["connections_opened"]),
        int(counters["replica_reads"]),
        int(counters["primary_reads"]),
        {k: int(v) for k, v in counters.get("cache", {}).items()},
        server_errors,
        counters["observe"],
        [int(worker["requests"]) for worker in counters["workers"]],
    )


def configurations(ablation: bool) -> list[Fixes]:
    runs = [Fixes.naive(), Fixes.optimized()]
    if ablation:
        runs[1:1] = [Fixes.only(name) for name in FIX_DESCRIPTIONS]
    return runs


@dataclass
class ShopRig:
    """What every run of one demo shares: the loaded shop, the payment service, the load, and
    the indexes the advisor recommended. ``run(fixes)`` gives each configuration the same
    start: its own indexes only, a cold cache, a fresh server process."""

    stack: LocalStack
    dsn: str
    payment_url: str
    scale: str
    spec: LoadSpec
    progress: Callable[[str], None]
    indexes: list[str] = field(default_factory=list)
    workers: int = 1  # uvicorn worker processes of the shop server
    _indexed: bool | None = None  # whether the advisor's indexes are there now (None: unknown)

    def run(
        self, fixes: Fixes, why: str = "", spec: LoadSpec | None = None, stats: bool = True
    ) -> RunResult:
        """``fixes`` under the rig's load (or ``spec``'s), from the same start as every other
        configuration; ``stats``: with the server's counters and observe's diagnosis."""
        spec = spec or self.spec
        if fixes.indexes and not self.indexes:
            self.advise()
        if spec.steps_per_user is None:
            what = f"running {fixes.label}{why} for {spec.duration_s:.0f}s"
        else:
            what = f"running {fixes.label}{why}: {spec.steps_per_user} actions a user"
        processes = f", {self.workers} worker processes" if self.workers > 1 else ""
        self.progress(f"{what} with {spec.concurrency} users{processes}")
        if self._indexed != fixes.indexes:
            # the same state each time: the indexes are rebuilt only when they change (a
            # verify round runs the configurations with the same indexes one after another)
            prepare_indexes(self.dsn, fixes, self.indexes)
            self._indexed = fixes.indexes
        if fixes == Fixes.naive() and stats:
            _reset_statement_stats(self.dsn)  # the advisor reads the naive run's statements
        with redis.Redis.from_url(self.stack.redis_url) as client:
            client.flushdb()  # every configuration starts with a cold cache
        settings = ShopSettings(
            primary_url=self.stack.primary.url_for("shop", driver="asyncpg"),
            payment_url=self.payment_url,
            fixes=fixes,
            replica_urls=[r.url_for("shop", driver="asyncpg") for r in self.stack.replicas],
            redis_url=self.stack.redis_url,
            concurrency=spec.concurrency,
            workers=self.workers,
        )
        return asyncio.run(run_configuration(settings, spec, self.scale, stats))

    def advise(self) -> list[str]:
        """The advisor's indexes for the naive run's statements (asked once)."""
        if not self.indexes:
            self.progress("asking hotpath advise for indexes on the naive run's statements")
            self.indexes = advised_indexes(self.dsn, self.progress)
        return self.indexes


def run_shop(
    stack: LocalStack,
    scale: str = "small",
    duration_s: float = 20.0,
    concurrency: int = 16,
    ablation: bool = False,
    progress: Callable[[str], None] = print,
    rows_loaded: Callable[[int, int], None] | None = None,
    *,
    ladder: bool = False,
    verify: bool = False,
    target_p99_ms: float | None = None,
    max_steps: int | None = None,
    workers: int = 1,
) -> DemoResult:
    """Load the shop into ``stack`` and run it under the same load in each configuration.

    With ``ladder``: the optimization loop (:func:`hotpath.demo._ladder.climb`), each fix
    chosen by observe's diagnosis of the run before, with ``verify``, ``target_p99_ms`` and
    ``max_steps`` (fixes applied at most) as it takes them. Otherwise naive, then every fix at
    once (and, with ``ablation``, each fix alone in between). The naive configuration runs
    first; the index fix uses what ``hotpath advise`` recommends from the statements that run
    recorded. ``rows_loaded(done, expected)`` follows the data load. The shop runs under
    uvicorn with ``workers`` processes, the ``concurrency`` users spread over them.
    """
    from ._ladder import climb  # noqa: PLC0415 - the ladder imports this module

    began = time.monotonic()
    with stack.primary.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS shop WITH (FORCE)")
        conn.execute("CREATE DATABASE shop")
    dsn = stack.primary.dsn_for("shop")
    progress(f"loading the {scale} shop with COPY")
    load_shop(dsn, SCALES[scale], progress=_row_counter(SCALES[scale], rows_loaded))
    stack.wait_replicas_caught_up(timeout=120)
    setup = time.monotonic() - began
    behaviour = PaymentBehaviour(latency_s=0.05, failure_rate=0.02)
    spec = LoadSpec(concurrency=concurrency, duration_s=duration_s)
    climbed: Ladder | None = None
    with serve(create_payment_app(behaviour)) as payment_url:
        rig = ShopRig(stack, dsn, payment_url, scale, spec, progress, workers=workers)
        if ladder:
            climbed = climb(rig, target_p99_ms=target_p99_ms, verify=verify, max_steps=max_steps)
            runs = [step.run for step in climbed.steps]
        else:
            runs = [rig.run(fixes) for fixes in configurations(ablation)]
    return DemoResult(
        scale, runs, setup, duration_s, concurrency, rig.indexes, ladder=climbed, workers=workers
    )


def _row_counter(
    scale: Scale, rows_loaded: Callable[[int, int], None] | None
) -> Callable[[str, int], None] | None:
    """Turns load_shop's per-table counts into one running total."""
    if rows_loaded is None:
        return None
    expected = expected_rows(scale)
    finished: dict[str, int] = {}

    def seen(table: str, count: int) -> None:
        finished[table] = count
        rows_loaded(sum(finished.values()), expected)

    return seen


def summary_rows(result: DemoResult) -> list[dict[str, Any]]:
    rows = []
    for run in result.runs:
        latency = run.load.overall_latency()
        rows.append(
            {
                "configuration": run.label,
                "requests/s": run.load.throughput(),
                "p50 ms": latency.percentile_ms(50),
                "p95 ms": latency.percentile_ms(95),
                "p99 ms": latency.percentile_ms(99),
                "errors": run.load.errors,
                "stale reads": run.load.stale_reads,
                "connections opened": run.connections_opened,
                "replica share": run.replica_share,
                "cache hits": run.cache_hit_rates,
            }
        )
    return rows


SUMMARY_HEADERS = (
    "configuration",
    "requests/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "errors",
    "stale reads",
    "connections opened",
    "reads on replicas",
    "cache hits L1 / Redis",
)


def summary_cells(
    row: dict[str, Any], base: dict[str, Any], ratio: Callable[[float, float, bool], str]
) -> list[str]:
    """One row of the before/after, with ``ratio(value, baseline, higher_is_better)`` after
    each throughput and latency figure (the CLI and the HTML report format it their way)."""
    share = row["replica share"]
    hits = row["cache hits"]
    return [
        str(row["configuration"]),
        f"{row['requests/s']:.0f}{ratio(row['requests/s'], base['requests/s'], True)}",
        *(
            f"{row[key]:.1f}{ratio(row[key], base[key], False)}"
            for key in ("p50 ms", "p95 ms", "p99 ms")
        ),
        str(row["errors"]),
        str(row["stale reads"]),
        str(row["connections opened"]),
        "-" if share is None else f"{share:.0%}",
        "-" if hits is None else f"{hits[0] + hits[1]:.0%} ({hits[0]:.0%} / {hits[1]:.0%})",
    ]


__all__ = [
    "FIX_DESCRIPTIONS",
    "SUMMARY_HEADERS",
    "DemoResult",
    "RunResult",
    "ShopRig",
    "run_shop",
    "summary_cells",
    "summary_rows",
]
