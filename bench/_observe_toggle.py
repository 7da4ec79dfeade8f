"""What observe costs one served shop process, measured inside that process:
``python -m bench._observe_toggle [--no-gc] [--pairs N] [--requests N] [--against beat10]``.

Serves the optimized shop twice (as ``python -m bench observe`` does: tiny scale, 8 users,
each server its own cache): bare, and observed with a switch. SIGUSR1 flips the observed
server's middleware between recording and passing requests through (observe's hooks and
listeners stay installed: outside a scope they return at once, which measured the same as
no observe at all). Rounds load both servers at once with the same seeded requests, the
observed one recording in one round and passing through in the next, in turns. A round's
ratio to the bare server takes out what the machine did meanwhile; two adjacent rounds'
ratios, recording against passing through, are observe's cost in one process.

Why: two server processes differ by themselves (hash seed, memory layout): a second bare
server measured 0.973-1.018 against the first (docs/benchmarks.md, observe, session 10),
as wide as what is being measured. Here the recording and the passing through share the
process, so that bias is gone; what is left is the rounds' noise, which more pairs shrink.
The switch itself costs both states alike (one coroutine frame per request).

``--against beat10`` switches to observe recording with about the heartbeat of before
session 10 (every 10 ms on every loop; an idle loop's watchdog then sleeps 10 ms, not 20)
instead of passing through: what the quiet beat saves. ``--against nomonitor``: recording
with no loop monitor (requests neither marked nor in flight: no heartbeat, no watchdog
looks), what watching the loop costs; ``--against nojudge``: recording with no conclusion
(no breakdown, detectors, export or roll-up), what judging a request costs;
``nohooks``, ``nostatements``, ``noorm``: recording with the client hooks, the statement
handlers or the profiler's ORM listeners (execute, flush, load) and statement bookkeeping
finding no scope (the relationships' ``init_collection`` listeners, which read the scope
through ``_scope``, still run with ``noorm``); ``noormevent``: recording with the
``do_orm_execute`` listeners removed, which also prices what SQLAlchemy does for any such
listener (an ``ORMExecuteState`` and a second ``orm_pre_session_exec`` per ORM execution);
``judge2``: every request judged a second time right after the first, which prices a warm
conclusion (against ``nojudge``'s cold one; the roll-ups count each request twice).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from hotpath.demo._load import LoadSpec
from hotpath.demo._process import ShopServer, shop_server
from hotpath.demo.shop.server import ServerOptions

from ._observe_ablation import _together
from ._observe_profile import sitecustomize_env
from .observe import optimized_shop

_USERS = 8

_SITECUSTOMIZE = """
import gc
import os
import pathlib
import signal

import wrapt

if os.environ.get("HOTPATH_TOGGLE_NO_GC"):
    gc.disable()

if os.environ.get("HOTPATH_TOGGLE"):
    _state = pathlib.Path(os.environ["HOTPATH_TOGGLE"])
    _recording = [True]

    _against = os.environ.get("HOTPATH_TOGGLE_AGAINST", "passthrough")

    # the middleware's loop monitor with nomonitor: requests neither marked nor registered
    # in flight, so no heartbeat and no watchdog looks
    class _NoMonitor:
        marked_left = 0

        def arrive(self, loop, scope):
            pass

        def leave(self, scope):
            pass

    _NO_MONITOR = _NoMonitor()

    class _NoScope:
        def get(self):
            return None

    _NO_SCOPE = _NoScope()
    # the variants whose module is made blind to scopes: the client hooks (Redis, HTTP,
    # hotpath.cache, pool checkouts), the statement handlers, the profiler's ORM listeners
    # and statement bookkeeping (not the init_collection listeners: they are _scope's)
    _BLIND = {
        "nohooks": "hotpath.observe._hooks",
        "nostatements": "hotpath.observe._statements",
        "noorm": "hotpath.observe._profiler",
    }
    _originals = {}

    def _patch(module, name, replacement, on):
        if name not in _originals:
            _originals[name] = getattr(module, name)
        setattr(module, name, _originals[name] if on else replacement)

    def _flip(signum, frame):
        _recording[0] = not _recording[0]
        if _against == "nomonitor":
            import hotpath.observe._middleware as middleware

            _patch(middleware, "monitor_for_this_loop", lambda loop: _NO_MONITOR, _recording[0])
        elif _against == "nojudge":
            from hotpath.observe._recorder import Recorder

            _patch(Recorder, "_judge", lambda self, scope, raising: None, _recording[0])
        elif _against == "judge2":
            # each request judged twice, the second time right after the first (its code and
            # data warm): what a warm conclusion costs, against nojudge's cold one
            from hotpath.observe._recorder import Recorder

            judge = _originals.setdefault("_judge", Recorder._judge)

            def twice(self, scope, raising):
                judge(self, scope, raising)
                judge(self, scope, raising)

            Recorder._judge = judge if _recording[0] else twice
        elif _against == "noormevent":
            # the do_orm_execute listeners removed: also what SQLAlchemy does for any
            from sqlalchemy import event
            from sqlalchemy.orm import Session

            for profiler in _profilers:
                listener = profiler._on_orm_execute
                if _recording[0]:
                    event.listen(Session, "do_orm_execute", listener)
                elif event.contains(Session, "do_orm_execute", listener):
                    event.remove(Session, "do_orm_execute", listener)
        elif _against in _BLIND:
            # the module's listeners find no scope, as outside requests: they return at once
            import importlib

            module = importlib.import_module(_BLIND[_against])
            _patch(module, "current_scope", _NO_SCOPE, _recording[0])
        if _against == "beat10":
            import hotpath.observe._loop as loop

            if not hasattr(loop, "_QUIET_AS_BUILT"):
                loop._QUIET_AS_BUILT = (loop._QUIET_BEAT_S, loop._IDLE_WAIT_S)
            quiet, idle = loop._QUIET_AS_BUILT if _recording[0] else (loop._BEAT_S, 0.02)
            loop._QUIET_BEAT_S, loop._IDLE_WAIT_S = quiet, idle
        _state.write_text("on" if _recording[0] else "off")

    _profilers = []  # every Profiler made in the server (noormevent removes their listener)

    def _keep_profilers(module):
        made = module.Profiler.__init__

        def init(self, *args, **kwargs):
            made(self, *args, **kwargs)
            _profilers.append(self)

        module.Profiler.__init__ = init

    wrapt.register_post_import_hook(_keep_profilers, "hotpath.observe._profiler")

    def _switch(module):
        call = module.ASGIMiddleware.__call__

        async def switched(self, scope, receive, send):
            if _recording[0] or _against != "passthrough":
                await call(self, scope, receive, send)
            else:
                await self.app(scope, receive, send)

        module.ASGIMiddleware.__call__ = switched
        signal.signal(signal.SIGUSR1, _flip)
        _state.write_text("on")

    wrapt.register_post_import_hook(_switch, "hotpath.observe._middleware")
