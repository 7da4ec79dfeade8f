"""``hotpath run -- uvicorn planted:app --workers 2``: a FastAPI app with four planted
problems, unmodified, under a bounded loopback load; real PostgreSQL, a real HTTP stub, real
uvicorn processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from hotpath.testing import ModuleDatabase
from tests.helpers import alive

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

PLANTED = textwrap.dedent(
    '''
    """A FastAPI app with four problems planted in it (hotpath run must find each)."""

    import os
    import time

    import httpx
    from fastapi import FastAPI
    from sqlalchemy import ForeignKey, create_engine, select, text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
    from sqlalchemy.pool import NullPool


    class Base(DeclarativeBase):
        pass


    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        orders: Mapped[list["Order"]] = relationship()


    class Order(Base):
        __tablename__ = "orders"
        id: Mapped[int] = mapped_column(primary_key=True)
        customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))


    engine = create_engine(os.environ["PLANTED_DB_URL"])
    per_request = create_async_engine(os.environ["PLANTED_ASYNC_DB_URL"], poolclass=NullPool)
    payments = httpx.AsyncClient(base_url=os.environ["PLANTED_STUB_URL"], timeout=5)
    app = FastAPI()


    @app.get("/customers/orders")
    def orders() -> dict[str, int]:
        with Session(engine) as session:
            customers = session.scalars(select(Customer)).all()
            return {"orders": sum([len(c.orders) for c in customers])}  # PLANT: n_plus_one


    @app.get("/users/{user_id}/profile")
    async def profile(user_id: int) -> dict[str, int]:
        await payments.get(f"/balance?user={user_id}")  # PLANT: sequential_io
        await payments.get(f"/invoices?user={user_id}")
        await payments.get(f"/cards?user={user_id}")
        return {"user": user_id}


    @app.get("/report")
    async def report() -> dict[str, int]:
        time.sleep(0.05)  # PLANT: blocking_call
        return {"ok": 1}


    @app.get("/ping")
    async def ping() -> dict[str, int]:
        async with per_request.connect() as conn:  # PLANT: connection_setup
            await conn.execute(text("SELECT 1"))
        return {"ok": 1}
    '''
)
CLEAN = textwrap.dedent(
    """
    import os

    from fastapi import FastAPI
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["PLANTED_DB_URL"])
    app = FastAPI()


    @app.get("/count")
    def count() -> dict[str, int]:
        with engine.connect() as conn:
            return {"n": conn.execute(text("SELECT count(*) FROM customers")).scalar_one()}
    """
)
ENDPOINTS = {
    "n_plus_one": "GET /customers/orders",
    "sequential_io": "GET /users/{user_id}/profile",
    "blocking_call": "GET /report",
    "connection_setup": "GET /ping",
}


@pytest.fixture(scope="module")
def database(hotpath_db: ModuleDatabase) -> ModuleDatabase:
    engine = create_engine(hotpath_db.url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id int PRIMARY KEY)"))
        conn.execute(
            text("CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers)")
        )
        conn.execute(text("INSERT INTO customers SELECT g FROM generate_series(1, 10) g"))
        conn.execute(text("INSERT INTO orders SELECT g, 1 + g % 10 FROM generate_series(1, 20) g"))
    engine.dispose()
    return hotpath_db


def _env(database: ModuleDatabase, payments_url: str) -> dict[str, str]:
    return {
        "PLANTED_DB_URL": database.url,
        "PLANTED_ASYNC_DB_URL": database.async_url,
        "PLANTED_STUB_URL": payments_url,
    }


def _paths() -> list[str]:
    rounds = 10
    return [
        path
        for i in range(rounds)
        for path in ("/customers/orders", f"/users/{i}/profile", "/report", "/ping")
    ]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_planted_app_under_two_workers_is_diagnosed_once_per_problem(
    tmp_path: Path, database: ModuleDatabase, payments_url: str, stop: signal.Signals
) -> None:
    (tmp_path / "planted.py").write_text(PLANTED)
    reports = tmp_path / "reports"
    listen = port()
    run = hotpath_run(
        [
            "--report-dir",
            str(reports),
            "--budget-ms",
            "20",
            "--",
            sys.executable,
            "-m",
            "uvicorn",
            "planted:app",
            "--workers",
            "2",
            "--port",
            str(listen),
        ],
        cwd=tmp_path,
        env=_env(database, payments_url),
    )
    wait_listening(run, listen)
    sent = load(run, f"http://127.0.0.1:{listen}", _paths())
    children = descendants(run.pid)
    _, err = interrupt(run, stop)

    assert run.returncode == 0, err
    assert children, "uvicorn's master and workers ran under hotpath run"
    assert alive(children) == []  # Ctrl-C left no process behind
    report = read_report(reports)
    assert (reports / "hotpath-report.html").exists()

    # every request is in the merged report once, whichever worker served it: each worker
    # wrote its final state as it left (uvicorn re-raises the SIGTERM its master sends it
    # after restoring the handler it found: the agent's, not the default's silent death)
    workers = [w for w in report["workers"] if w["scopes"]]
    assert len(report["workers"]) == 2
    assert [w["final"] for w in report["workers"]] == [True, True], err
    assert sum(w["scopes"] for w in report["workers"]) == sent, err
    assert sum(e["count"] for e in report["endpoints"]) == sent
    assert {e["name"] for e in report["endpoints"]} == set(ENDPOINTS.values())
    assert workers

    # each planted problem once in the app's top fixes, at its endpoint and line
    for kind, endpoint in ENDPOINTS.items():
        planted = f"planted.py:{planted_line(PLANTED, kind)}"
        found = [
            f
            for f in report["top_fixes"]
            if f["kind"] == kind and site_line(f["call_site"]) == planted
        ]
        assert len(found) == 1, (kind, report["top_fixes"])
        assert endpoint in found[0]["endpoint"].split(", "), found
        endpoint_kinds = Counter(
            f["kind"] for e in report["endpoints"] if e["name"] == endpoint for f in e["fixes"]
        )
        assert endpoint_kinds[kind] >= 1, (endpoint, endpoint_kinds)
    # the engines' pools were metered, and nothing failed to instrument
    kinds = {p["kind"] for p in report["pools"]}
    assert "NullPool" in kinds, report["pools"]
    assert any(kind.endswith("QueuePool") for kind in kinds), report["pools"]
    # metered from the first request on: every checkout of the load is counted
    assert sum(p["checkouts"] for p in report["pools"]) >= 2 * 10, report["pools"]
    assert report["uninstrumented"] == []
    # the diagnosis was printed (the fixes, then the endpoints' table)
    assert "Fix first" in err
    assert "hotpath-report.json" in err


@pytest.mark.slow
@pytest.mark.parametrize(("app", "expected"), [("planted", 1), ("clean", 0)])
def test_fail_on_n_plus_one_fails_the_planted_app_only(
    tmp_path: Path, database: ModuleDatabase, payments_url: str, app: str, expected: int
) -> None:
    (tmp_path / "planted.py").write_text(PLANTED)
    (tmp_path / "clean.py").write_text(CLEAN)
    listen = port()
    run = hotpath_run(
        [
            "--report-dir",
            str(tmp_path),
            "--fail-on",
            "n_plus_one",
            "--",
            sys.executable,
            "-m",
            "uvicorn",
            f"{app}:app",
            "--port",
            str(listen),
        ],
        cwd=tmp_path,
        env=_env(database, payments_url),
    )
    wait_listening(run, listen)
    load(
        run,
        f"http://127.0.0.1:{listen}",
        ["/customers/orders" if app == "planted" else "/count"] * 3,
    )
    _, err = interrupt(run)
    assert run.returncode == expected, err
    assert ("--fail-on: " in err) == bool(expected), err
    assert read_report(tmp_path)["exit_code"] == 0  # uvicorn itself ended well


CRASHING = 'raise RuntimeError("planted: the app cannot start")\n'


@pytest.mark.slow
def test_an_app_crashing_at_import_keeps_its_own_error_and_exit_code(tmp_path: Path) -> None:
    (tmp_path / "crashing.py").write_text(CRASHING)
    command = [sys.executable, "-m", "uvicorn", "crashing:app", "--port", str(port())]
    plain = subprocess.run(
        command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    run = hotpath_run(["--report-dir", str(tmp_path), "--", *command], cwd=tmp_path)
    out, err = run.communicate(timeout=60)

    assert plain.returncode != 0
    assert run.returncode == plain.returncode
    assert out == plain.stdout
    plain_lines = plain.stderr.splitlines()
    lines = err.splitlines()
    assert lines[: len(plain_lines)] == plain_lines  # the app's own error, untouched
    assert len(lines) - len(plain_lines) <= 1, lines[len(plain_lines) :]
    assert "planted: the app cannot start" in err
