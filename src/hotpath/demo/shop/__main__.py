"""``python -m hotpath.demo.shop``: serve one configuration of the shop on 127.0.0.1.

Settings come as JSON in ``HOTPATH_SHOP_SETTINGS`` (the demo runner writes them). Besides the
shop's API, ``GET /__hotpath/stats`` returns what observe measured per route (queries per
request, latency), how many database connections the process opened and, with the cache fix,
the cache's hits per tier since the last ``POST /__hotpath/reset``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields
from typing import Any

import uvicorn
from sqlalchemy import event

from ...observe import ASGIMiddleware, Profiler
from .app import ShopSettings, create_app
from .fixes import Fixes


def build(settings: ShopSettings) -> Any:
    app = create_app(settings)
    database = app.state.database
    opened = {"connections": 0}
    cache_baseline: dict[str, int] = {}  # the cache's counters at the last reset

    def _count(*_: object) -> None:
        opened["connections"] += 1

    for engine in database.engines:
        event.listen(engine.sync_engine, "connect", _count)

    # production settings: counts and timings only, no per-query bookkeeping
    profiler = Profiler(
        *database.engines,
        keep_queries=0,
        slow_query_ms=10_000,
        modes={
            "n_plus_one": "off",
            "duplicate": "off",
            "unused_eager_load": "off",
            "slow_query": "off",
            "unbounded_result": "off",
        },
    )

    @app.get("/__hotpath/stats", include_in_schema=False)
    async def stats() -> dict[str, Any]:
        report = profiler.report().to_dict()
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
            "observe": report,
            "connections_opened": opened["connections"],
            "replica_reads": replica_reads,
            "primary_reads": primary_reads,
            "cache": counted,
        }

    @app.post("/__hotpath/reset", include_in_schema=False)
    async def reset() -> dict[str, str]:
        profiler.reset()
        opened["connections"] = 0
        if app.state.cache is not None:
            cache_baseline.clear()
            cache_baseline.update(app.state.cache.stats())
        return {"status": "reset"}

    measured = ASGIMiddleware(app, profiler, server_timing=False)

    async def entry(scope: Any, receive: Any, send: Any) -> None:
        # the runner's own calls are not part of the workload
        target = app if scope.get("path", "").startswith("/__hotpath") else measured
        await target(scope, receive, send)

    return entry


def main() -> None:
    raw = json.loads(os.environ["HOTPATH_SHOP_SETTINGS"])
    raw["fixes"] = Fixes(**raw.get("fixes", {}))
    settings = ShopSettings(**{f.name: raw[f.name] for f in fields(ShopSettings) if f.name in raw})
    port = int(sys.argv[1])
    uvicorn.run(build(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
