"""The shop as ``python -m hotpath.demo.shop`` serves it: the app of one configuration, wrapped
in observe's middleware, with the runner's own endpoints under ``/__hotpath``.

- ``GET /__hotpath/stats``: observe's report, database connections opened, replica and
  primary reads, the cache's hits per tier, the server process's CPU time so far;
- ``GET /__hotpath/cpu``: the server process's CPU time so far, and nothing else (what a
  benchmark reads before and after its load);
- ``GET /__hotpath/report``: observe's diagnosis (``Profiler.report().to_dict()``): per
  endpoint the time by layer, the bottleneck and the ranked fixes, and the top fixes;
- ``POST /__hotpath/reset``: start every count above again (warm-up excluded);
- ``GET /__hotpath/wall`` (with ``ServerOptions(wall_clock=True)``, for tests): each
  request's wall time by an outer ASGI clock next to what observe's scope measured.

The runner's own calls are not part of the workload: they are neither observed nor timed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.responses import Response
from sqlalchemy import event

from ...observe import ASGIMiddleware, FindingKind, Profiler
from .app import ShopSettings, create_app
from .timing import WallClock, WallSample

OPTIONS_ENV = "HOTPATH_SHOP_SERVER"
RUNNER_PREFIX = "/__hotpath"


@dataclass(frozen=True)
class ServerOptions:
    """How the server runs around the app (JSON in ``HOTPATH_SHOP_SERVER``).

    ``observe``: wrap the app in observe's middleware and profiler (off only to measure what
    observe costs); ``budget_ms``: the p95 an endpoint must meet to have no bottleneck (and
    below which a request's sequential calls and slow dependencies are not worth a fix);
    ``wall_clock``: time every request with an outer ASGI clock too.
    """

    observe: bool = True
    budget_ms: float = 100.0
    wall_clock: bool = False

    def to_env(self) -> dict[str, str]:
        return {OPTIONS_ENV: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls) -> ServerOptions:
        raw = os.environ.get(OPTIONS_ENV)
        return cls(**json.loads(raw)) if raw else cls()


def shop_profiler(engines: list[Any], options: ServerOptions) -> Profiler:
    """The shop's profiler: the whole diagnosis, at production cost.

    Every detector is on: the request-wide ones (where the time goes, sequential calls,
    connection set-up, pool waits, blocking calls, slow dependencies) and the database ones,
    since the shop's worst endpoints are N+1s, and a bottleneck is only named from the
    findings that explain it. What stays off is what costs per query without naming a
    bottleneck: a ``QueryRecord`` kept per statement (``keep_queries=0``: the report has the
    counts and the findings, not a SQL log) and EXPLAIN (``explain="off"``: a plan is one more
    round trip on the request's path; ``hotpath explain`` takes it off the request path).
    """
    # one profiler for every configuration: the same judge before and after each fix; every
    # detector in "log" mode (N+1's default, "warn", would write a Python warning per request)
    return Profiler(
        *engines,
        keep_queries=0,
        explain="off",
        budget_ms=options.budget_ms,
        modes=dict.fromkeys((kind.value for kind in FindingKind), "log"),
    )


def build(settings: ShopSettings, options: ServerOptions | None = None) -> Any:
    options = options or ServerOptions()
    app = create_app(settings)
    database = app.state.database
    opened = {"connections": 0}
    cache_baseline: dict[str, int] = {}  # the cache's counters at the last reset
    walls: deque[WallSample] = deque(maxlen=100_000)

    def _count(*_: object) -> None:
        opened["connections"] += 1

    for engine in database.engines:
        event.listen(engine.sync_engine, "connect", _count)

    profiler = shop_profiler(database.engines, options) if options.observe else None
    # findings are read from /__hotpath/report: one log line per finding per request would
    # only fill the server's log (listener bugs, logged as errors, still show)
    logging.getLogger("hotpath.observe").setLevel(logging.ERROR)

    def _report() -> Any:
        if profiler is None:
            return {"endpoints": [], "top_fixes": [], "functions": []}
        return profiler.report().to_dict()

    @app.get(f"{RUNNER_PREFIX}/stats", include_in_schema=False)
    async def stats() -> dict[str, Any]:
        replica_reads = primary_reads = 0
        if database.replica_set is not None:
            for node in database.replica_set.status():
                if node.writer:
                    primary_reads += node.reads
                else:
                    replica_reads += node.reads
        cache = app.state.cache
        counted = {}
        if cache is not None:
            now = cache.stats()
            counted = {k: v - cache_baseline.get(k, 0) for k, v in now.items()}
        return {
            "observe": _report(),
            "connections_opened": opened["connections"],
            "replica_reads": replica_reads,
            "primary_reads": primary_reads,
            "cache": counted,
            # what serving costs the server, apart from the other processes on the machine
            "process_cpu_s": time.process_time(),
        }

    @app.get(f"{RUNNER_PREFIX}/cpu", include_in_schema=False)
    async def cpu() -> dict[str, float]:
        # what a benchmark reads around its load: /stats builds observe's report, whose
        # cost is the runner's, not the workload's
        return {"process_cpu_s": time.process_time()}

    @app.get(f"{RUNNER_PREFIX}/report", include_in_schema=False)
    async def report() -> Response:
        if profiler is None:
            raise HTTPException(404, "this server runs without observe (ServerOptions.observe)")
        return Response(profiler.report().to_json(), media_type="application/json")

    @app.get(f"{RUNNER_PREFIX}/wall", include_in_schema=False)
    async def wall() -> list[dict[str, Any]]:
        if not options.wall_clock:
            raise HTTPException(404, "start the server with ServerOptions(wall_clock=True)")
        return [
            {
                "method": sample.method,
                "path": sample.path,
                "wall_ms": sample.wall_ms,
                "name": None if sample.scope is None else sample.scope.name,
                "scope_ms": None if sample.scope is None else sample.scope.duration_ms,
                "breakdown_ms": None
                if sample.scope is None
                else {layer.value: ms for layer, ms in sample.scope.breakdown_ms.items()},
            }
            for sample in list(walls)
        ]

    @app.post(f"{RUNNER_PREFIX}/reset", include_in_schema=False)
    async def reset() -> dict[str, str]:
        if profiler is not None:
            profiler.reset()
        walls.clear()
        opened["connections"] = 0
        if app.state.cache is not None:
            cache_baseline.clear()
            cache_baseline.update(app.state.cache.stats())
        return {"status": "reset"}

    measured: Any = app
    if profiler is not None:
        measured = ASGIMiddleware(app, profiler, server_timing=False)
    if options.wall_clock:
        measured = WallClock(measured, walls)

    async def entry(scope: Any, receive: Any, send: Any) -> None:
        # the runner's own calls are not part of the workload
        target = app if scope.get("path", "").startswith(RUNNER_PREFIX) else measured
        await target(scope, receive, send)

    return entry
