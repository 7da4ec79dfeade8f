"""``hotpath run`` with Flask's own server, plain scripts, SIGTERM, and bad options."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from hotpath.stack._process import free_ports
from hotpath.testing import ModuleDatabase
from tests.helpers import alive, eventually

from .conftest import (
    descendants,
    hotpath_run,
    interrupt,
    load,
    planted_line,
    port,
    read_report,
    site_line,
    wait_listening,
)

PLANTED_FLASK = textwrap.dedent(
    """
    import os

    from flask import Flask
    from sqlalchemy import ForeignKey, create_engine, select
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship


    class Base(DeclarativeBase):
        pass


    class Author(Base):
        __tablename__ = "authors"
        id: Mapped[int] = mapped_column(primary_key=True)
        books: Mapped[list["Book"]] = relationship()


    class Book(Base):
        __tablename__ = "books"
        id: Mapped[int] = mapped_column(primary_key=True)
        author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))


    engine = create_engine(os.environ["PLANTED_DB_URL"])
    app = Flask(__name__)


    @app.get("/authors/<int:page>")
    def authors(page):
        with Session(engine) as session:
            found = session.scalars(select(Author)).all()
            return {"books": sum([len(a.books) for a in found])}  # PLANT: n_plus_one
    """
)


@pytest.fixture(scope="module")
def database(hotpath_db: ModuleDatabase) -> ModuleDatabase:
    engine = create_engine(hotpath_db.url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE authors (id int PRIMARY KEY)"))
        conn.execute(text("CREATE TABLE books (id int PRIMARY KEY, author_id int)"))
        conn.execute(text("INSERT INTO authors SELECT g FROM generate_series(1, 6) g"))
        conn.execute(text("INSERT INTO books SELECT g, 1 + g % 6 FROM generate_series(1, 12) g"))
    engine.dispose()
    return hotpath_db


@pytest.mark.slow
def test_flask_run_is_diagnosed_by_route(tmp_path: Path, database: ModuleDatabase) -> None:
    (tmp_path / "planted_flask.py").write_text(PLANTED_FLASK)
    listen = port()
    run = hotpath_run(
        [
            "--report-dir",
            str(tmp_path),
            "--",
            sys.executable,
            "-m",
            "flask",
            "--app",
            "planted_flask",
            "run",
            "--port",
            str(listen),
        ],
        cwd=tmp_path,
        env={"PLANTED_DB_URL": database.url},
    )
    wait_listening(run, listen)
    sent = load(run, f"http://127.0.0.1:{listen}", [f"/authors/{i}" for i in range(8)])
    children = descendants(run.pid)
    _, err = interrupt(run)

    assert alive(children) == []
    report = read_report(tmp_path)
    assert [(e["name"], e["count"]) for e in report["endpoints"]] == [
        ("GET /authors/<int:page>", sent)
    ]
    assert sum(w["scopes"] for w in report["workers"]) == sent
    found = [f for f in report["top_fixes"] if f["kind"] == "n_plus_one"]
    assert len(found) == 1, report["top_fixes"]
    line = planted_line(PLANTED_FLASK, "n_plus_one")
    assert site_line(found[0]["call_site"]) == f"planted_flask.py:{line}"
    assert "Fix first" in err


SERVED_AS_GUNICORN = textwrap.dedent(
    """
    from flask import Flask
    from werkzeug.test import EnvironBuilder

    from hotpath.run import _agent

    app = Flask(__name__)


    @app.get("/books/<int:book>")
    def book(book):
        return {"book": book}


    served = _agent.RunWSGI(app, _agent.current())  # what gunicorn's Worker.wsgi is set to
    for i in range(3):
        body = served(EnvironBuilder(path=f"/books/{i}").get_environ(), lambda *_: None)
        try:
            b"".join(body)
        finally:
            body.close()
    """
)


@pytest.mark.slow
def test_a_flask_app_served_as_gunicorn_serves_it_is_scoped_once_per_request(
    tmp_path: Path,
) -> None:
    # the Flask app's own __call__ is hooked too (``flask run``): called by the run's WSGI
    # wrapper, it must find the request scoped already
    (tmp_path / "script.py").write_text(SERVED_AS_GUNICORN)
    run = hotpath_run(
        ["--report-dir", str(tmp_path), "--", sys.executable, "script.py"], cwd=tmp_path
    )
    _, err = run.communicate(timeout=120)

    assert run.returncode == 0, err
    report = read_report(tmp_path)
    assert [(e["name"], e["count"]) for e in report["endpoints"]] == [("GET /books/<int:book>", 3)]
    assert [w["scopes"] for w in report["workers"]] == [3]


SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["PLANTED_DB_URL"])
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    print("ready", flush=True)
    sys.stdin.readline()  # until the test ends it
    """
)