"""


def _switch(server: ShopServer, state: Path, recording: bool) -> None:
    """Flip the observed server to ``recording`` (or passing through), and wait until it says so."""
    wanted = "on" if recording else "off"
    if state.read_text() == wanted:
        return
    assert server.pid is not None
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while state.read_text() != wanted:
        if time.monotonic() > deadline:
            raise SystemExit(f"the observed server did not switch {wanted}: see its log")
        time.sleep(0.01)


def main(pairs: int, requests: int, no_gc: bool, against: str) -> str:
    with tempfile.TemporaryDirectory(prefix="hotpath-toggle-") as directory:
        (Path(directory) / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        state = Path(directory) / "recording"
        env = sitecustomize_env(directory)
        if no_gc:
            env["HOTPATH_TOGGLE_NO_GC"] = "1"
        with optimized_shop(_USERS) as settings, contextlib.ExitStack() as running:
            bare = running.enter_context(
                shop_server(
                    replace(settings, cache_namespace="toggle-bare"),
                    options=ServerOptions(observe=False),
                    env=env,
                )
            )
            observed = running.enter_context(
                shop_server(
                    replace(settings, cache_namespace="toggle-observed"),
                    options=ServerOptions(observe=True),
                    env={**env, "HOTPATH_TOGGLE": str(state), "HOTPATH_TOGGLE_AGAINST": against},
                )
            )
            if not state.exists():
                raise SystemExit("the observed server has no switch: see its log")
            servers = [bare, observed]
            warm = LoadSpec(concurrency=_USERS, duration_s=120.0, max_requests=500)
            for _ in range(2):
                asyncio.run(_together(servers, warm))
            spec = LoadSpec(concurrency=_USERS, duration_s=120.0, max_requests=requests)
            taken: list[tuple[float, float]] = []  # (recording, passing through) per pair
            for pair in range(pairs):
                ratios = {}
                # which state goes first alternates: a drift within a pair hits both ways
                for recording in (True, False) if pair % 2 == 0 else (False, True):
                    _switch(observed, state, recording)
                    plain, watched = asyncio.run(_together(servers, spec))
                    ratios[recording] = watched / plain
                taken.append((ratios[True], ratios[False]))
    costs = [on / off for on, off in taken]
    gc_note = "collector off" if no_gc else "collector on"
    other = "passing through" if against == "passthrough" else f"recording with {against}"
    lines = [
        f"observe recording against {other}, in one server process: {pairs} pairs of "
        f"rounds of {requests} requests, loop thread CPU per request (each round against a "
        f"bare server loaded at once), {gc_note}",
        "",
        f"| pair | recording / bare | {other} / bare | recording / {other} |",
        "|---:|---:|---:|---:|",
    ]
    for number, ((on, off), cost) in enumerate(zip(taken, costs, strict=True)):
        lines.append(f"| {number} | {on:.3f} | {off:.3f} | {cost:.3f} |")
    spread = statistics.stdev(costs) if len(costs) > 1 else 0.0
    lines += [
        "",
        f"recording / {other}: median {statistics.median(costs):.3f}, mean "
        f"{statistics.mean(costs):.3f} (sd {spread:.3f}, standard error "
        f"{spread / len(costs) ** 0.5:.3f})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench._observe_toggle")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--no-gc", action="store_true")
    variants = (
        "passthrough",
        "beat10",
        "nomonitor",
        "nojudge",
        "nohooks",
        "nostatements",
        "noorm",
        "noormevent",
        "judge2",
    )
    parser.add_argument("--against", choices=variants, default="passthrough")
    arguments = parser.parse_args()
    print(main(arguments.pairs, arguments.requests, arguments.no_gc, arguments.against))
