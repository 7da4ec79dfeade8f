"""What the garbage collector costs each served shop: ``python -m bench._observe_gc``.

Serves the optimized shop twice (as ``python -m bench observe`` does: tiny scale, 8 users,
each server its own cache), without observe and with it, loads both at once with the same
seeded requests (two untimed rounds, then four timed), and reports per request, for each:
collections per generation, the collector's CPU per generation (its thread's clock around
each collection, from ``gc.callbacks``), the objects it found unreachable, and the objects
the collector tracks per generation at the end.

The collector runs when the containers allocated and not yet freed pass a threshold, and
promotes what is alive then: a request's containers that live as long as the request are
what make it run, and what it promotes to the old generation makes the full collections
(each a walk of every tracked object) come sooner. ``gc`` time is part of the ratio
``python -m bench observe`` measures; this tells that part apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hotpath.demo._load import LoadSpec, run_load
from hotpath.demo._process import ShopServer, shop_server
from hotpath.demo._workload import shop_mix
from hotpath.demo.shop import SCALES
from hotpath.demo.shop.server import ServerOptions

from ._observe_profile import sitecustomize_env
from .observe import optimized_shop

# Loaded by each server: times every collection, and writes the totals every second.
_SITECUSTOMIZE = """
import gc, json, os, threading, time

if os.environ.get("HOTPATH_GC_STATS"):
    _out = os.environ["HOTPATH_GC_STATS"]
    _totals = {"ns": [0, 0, 0], "collections": [0, 0, 0], "collected": [0, 0, 0]}
    _started = [0]

    def _on_gc(phase, info):
        if phase == "start":
            _started[0] = time.thread_time_ns()
            return
        generation = info["generation"]
        _totals["ns"][generation] += time.thread_time_ns() - _started[0]
        _totals["collections"][generation] += 1
        _totals["collected"][generation] += info["collected"]

    gc.callbacks.append(_on_gc)

    def _write():
        while True:
            time.sleep(1)
            tracked = [len(gc.get_objects(generation)) for generation in range(3)]
            with open(_out + ".tmp", "w") as written:
                json.dump({**_totals, "tracked": tracked}, written)
            os.replace(_out + ".tmp", _out)

    threading.Thread(target=_write, daemon=True).start()
"""

_ROUNDS, _REQUESTS, _USERS = 4, 500, 8


async def _together(servers: list[ShopServer], spec: LoadSpec) -> list[int]:
    loads = await asyncio.gather(
        *(run_load(server.url, shop_mix(SCALES["tiny"]), spec) for server in servers)
    )
    return [load.requests for load in loads]


def _read(path: Path) -> dict[str, Any]:
    time.sleep(1.5)  # the server writes every second
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def main() -> str:
    with tempfile.TemporaryDirectory(prefix="hotpath-gc-") as directory:
        (Path(directory) / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        outputs = [Path(directory) / "bare.json", Path(directory) / "observed.json"]
        with optimized_shop(_USERS) as settings, contextlib.ExitStack() as servers:
            started = [
                servers.enter_context(
                    shop_server(
                        replace(settings, cache_namespace=f"gc-{output.stem}"),
                        options=ServerOptions(observe=observe),
                        env={**sitecustomize_env(directory), "HOTPATH_GC_STATS": str(output)},
                    )
                )
                for output, observe in zip(outputs, (False, True), strict=True)
            ]
            spec = LoadSpec(concurrency=_USERS, duration_s=120.0, max_requests=_REQUESTS)
            for _ in range(2):
                asyncio.run(_together(started, spec))
            before = [_read(output) for output in outputs]
            requests = [0, 0]
            for _ in range(_ROUNDS):
                for index, served in enumerate(asyncio.run(_together(started, spec))):
                    requests[index] += served
            after = [_read(output) for output in outputs]
    lines = [
        f"garbage collection per request, {_ROUNDS} rounds of {_REQUESTS} requests, both "
        "servers loaded at once",
        "",
        "| server | collections gen 0 / 1 / 2 | us of collection gen 0 / 1 / 2 | us in all "
        "| unreachable objects found | tracked objects at the end (gen 0 / 1 / 2) |",
        "|---|---|---|---:|---:|---|",
    ]
    for name, start, end, count in zip(
        ("no observe", "observe"), before, after, requests, strict=True
    ):
        # per request and generation, what the server's totals grew by during the timed rounds
        per = {
            key: [(end[key][g] - start[key][g]) / count for g in range(3)]
            for key in ("collections", "ns", "collected")
        }
        collections = " / ".join(f"{n:.3f}" for n in per["collections"])
        spent = [ns / 1000 for ns in per["ns"]]
        found = sum(per["collected"])
        tracked = " / ".join(str(n) for n in end["tracked"])
        lines.append(
            f"| {name} | {collections} | {' / '.join(f'{us:.1f}' for us in spent)} "
            f"| {sum(spent):.1f} | {found:.2f} | {tracked} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
    sys.exit(0)
