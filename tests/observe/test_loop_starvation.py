"""A starved event loop is not a blocked one: steps made long by an overloaded machine (the
loop thread waiting for a core) are not the application's blocking calls.

The loop runs in a child process pinned to one core at the lowest priority, next to a
process that spins on that core: every step of its requests is a few milliseconds of CPU
stretched far past ``blocking_ms`` by waiting for the core. Without the kernel's scheduler
statistics the watchdog takes each of them for a blocking call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys, time

    from hotpath.observe import ASGIMiddleware, FindingKind, Profiler
    from hotpath.observe import _loop

    if sys.argv[2] == "without":
        _loop._schedstat = lambda path: None  # what the watchdog knew before

    def compute(seconds):  # short CPU work: a few ms on a core of its own
        until = time.thread_time() + seconds
        while time.thread_time() < until:
            pass

    async def app(scope, receive, send):
        for _ in range(3):
            compute(0.003)
            await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main():
        profiler = Profiler(blocking_ms=20, modes={"blocking_call": "log"})
        wrapped = ASGIMiddleware(app, profiler, server_timing=False)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        # a first request unstarved: what it imports on the way (a real blocking call, reading
        # modules from disk) is not what this test is about
        http = {"type": "http", "method": "GET", "path": "/warm", "query_string": b"",
                "headers": []}
        await wrapped(http, receive, send)
        profiler.reset()
        # starved from here on (imported first: an import at 1% of a core takes a minute)
        os.sched_setaffinity(0, {int(sys.argv[1])})
        os.nice(19)
        for number in range(2):
            http = {"type": "http", "method": "GET", "path": f"/work/{number}",
                    "query_string": b"", "headers": []}
            await wrapped(http, receive, send)
        findings = [
            fix for endpoint in profiler.report().scopes for fix in endpoint.fixes
            if fix.kind == FindingKind.BLOCKING_CALL.value
        ]
        print(json.dumps({"blocking_calls": len(findings)}), flush=True)

    asyncio.run(main())
    os._exit(0)  # no interpreter shutdown at 1% of a core
    """
)


def _schedstat_file(directory: Path, ran_ns: int) -> Path:
    """A scheduler-statistics file as the kernel writes it: ran, waited (ns), slices."""
    path = directory / f"schedstat-{ran_ns}"
    path.write_text(f"{ran_ns} 0 1\n")
    return path


def _starved_run(tmp_path: Path, schedstat: str) -> dict[str, int]:
    core = min(os.sched_getaffinity(0))
    script = tmp_path / "starved_app.py"  # a file: its frames are the application's
    script.write_text(CHILD)
    spinner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass",
        ]
    )
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(core), schedstat],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        spinner.kill()
        spinner.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.faults
@pytest.mark.skipif(
    not Path("/proc/thread-self/schedstat").exists() or not hasattr(os, "sched_setaffinity"),
    reason="needs Linux scheduler statistics and CPU affinity",
)
def test_a_starved_loop_is_not_taken_for_blocking_calls(tmp_path: Path) -> None:
    assert _starved_run(tmp_path, "with")["blocking_calls"] == 0
    # the unprotected path: the same starved steps, judged by the thread's CPU clock alone
    assert _starved_run(tmp_path, "without")["blocking_calls"] >= 1


def test_a_step_the_watchdog_saw_only_at_its_end_is_not_judged(tmp_path: Path) -> None:
    """What the watchdog saw of a step's last sliver says nothing of the rest (seen under
    load: a 25 ms starved step looked at for its last 0.9 ms, its thread running then, was
    taken for CPU-bound code at the application's line)."""
    from hotpath.observe._loop import LoopMonitor
    from hotpath.observe._records import CallSite

    app_line = (CallSite("app.py", 7, "compute"), "")
    started, ended = 100.0, 100.025

    def judged(seen_for_s: float) -> int:
        monitor = LoopMonitor(threading.get_ident())
        monitor.threshold_s = 0.02
        monitor.seen_at, monitor.samples = ended - seen_for_s, [app_line]
        monitor.sched_at_seen = (0, 0)  # from then on: every nanosecond on a core
        monitor._schedstat = str(_schedstat_file(tmp_path, int(seen_for_s * 1e9)))
        monitor._record(started, ended, None)
        return len(monitor.blocks)

    assert judged(0.0009) == 0
    assert judged(0.015) == 1  # seen long enough: it computed all that time, a block
