"""``hotpath run -- gunicorn -w 2 ...``: uvicorn's worker class serving a FastAPI app, and
gunicorn's own sync workers serving a Flask app. Each answer names the worker (its pid) that
served it, so the merged report is checked against exactly what each worker served."""

from __future__ import annotations

import signal
import sys
import textwrap
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from hotpath.testing import ModuleDatabase
from tests.helpers import alive

from .conftest import descendants, hotpath_run, interrupt, port, read_report, wait_listening

WORKERS = 2
ROUND = 20  # requests per round, until both workers have answered
MAX_ROUNDS = 20

PLANTED_ASGI = textwrap.dedent(
    """
    import os

    from fastapi import FastAPI
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["PLANTED_DB_URL"])
    app = FastAPI()


    @app.get("/served/{number}")
    def served(number: int) -> dict[str, int]:
        with engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM served_rows")).scalar_one()
        return {"pid": os.getpid()}
    """
)

PLANTED_WSGI = textwrap.dedent(
    """
    import os

    from flask import Flask
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["PLANTED_DB_URL"])
    app = Flask(__name__)


    @app.get("/served/<int:number>")
    def served(number):
        with engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM served_rows")).scalar_one()
        return {"pid": os.getpid()}
    """
)

ROUTES = {"asgi": "GET /served/{number}", "wsgi": "GET /served/<int:number>"}


@pytest.fixture(scope="module")
def database(hotpath_db: ModuleDatabase) -> ModuleDatabase:
    engine = create_engine(hotpath_db.url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE served_rows (id int PRIMARY KEY)"))
    engine.dispose()
    return hotpath_db


def _served_by(base_url: str) -> Counter[int]:
    """Requests on fresh connections (each one accepted by whichever worker takes it), in
    rounds until both workers have answered: the number each worker's pid answered."""
    served: Counter[int] = Counter()
    number = 0
    with httpx.Client(
        base_url=base_url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:
        for _ in range(MAX_ROUNDS):
            for _ in range(ROUND):
                answer = client.get(f"/served/{number}")
                assert answer.status_code == 200, answer.text
                served[answer.json()["pid"]] += 1
                number += 1
            if len(served) == WORKERS:
                break
    return served


UVICORN_WORKER = ["-k", "uvicorn.workers.UvicornWorker"]


@pytest.mark.parametrize(
    ("kind", "worker_args", "stop"),
    [
        # gunicorn's graceful stop: each worker finishes and exits
        ("asgi", UVICORN_WORKER, signal.SIGTERM),
        # Ctrl-C: the whole group gets SIGINT, then the master sends its workers SIGQUIT
        ("asgi", UVICORN_WORKER, signal.SIGINT),
        ("wsgi", [], signal.SIGTERM),
    ],
    ids=["uvicorn-worker-sigterm", "uvicorn-worker-ctrl-c", "sync-worker-flask-sigterm"],
)
@pytest.mark.slow
def test_gunicorn_workers_requests_are_all_in_the_merged_report(
    tmp_path: Path,
    database: ModuleDatabase,
    kind: str,
    worker_args: list[str],
    stop: signal.Signals,
) -> None:
    (tmp_path / "planted.py").write_text(PLANTED_ASGI if kind == "asgi" else PLANTED_WSGI)
    listen = port()
    run = hotpath_run(
        [
            "--report-dir",
            str(tmp_path),
            "--",
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(WORKERS),
            *worker_args,
            "-b",
            f"127.0.0.1:{listen}",
            "planted:app",
        ],
        cwd=tmp_path,
        env={"PLANTED_DB_URL": database.url},
    )
    wait_listening(run, listen)
    try:
        served = _served_by(f"http://127.0.0.1:{listen}")
    finally:
        children = descendants(run.pid)
        _, err = interrupt(run, stop)

    assert run.returncode == 0, err
    assert len(served) == WORKERS, f"one worker answered all {sum(served.values())}: {served}"
    assert alive(children) == []
    report = read_report(tmp_path)
    # each worker's requests, exactly as many as it answered (the master scoped none)
    scoped = {w["pid"]: w["scopes"] for w in report["workers"] if w["scopes"]}
    assert scoped == dict(served), (scoped, served, err)
    assert [(e["name"], e["count"]) for e in report["endpoints"]] == [
        (ROUTES[kind], sum(served.values()))
    ]
    # each worker's engine was metered, and every request's checkout counted
    pools = [p for p in report["pools"] if p["pid"] in served]
    assert {p["pid"] for p in pools} == set(served), report["pools"]
    assert sum(p["checkouts"] for p in pools) == sum(served.values())
    assert report["uninstrumented"] == []
    assert "hotpath-report.json" in err
