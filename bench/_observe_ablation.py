"""Which part of observe costs the served shop what: ``python -m bench._observe_ablation PART``.

Serves the optimized shop three times (as ``python -m bench observe`` does: tiny scale, 8
users, a fresh local stack): without observe, with it, and with it but one PART switched off,
and loads the three at once with the same seeded requests, round after round. Reported per
round and as medians: each observed server's event loop thread CPU per request against the
bare server's. The two observed servers' ratios, taken in the same rounds, tell what PART
costs; ``none`` switches nothing off (the two should agree: how far they do not is the
measurement's noise).

PART is one of these, or several joined by commas:

- ``steps``: no step marks, no requests in flight on the loop's monitor: no heartbeat and no
  watchdog thread either;
- ``watchdog``: the step marks and the heartbeat, but no watchdog thread (no stack samples);
- ``heartbeat``: no heartbeat on the loop (the marks and the watchdog stay);
- ``hooks``: none of the client hooks (Redis, HTTP clients, hotpath.cache);
- ``listeners``: none of the profiler's SQLAlchemy listeners (the scopes and hooks stay);
- ``scopes``: the middleware passes requests through (observe installed, no scope);
- ``none``: nothing.

The part is switched off by a ``sitecustomize`` module on the third server's ``PYTHONPATH``,
which patches observe as it is imported; the other two servers do not see it.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from hotpath.demo._load import LoadSpec, run_load
from hotpath.demo._process import ShopServer, shop_server
from hotpath.demo._workload import shop_mix
from hotpath.demo.shop import SCALES
from hotpath.demo.shop.server import ServerOptions

from ._observe_profile import _threads, sitecustomize_env
from .observe import optimized_shop

PARTS = ("steps", "watchdog", "heartbeat", "hooks", "listeners", "scopes", "none")
_ROUNDS, _REQUESTS, _USERS = 8, 500, 8

_SITECUSTOMIZE = """
import os
import pathlib

import wrapt

_PARTS = set(filter(None, os.environ.get("HOTPATH_ABLATION", "").split(",")))


def _switch_off(module):
    if "steps" in _PARTS:
        import hotpath.observe._loop as loop

        loop._MARKED_FIRST = loop._MARKED_AFTER_BLOCK = 0
        loop._start_watchdog = lambda: None
        loop.LoopMonitor.arrive = lambda self, running_loop, scope: None
        loop.LoopMonitor.leave = lambda self, scope: None
    if "watchdog" in _PARTS:
        import hotpath.observe._loop as loop

        loop._start_watchdog = lambda: None
    if "heartbeat" in _PARTS:
        import hotpath.observe._loop as loop

        def arrive(self, running_loop, scope):
            self.in_flight.append(scope)

        loop.LoopMonitor.arrive = arrive
    if "hooks" in _PARTS:
        import hotpath.observe._hooks as hooks

        hooks._CLIENT_HOOKS.clear()
    if "listeners" in _PARTS:
        import hotpath.observe._profiler as profiler

        instrument = profiler.Profiler.instrument

        def without_listeners(self, *engines):
            instrument(self, *engines)
            self.uninstrument()  # the process-wide hooks stay
            return self

        profiler.Profiler.instrument = without_listeners
    if "scopes" in _PARTS:
        import hotpath.observe._middleware as middleware

        async def passed_through(self, scope, receive, send):
            await self.app(scope, receive, send)

        middleware.ASGIMiddleware.__call__ = passed_through
    # what main() checks: a sitecustomize that fails is reported by Python and ignored
    pathlib.Path(os.environ["HOTPATH_ABLATION_APPLIED"]).write_text(",".join(sorted(_PARTS)))


if _PARTS:
    wrapt.register_post_import_hook(_switch_off, "hotpath.observe")
"""


async def _loop_cpu_ms(server: ShopServer, spec: LoadSpec) -> float:
    """The server's event loop thread's CPU per request (its main thread: one worker)."""
    assert server.pid is not None
    before = _threads(server.pid)
    load = await run_load(server.url, shop_mix(SCALES["tiny"]), spec)
    after = _threads(server.pid)
    return 1000 * (after[server.pid] - before.get(server.pid, 0.0)) / max(1, load.requests)


async def _together(servers: list[ShopServer], spec: LoadSpec) -> list[float]:
    return list(await asyncio.gather(*(_loop_cpu_ms(s, spec) for s in servers)))


def main(part: str) -> str:
    unknown = [p for p in part.split(",") if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part {unknown[0]!r}: give one of {', '.join(PARTS)}")
    with tempfile.TemporaryDirectory(prefix="hotpath-ablation-") as directory:
        (Path(directory) / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        applied = Path(directory) / "applied"
        with (
            optimized_shop(_USERS) as settings,
            shop_server(settings, options=ServerOptions(observe=False)) as bare,
            shop_server(settings, options=ServerOptions(observe=True)) as observed,
        ):
            env = {
                **sitecustomize_env(directory),
                "HOTPATH_ABLATION": "" if part == "none" else part,
                "HOTPATH_ABLATION_APPLIED": str(applied),
            }
            with shop_server(settings, options=ServerOptions(observe=True), env=env) as ablated:
                if part != "none" and not applied.exists():
                    raise SystemExit(f"{part} was not switched off: see the server's log")
                servers = [bare, observed, ablated]
                asyncio.run(_together(servers, LoadSpec(concurrency=_USERS, duration_s=3.0)))
                spec = LoadSpec(concurrency=_USERS, duration_s=120.0, max_requests=_REQUESTS)
                rounds = [asyncio.run(_together(servers, spec)) for _ in range(_ROUNDS)]
    lines = [
        f"loop thread CPU per request against the bare server's, {_ROUNDS} rounds of "
        f"{_REQUESTS} requests, three servers loaded at once; part off: {part}",
        "",
        f"| round | bare ms | observe | observe, {part} off |",
        "|---:|---:|---:|---:|",
    ]
    for number, (plain, watched, without) in enumerate(rounds):
        lines.append(f"| {number} | {plain:.3f} | {watched / plain:.3f} | {without / plain:.3f} |")
    observe = statistics.median(w / p for p, w, _ in rounds)
    ablated = statistics.median(a / p for p, _, a in rounds)
    lines += ["", f"median: observe {observe:.3f}, observe with {part} off {ablated:.3f}"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "none"))