SCRIPT_CMD = [sys.executable, "script.py"]


@pytest.mark.slow
def test_sigterm_reaches_a_plain_script_and_the_report_is_written(
    tmp_path: Path, database: ModuleDatabase
) -> None:
    (tmp_path / "script.py").write_text(SCRIPT)
    run = subprocess.Popen(
        [sys.executable, "-m", "hotpath", "run", "--report-dir", str(tmp_path), "--", *SCRIPT_CMD],
        cwd=tmp_path,
        env={**os.environ, "PLANTED_DB_URL": database.url},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stdout is not None
    assert run.stdout.readline() == "ready\n"
    children = descendants(run.pid)
    _, err = interrupt(run, signal.SIGTERM)

    assert run.returncode == 128 + signal.SIGTERM, err  # the script died of it, as without us
    assert alive(children) == []
    report = read_report(tmp_path)
    # the script's process wrote its state on SIGTERM (Python's default would not have)
    assert [w["argv"] for w in report["workers"]] == [["script.py"]]
    assert report["exit_code"] == 128 + signal.SIGTERM


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sample", "0", "--", "true"], "--sample 0.0"),
        (["--sample", "1.5", "--", "true"], "--sample 1.5"),
        (["--explain", "full", "--", "true"], "--explain 'full'"),
        (["--fail-on", "n_plus_two", "--", "true"], "--fail-on 'n_plus_two'"),
        (["--budget-ms", "-1", "--", "true"], "--budget-ms -1.0"),
        (["--stop-grace", "nan", "--", "true"], "--stop-grace nan"),
        (["--stop-grace", "0", "--", "true"], "--stop-grace 0.0"),
        (["--stop-grace", "1e308", "--", "true"], "--stop-grace 1e+308"),
        (["--dashboard", "localhost:99999", "--", "true"], "--dashboard 'localhost:99999'"),
        (["--metrics", "0", "--", "true"], "--metrics '0'"),
        (["--report-dir", "/dev/null", "--", "true"], "--report-dir '/dev/null'"),
        (["--", "no-such-command-anywhere"], "cannot start 'no-such-command-anywhere'"),
        ([], "give the command to run after --"),
        (["--no-such-option", "--", "true"], "No such option: --no-such-option"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = subprocess.run(  # noqa: PLW1510 - the exit code is the point
        [sys.executable, "-m", "hotpath", "run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


LIVE_APP = textwrap.dedent(
    """
    from fastapi import FastAPI

    app = FastAPI()


    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}
    """
)


@pytest.mark.slow
def test_the_live_page_and_the_metrics_follow_the_run(tmp_path: Path) -> None:
    """--dashboard serves the live page and its state, --metrics the Prometheus exposition,
    both from the workers' merged state while the app runs."""
    (tmp_path / "live.py").write_text(LIVE_APP)
    app_port, page_port, metrics_port = free_ports(3)
    run = hotpath_run(
        [
            "--report-dir",
            str(tmp_path),
            "--dashboard",
            f"127.0.0.1:{page_port}",
            "--metrics",
            str(metrics_port),
            "--",
            sys.executable,
            "-m",
            "uvicorn",
            "live:app",
            "--port",
            str(app_port),
        ],
        cwd=tmp_path,
    )
    try:
        wait_listening(run, app_port)
        wait_listening(run, page_port)
        sent = load(run, f"http://127.0.0.1:{app_port}", [f"/items/{i}" for i in range(12)])
        with httpx.Client(timeout=10) as client:
            page = client.get(f"http://127.0.0.1:{page_port}/")
            assert page.status_code == 200
            assert "uPlot" in page.text or "dashboard" in page.text.lower()

            def served() -> int:
                state = client.get(f"http://127.0.0.1:{page_port}/api/state").json()
                endpoints = state["state"]["report"]["endpoints"]
                return sum(e["count"] for e in endpoints if e["name"] == "GET /items/{item_id}")

            eventually(lambda: served() == sent, 20, "the page's state has every request")
            metrics = client.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        line = next(
            line
            for line in metrics.splitlines()
            if line.startswith("hotpath_endpoint_requests_total")
            and 'endpoint="GET /items/{item_id}"' in line
        )
        assert float(line.rsplit(" ", 1)[1]) == sent
    finally:
        interrupt(run)


SUITE = textwrap.dedent(
    """
    import os

    import pytest
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["PLANTED_DB_URL"])
    app = FastAPI()


    @app.get("/books/{book_id}")
    def book(book_id: int) -> dict[str, int]:
        with engine.connect() as conn:
            for offset in range(6):  # the same statement in a loop, one id at a time
                statement = text("SELECT id FROM books WHERE id = :id")
                conn.execute(statement, {"id": book_id + offset})  # PLANT: n_plus_one
        return {"id": book_id}


    @pytest.mark.parametrize("book_id", [1, 2, 3])
    def test_book(book_id: int) -> None:
        with TestClient(app) as client:
            assert client.get(f"/books/{book_id}").json() == {"id": book_id}


    def test_fails_on_purpose() -> None:
        assert 1 == 2
    """
)


PYTEST_INI = """[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    ignore:Using `httpx` with `starlette.testclient`
"""


@pytest.mark.slow
def test_pytest_passes_and_fails_the_same_with_one_scope_per_test(
    tmp_path: Path, database: ModuleDatabase
) -> None:
    (tmp_path / "test_suite.py").write_text(SUITE)
    # any warning fails the run: hotpath must add none (starlette's own is not ours)
    (tmp_path / "pytest.ini").write_text(PYTEST_INI)
    pytest_command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    env = {**os.environ, "PLANTED_DB_URL": database.url}
    plain = subprocess.run(
        pytest_command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True
    )
    run = hotpath_run(
        ["--report-dir", str(tmp_path), "--", *pytest_command],
        cwd=tmp_path,
        env={"PLANTED_DB_URL": database.url},
    )
    out, _ = run.communicate(timeout=120)

    assert plain.returncode == run.returncode == 1  # one test fails on purpose, in both
    assert "1 failed, 3 passed" in plain.stdout
    assert "1 failed, 3 passed" in out
    report = read_report(tmp_path)
    assert sorted(e["name"] for e in report["endpoints"]) == sorted(
        f"test_suite.py::{name}"
        for name in ("test_book[1]", "test_book[2]", "test_book[3]", "test_fails_on_purpose")
    )
    found = [f for f in report["top_fixes"] if f["kind"] == "n_plus_one"]
    assert len(found) == 1, report["top_fixes"]
    assert site_line(found[0]["call_site"]) == f"test_suite.py:{planted_line(SUITE, 'n_plus_one')}"


def test_the_users_own_sitecustomize_still_runs(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import os\nos.environ['OWN_SITECUSTOMIZE'] = 'ran'\n")
    probe = (
        "import os, sys, sqlalchemy; "
        "print(os.environ.get('OWN_SITECUSTOMIZE'), 'hotpath.run._agent' in sys.modules)"
    )
    run = hotpath_run(
        ["--report-dir", str(tmp_path), "--", sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(own)},
    )
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert out == "ran True\n"  # theirs ran, and hotpath's agent loaded with SQLAlchemy
