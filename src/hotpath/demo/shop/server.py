"""The shop as ``python -m hotpath.demo.shop`` serves it: the app of one configuration, wrapped
in observe's middleware, with the runner's own endpoints under ``/__hotpath``.

- ``GET /__hotpath/stats``: observe's report, requests served, database connections opened,
  replica and primary reads, the cache's hits per tier (L1 and Redis apart), the server's CPU
  time so far; the same per worker under ``workers``;
- ``GET /__hotpath/cpu``: the server's CPU time so far (the process's, and its event loops'
  threads'), and nothing else (what a benchmark reads before and after its load);
- ``GET /__hotpath/report``: observe's diagnosis (``Profiler.report().to_dict()``): per
  endpoint the time by layer, the bottleneck and the ranked fixes, and the top fixes;
- ``POST /__hotpath/reset``: start every count above again (warm-up excluded);
- ``GET /__hotpath/wall`` (with ``ServerOptions(wall_clock=True)``, for tests): each
  request's wall time by an outer ASGI clock next to what observe's scope measured.

Each endpoint answers for the whole server: with several uvicorn workers, every worker's
counts merged (:mod:`.workers`), and a reset reaches every worker. The runner's own calls are
not part of the workload: they are neither observed nor timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import HTTPException
from fastapi.responses import Response
from sqlalchemy import event

from ..._errors import HotpathError
from ...observe import ASGIMiddleware, FindingKind, ObserveSettings, Profiler, Report
from ...run._state import merge_states
from ...stack._process import LOOPBACK
from .app import ShopSettings, create_app
from .fixes import Fixes
from .timing import WallClock, WallSample
from .workers import CommandKind, SharedState, WorkersMissing, follow_commands

SETTINGS_ENV = "HOTPATH_SHOP_SETTINGS"
OPTIONS_ENV = "HOTPATH_SHOP_SERVER"
RUNNER_PREFIX = "/__hotpath"


class ShopOptionsError(HotpathError):
    """Server options that cannot work together."""


@dataclass(frozen=True)
class ServerOptions:
    """How the server runs around the app (JSON in ``HOTPATH_SHOP_SERVER``).

    ``observe``: wrap the app in observe's middleware and profiler (off only to measure what
    observe costs); ``budget_ms``: the p95 an endpoint must meet to have no bottleneck (and
    below which a request's sequential calls and slow dependencies are not worth a fix);
    ``wall_clock``: time every request with an outer ASGI clock too; ``state_dir``: the
    directory through which the worker processes (``ShopSettings.workers``) answer the runner
    as one server (:mod:`.workers`; a temporary one when there is one worker and none given).
    """

    observe: bool = True
    budget_ms: float = 100.0
    wall_clock: bool = False
    state_dir: str | None = None

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
    findings that explain it. EXPLAIN (a plain plan, not ANALYZE) is on: once per slow
    statement shape and server, a connection and a plan on the request that found it, and the
    plan is the evidence that an index would serve a slow read (and save about all of its
    time, not only its time over the threshold). What stays off is what costs per query
    without naming a bottleneck: a ``QueryRecord`` kept per statement (``keep_queries=0``: the
    report has the counts and the findings, not a SQL log).
    """
    # one profiler for every configuration: the same judge before and after each fix; every
    # detector in "log" mode (N+1's default, "warn", would write a Python warning per request)
    return Profiler(
        *engines,
        keep_queries=0,
        explain="plan",
        explain_per_minute=60,  # the naive shop has a dozen slow shapes, each planned once
        budget_ms=options.budget_ms,
        modes=dict.fromkeys((kind.value for kind in FindingKind), "log"),
    )


@dataclass
class _WorkerCounts:
    """What one worker process counts for the runner, since the last reset."""

    app: Any
    profiler: Profiler | None
    wall_clock: bool
    counts: dict[str, int] = field(default_factory=lambda: {"connections_opened": 0, "requests": 0})
    reads_baseline: dict[str, int] = field(default_factory=dict)  # replica set reads at reset
    cache_baseline: dict[str, int] = field(default_factory=dict)  # cache counters at reset
    walls: deque[WallSample] = field(default_factory=lambda: deque(maxlen=100_000))

    def connected(self, *_: object) -> None:
        self.counts["connections_opened"] += 1

    def _reads(self) -> dict[str, int]:
        reads = {"replica_reads": 0, "primary_reads": 0}
        replica_set = self.app.state.database.replica_set
        if replica_set is not None:
            for node in replica_set.status():
                reads["primary_reads" if node.writer else "replica_reads"] += node.reads
        return reads

    def reset(self) -> None:
        if self.profiler is not None:
            self.profiler.reset()
        self.walls.clear()
        self.counts.update(dict.fromkeys(self.counts, 0))
        self.reads_baseline.update(self._reads())
        if self.app.state.cache is not None:
            self.cache_baseline.update(self.app.state.cache.stats())

    def state(self, kind: CommandKind) -> dict[str, Any]:
        """This worker's WORKER STATE (the shape :mod:`hotpath.run._state` merges)."""
        # what serving costs this process, apart from the other processes on the machine
        state: dict[str, Any] = {
            "pid": os.getpid(),
            "process_cpu_s": time.process_time(),
            # asked on the worker's event loop (follow_commands): its thread's CPU, which the
            # requests' own work is on, apart from the process's other threads (the default
            # executor's, a watchdog's)
            "loop_cpu_s": time.thread_time(),
        }
        if kind is CommandKind.CPU:
            return state
        cache = self.app.state.cache
        now = {} if cache is None else cache.stats()
        return {
            **state,
            "written": time.time(),
            "scopes": self.counts["requests"],
            "observe": None if self.profiler is None else self.profiler.snapshot(),
            "caches": [{"namespace": "shop", **_since(now, self.cache_baseline)}] if now else [],
            "counts": {**self.counts, **_since(self._reads(), self.reads_baseline)},
            "walls": [_wall_dict(sample) for sample in self.walls] if self.wall_clock else [],
        }


def build(settings: ShopSettings, options: ServerOptions | None = None) -> Any:
    options = options or ServerOptions()
    if settings.workers > 1 and options.state_dir is None:
        raise ShopOptionsError(
            f"{settings.workers} workers need a directory they share: set ServerOptions.state_dir"
        )
    state_dir = Path(options.state_dir or tempfile.mkdtemp(prefix="hotpath-shop-state-"))
    shared = SharedState(state_dir, settings.workers)
    app = create_app(settings)
    database = app.state.database
    profiler = shop_profiler(database.engines, options) if options.observe else None
    # findings are read from /__hotpath/report: one log line per finding per request would
    # only fill the server's log (listener bugs, logged as errors, still show)
    logging.getLogger("hotpath.observe").setLevel(logging.ERROR)
    mine = _WorkerCounts(app, profiler, options.wall_clock)
    for engine in database.engines:
        event.listen(engine.sync_engine, "connect", mine.connected)
    observe_settings = profiler.settings if profiler is not None else ObserveSettings()

    @app.get(f"{RUNNER_PREFIX}/stats", include_in_schema=False)
    async def stats() -> dict[str, Any]:
        merged, _ = await _whole_server(shared, observe_settings)
        totals = _sum(w["counts"] for w in merged["workers"])
        empty: dict[str, list[Any]] = {"endpoints": [], "top_fixes": [], "functions": []}
        return {
            "observe": merged["report"] if profiler is not None else empty,
            "connections_opened": totals.get("connections_opened", 0),
            "requests": totals.get("requests", 0),
            "replica_reads": totals.get("replica_reads", 0),
            "primary_reads": totals.get("primary_reads", 0),
            "cache": _sum(merged["caches"], skip=("namespace", "pid")),
            "process_cpu_s": merged["process_cpu_s"],
            "workers": [
                {"pid": w["pid"], **w["counts"], "cache": _sum(w["caches"], skip=("namespace",))}
                for w in merged["workers"]
            ],
        }

    @app.get(f"{RUNNER_PREFIX}/cpu", include_in_schema=False)
    async def cpu() -> dict[str, float]:
        # what a benchmark reads around its load: /stats builds observe's report, whose
        # cost is the runner's, not the workload's
        workers = await _gather(shared, CommandKind.CPU)
        return {
            "process_cpu_s": sum(state["process_cpu_s"] for state in workers),
            "loop_cpu_s": sum(state.get("loop_cpu_s", 0.0) for state in workers),
        }

    @app.get(f"{RUNNER_PREFIX}/report", include_in_schema=False)
    async def report() -> Response:
        if profiler is None:
            raise HTTPException(404, "this server runs without observe (ServerOptions.observe)")
        _, merged_report = await _whole_server(shared, observe_settings)
        return Response(merged_report.to_json(), media_type="application/json")

    @app.get(f"{RUNNER_PREFIX}/wall", include_in_schema=False)
    async def wall() -> list[dict[str, Any]]:
        if not options.wall_clock:
            raise HTTPException(404, "start the server with ServerOptions(wall_clock=True)")
        merged, _ = await _whole_server(shared, observe_settings)
        return list(merged["walls"])

    @app.post(f"{RUNNER_PREFIX}/reset", include_in_schema=False)
    async def reset() -> dict[str, Any]:
        workers = await _gather(shared, CommandKind.RESET)
        return {"status": "reset", "workers": len(workers)}

    lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def following(started: Any) -> AsyncIterator[Any]:
        # each worker follows the runner's commands for as long as it serves
        async with lifespan(started) as lifespan_state:
            task = asyncio.create_task(follow_commands(shared, mine.reset, mine.state))
            try:
                yield lifespan_state
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = following

    measured: Any = app
    if profiler is not None:
        measured = ASGIMiddleware(app, profiler, server_timing=False)
    if options.wall_clock:
        measured = WallClock(measured, mine.walls)

    async def entry(scope: Any, receive: Any, send: Any) -> None:
        # the runner's own calls are not part of the workload
        if scope.get("path", "").startswith(RUNNER_PREFIX) or scope["type"] != "http":
            await app(scope, receive, send)
            return
        mine.counts["requests"] += 1
        await measured(scope, receive, send)

    return entry


async def _gather(shared: SharedState, kind: CommandKind) -> list[dict[str, Any]]:
    try:
        return await shared.gather(kind)
    except WorkersMissing as error:
        raise HTTPException(503, str(error)) from error


async def _whole_server(
    shared: SharedState, settings: ObserveSettings
) -> tuple[dict[str, Any], Report]:
    """(every worker's state merged by ``hotpath run``'s merge, observe's merged report)."""
    workers = await _gather(shared, CommandKind.STATS)
    merged, report = merge_states(workers, settings)
    merged["workers"] = [
        {**w, "counts": state.get("counts", {}), "caches": state.get("caches", [])}
        for w, state in zip(merged["workers"], workers, strict=True)
    ]
    merged["process_cpu_s"] = sum(state["process_cpu_s"] for state in workers)
    merged["walls"] = [wall for state in workers for wall in state.get("walls") or []]
    return merged, report


APP_FACTORY = "hotpath.demo.shop.server:from_env"


def serve_worker(port: int) -> None:
    """One worker process of several (see ``python -m hotpath.demo.shop``): uvicorn on a
    listening socket of its own, bound to the shared port with ``SO_REUSEPORT``."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((LOOPBACK, port))
    config = uvicorn.Config(APP_FACTORY, factory=True, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[listener])


def settings_from_env() -> ShopSettings:
    raw = json.loads(os.environ[SETTINGS_ENV])
    raw["fixes"] = Fixes(**raw.get("fixes", {}))
    return ShopSettings(**{f.name: raw[f.name] for f in fields(ShopSettings) if f.name in raw})


def from_env() -> Any:
    """The app of the settings and options in the environment: what each uvicorn worker
    process builds (``python -m hotpath.demo.shop`` passes this factory to uvicorn)."""
    return build(settings_from_env(), ServerOptions.from_env())


def _since(now: dict[str, int], baseline: dict[str, int]) -> dict[str, int]:
    return {key: value - baseline.get(key, 0) for key, value in now.items()}


def _sum(items: Iterable[dict[str, Any]], skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Counters of several workers added up, key by key."""
    total: dict[str, int] = {}
    for item in items:
        for key, value in item.items():
            if key not in skip:
                total[key] = total.get(key, 0) + int(value)
    return total


def _wall_dict(sample: WallSample) -> dict[str, Any]:
    return {
        "method": sample.method,
        "path": sample.path,
        "wall_ms": sample.wall_ms,
        "name": None if sample.scope is None else sample.scope.name,
        "scope_ms": None if sample.scope is None else sample.scope.duration_ms,
        "breakdown_ms": None
        if sample.scope is None
        else {layer.value: ms for layer, ms in sample.scope.breakdown_ms.items()},
    }
