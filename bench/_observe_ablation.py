"""Which part of observe costs the served shop what:
``python -m bench._observe_ablation [--no-gc] [--rounds N] [--requests N] VARIANT...``.

Serves the optimized shop (as ``python -m bench observe`` does: tiny scale, 8 users, a fresh
local stack) once without observe and once per VARIANT, each server with its own cache
namespace, and loads them all at once with the same seeded requests, round after round (two
warm-up rounds first). Reported per variant: the event loop thread's CPU per request against
the bare server's, as the median of the rounds' ratios, the ratio of the totals, and the
rounds' spread. Variants taken in the same rounds compare like with like.

A VARIANT is ``full`` (observe, nothing switched off), ``bare`` (a second server without
observe: each server process has its own hash seed and memory layout, and how far two bare
servers disagree is the bias of one server against another, about +-2% here), ``beatMS``
(observe with a heartbeat every MS milliseconds, on quiet loops too; ``beat10`` is close to
how observe beat before session 10: an idle quiet loop's watchdog then sleeps 10 ms, not
20), or parts switched off, joined by commas:

- ``steps``: no step marks, no requests in flight on the loop's monitor: no heartbeat and no
  watchdog thread either;
- ``watchdog``: the step marks and the heartbeat, but no watchdog thread (no stack samples);
- ``heartbeat``: no heartbeat on the loop (the marks and the watchdog stay);
- ``hooks``: none of the client hooks (Redis, HTTP clients, hotpath.cache);
- ``listeners``: none of the profiler's SQLAlchemy listeners (the scopes and hooks stay);
- ``statements``: no statement events (the dialect's ``do_execute``), the ORM's stay;
- ``orm``: no ``do_orm_execute`` / ``before_flush`` session events (statements stay);
- ``collections``: no ``init_collection`` listeners (the unused-eager-load detector's);
- ``scopes``: the middleware passes requests through (observe installed, no scope).

``--no-gc`` disables the garbage collector in every server: a full collection (about 100 ms
here) lands in one round or another and moves that round's ratio by up to 20%; without it
the rounds agree to about 2%, which is what comparing parts needs (what observe adds to the
collector is measured apart, by ``python -m bench._observe_gc``).

The parts are switched off by a ``sitecustomize`` module on each server's ``PYTHONPATH``,
which patches observe as it is imported; the tool refuses to report a variant whose server
did not confirm it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from hotpath.demo._load import LoadSpec, run_load
from hotpath.demo._process import ShopServer, shop_server
from hotpath.demo._workload import shop_mix
from hotpath.demo.shop import SCALES
from hotpath.demo.shop.server import ServerOptions

from ._observe_profile import _threads, sitecustomize_env
from .observe import optimized_shop

PARTS = (
    "steps",
    "watchdog",
    "heartbeat",
    "hooks",
    "listeners",
    "statements",
    "orm",
    "collections",
    "scopes",
)
_USERS = 8

_SITECUSTOMIZE = """
import gc
import os
import pathlib

import wrapt

if os.environ.get("HOTPATH_ABLATION_NO_GC"):
    gc.disable()

_PARTS = set(filter(None, os.environ.get("HOTPATH_ABLATION", "").split(",")))


def _switch_off(module):
    for part in _PARTS:
        if part.startswith("beat"):
            import hotpath.observe._loop as loop

            loop._BEAT_S = loop._QUIET_BEAT_S = int(part[4:]) / 1000
            loop._IDLE_WAIT_S = max(0.02, loop._QUIET_BEAT_S)
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
    if "statements" in _PARTS:
        import hotpath.observe._statements as statements

        statements.watch = lambda engine, listener: None
    if "orm" in _PARTS:
        import hotpath.observe._profiler as profiler
        from sqlalchemy import event
        from sqlalchemy.orm import Session

        instrument = profiler.Profiler.instrument

        def without_orm_events(self, *engines):
            instrument(self, *engines)
            if self._orm_listening:
                event.remove(Session, "do_orm_execute", self._on_orm_execute)
                event.remove(Session, "before_flush", self._on_before_flush)
                self._orm_listening = False
            return self

        profiler.Profiler.instrument = without_orm_events
    if "collections" in _PARTS:
        import hotpath.observe._profiler as profiler

        profiler.Profiler._watch_collections = lambda self, mapper: None
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


def _check(variant: str) -> None:
    for part in variant.split(","):
        if part in ("full", "bare") or part in PARTS:
            continue
        if part.startswith("beat") and part[4:].isdigit() and int(part[4:]) > 0:
            continue
        raise SystemExit(
            f"unknown variant {part!r}: give full, bare, beatMS or parts of {', '.join(PARTS)}"
        )


def main(variants: list[str], rounds: int, requests: int, no_gc: bool) -> str:
    for variant in variants:
        _check(variant)
    with tempfile.TemporaryDirectory(prefix="hotpath-ablation-") as directory:
        (Path(directory) / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        base_env = sitecustomize_env(directory)
        if no_gc:
            base_env["HOTPATH_ABLATION_NO_GC"] = "1"
        with optimized_shop(_USERS) as settings, contextlib.ExitStack() as running:
            servers: list[ShopServer] = []
            for number, variant in enumerate(["bare", *variants]):
                parts = "" if variant in ("full", "bare") else variant
                applied = Path(directory) / f"applied-{number}"
                env = {
                    **base_env,
                    "HOTPATH_ABLATION": parts,
                    "HOTPATH_ABLATION_APPLIED": str(applied),
                }
                servers.append(
                    running.enter_context(
                        shop_server(
                            replace(settings, cache_namespace=f"ablation-{number}"),
                            options=ServerOptions(observe=variant != "bare"),
                            env=env,
                        )
                    )
                )
                if parts and not applied.exists():
                    raise SystemExit(f"{variant} was not applied: see the server's log")
            warm = LoadSpec(concurrency=_USERS, duration_s=120.0, max_requests=500)
            for _ in range(2):
                asyncio.run(_together(servers, warm))
            spec = LoadSpec(concurrency=_USERS, duration_s=120.0, max_requests=requests)
            taken = [asyncio.run(_together(servers, spec)) for _ in range(rounds)]
    gc_note = "collector off" if no_gc else "collector on"
    lines = [
        f"loop thread CPU per request against the bare server's, {rounds} rounds of "
        f"{requests} requests, {len(servers)} servers loaded at once, {gc_note}",
        "",
        "| variant | median of rounds | ratio of totals | rounds' spread (sd) |",
        "|---|---:|---:|---:|",
    ]
    for number, variant in enumerate(variants, 1):
        ratios = [r[number] / r[0] for r in taken]
        totals = sum(r[number] for r in taken) / sum(r[0] for r in taken)
        lines.append(
            f"| {variant} | {statistics.median(ratios):.3f} | {totals:.3f} | "
            f"{statistics.stdev(ratios) if len(ratios) > 1 else 0.0:.3f} |"
        )
    lines.append("")
    lines.append(f"bare server: {statistics.median(r[0] for r in taken):.3f} ms per request")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench._observe_ablation")
    parser.add_argument("variants", nargs="+", metavar="VARIANT")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--no-gc", action="store_true")
    arguments = parser.parse_args()
    print(main(arguments.variants, arguments.rounds, arguments.requests, arguments.no_gc))
