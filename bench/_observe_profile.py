"""Where observe's CPU goes in the served shop: ``python -m bench._observe_profile [SECONDS]``.

Serves the optimized shop as ``python -m bench observe`` does (tiny scale, 8 users), without
observe and with it, one after the other, and for each server reports, over a timed load:

- CPU per request, per thread (``/proc/PID/task/*/stat``): observe's cost is on the loop
  thread; its watchdog thread's is listed apart;
- the garbage collector's collections and time per request (``gc.callbacks``);
- in a third server, with observe and a cProfile of its loop thread (whose own cost makes
  that server's CPU no measure): observe's own functions by their time.

The servers run one after the other, so their CPU per request is no ratio (what the machine
and the fresh databases do meanwhile differs: ``python -m bench observe`` loads both at once
for that); this is for where the time goes. CPU per thread and cProfile are used, not
py-spy's shares: on a busy machine a sampling
profiler's shares are wall time (a system call's return is where a loaded machine preempts a
thread, and the samples then pile up on that line). The server is instrumented by a
``sitecustomize`` module on ``PYTHONPATH``, started and stopped by flag files.
"""

from __future__ import annotations

import asyncio
import os
import pstats
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from hotpath.demo._load import LoadSpec, run_load
from hotpath.demo._process import shop_server
from hotpath.demo._workload import shop_mix
from hotpath.demo.shop import SCALES
from hotpath.demo.shop.app import ShopSettings
from hotpath.demo.shop.server import SETTINGS_ENV, ServerOptions

from .observe import optimized_shop

# Loaded by the shop server (the only process with SETTINGS_ENV set): counts collections,
# and profiles the loop thread between the START and STOP flag files.
_SITECUSTOMIZE = """
import asyncio.base_events, cProfile, gc, os, threading, time

if os.environ.get({settings!r}):
    _out = os.environ["HOTPATH_PROFILE_DIR"]
    _gc = [0, 0.0, 0.0]  # collections, seconds, start

    def _on_gc(phase, info):
        if phase == "start":
            _gc[2] = time.thread_time()
        else:
            _gc[0] += 1
            _gc[1] += time.thread_time() - _gc[2]

    gc.callbacks.append(_on_gc)
    _run_forever = asyncio.base_events.BaseEventLoop.run_forever

    def run_forever(self):
        profile = cProfile.Profile() if os.environ.get("HOTPATH_PROFILE_CPROFILE") else None

        def follow():
            while not os.path.exists(os.path.join(_out, "start")):
                time.sleep(0.05)
            _gc[0] = 0
            _gc[1] = 0.0
            if profile is not None:
                self.call_soon_threadsafe(profile.enable)
            while not os.path.exists(os.path.join(_out, "stop")):
                time.sleep(0.05)

            def stop():
                if profile is not None:
                    profile.disable()
                    profile.dump_stats(os.path.join(_out, "loop.prof"))
                with open(os.path.join(_out, "gc"), "w") as written:
                    written.write(f"{{_gc[0]}} {{_gc[1]}}")

            self.call_soon_threadsafe(stop)

        threading.Thread(target=follow, daemon=True).start()
        return _run_forever(self)

    asyncio.base_events.BaseEventLoop.run_forever = run_forever
"""


def _threads(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) per thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def sitecustomize_env(directory: str) -> dict[str, str]:
    """A server's environment addition that loads ``directory``'s ``sitecustomize`` module."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [directory, os.environ.get("PYTHONPATH")]))}


def _serve_and_measure(
    settings: ShopSettings, observe: bool, seconds: float, profiled: bool = False
) -> str:
    with tempfile.TemporaryDirectory(prefix="hotpath-profile-") as directory:
        out = Path(directory)
        (out / "sitecustomize.py").write_text(
            textwrap.dedent(_SITECUSTOMIZE.format(settings=SETTINGS_ENV))
        )
        env = {
            **sitecustomize_env(directory),
            "HOTPATH_PROFILE_DIR": directory,
            "HOTPATH_PROFILE_CPROFILE": "1" if profiled else "",
        }
        with shop_server(settings, options=ServerOptions(observe=observe), env=env) as server:
            assert server.pid is not None
            pid = server.pid  # one worker: the process serving the requests
            mix = shop_mix(SCALES["tiny"])
            users = settings.concurrency
            asyncio.run(run_load(server.url, mix, LoadSpec(concurrency=users, duration_s=3)))
            before = _threads(pid)
            (out / "start").touch()
            time.sleep(0.2)
            load = asyncio.run(
                run_load(server.url, mix, LoadSpec(concurrency=users, duration_s=seconds))
            )
            after = _threads(pid)
            (out / "stop").touch()
            deadline = time.monotonic() + 30
            while not (out / "gc").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            collections, gc_s = (float(x) for x in (out / "gc").read_text().split())
            if profiled:  # cProfile's own cost makes this server's CPU no measure
                return "\n".join(_observe_functions(out / "loop.prof", load.requests))
            lines = [
                f"### {'observe, every detector' if observe else 'no observe'}",
                "",
                f"{load.requests} requests in {seconds:.0f} s, {load.errors} errors",
                "",
            ]
            for thread, cpu in sorted(after.items(), key=lambda kv: -kv[1]):
                spent = cpu - before.get(thread, 0.0)
                if spent >= 0.05:
                    lines.append(
                        f"- thread {thread}{' (loop)' if thread == pid else ''}: "
                        f"{1000 * spent / load.requests:.3f} ms CPU per request"
                    )
            lines.append(
                f"- garbage collector: {collections / load.requests:.3f} collections, "
                f"{1000 * gc_s / load.requests:.3f} ms per request"
            )
            return "\n".join(lines)


def _observe_functions(path: Path, requests: int, top: int = 20) -> list[str]:
    """observe's own functions in the loop thread's profile, by their own time."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())
    own = sorted(
        (
            (entry[2], entry[1], f"{file.split('/src/')[-1]}:{line} {name}")
            for (file, line, name), entry in stats.items()
            if "hotpath/observe" in file
        ),
        reverse=True,
    )
    share = sum(t for t, _, _ in own) / total if total else 0.0
    lines = [f"observe's own functions: {share:.1%} of the loop thread's profiled time", ""]
    lines += [
        f"- {100 * t / total:.2f}% ({calls / requests:.2f} calls per request) {where}"
        for t, calls, where in own[:top]
    ]
    return lines


def main(seconds: float) -> str:
    with optimized_shop(users=8) as settings:
        parts = [
            _serve_and_measure(settings, False, seconds),
            _serve_and_measure(settings, True, seconds),
            "### observe's functions (a third server, under cProfile)",
            _serve_and_measure(settings, True, seconds, profiled=True),
        ]
    return "\n\n".join(parts)


if __name__ == "__main__":
    print(main(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0))
