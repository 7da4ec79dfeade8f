"""``hotpath run`` options that change what is recorded: ``--sample`` (the share of requests
scoped), ``--db`` (doctor's findings in the report), and the registries of the app's
``hotpath.cache`` caches and ``hotpath.concurrent`` circuit breakers."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from hotpath.testing import ModuleDatabase

from .conftest import hotpath_run, interrupt, load, port, read_report, wait_listening

# --sample: the sampler draws at random per request, so the bounds are wide enough never
# to flake: RATE 0.5 over 400 requests records 200 +- 10 (one standard deviation); 140..260
# is six deviations either way. A request sampled twice (by the server's wrapper, then again
# by the framework's) would record 1 - 0.5**2 = 75% of them (300 +- 9): out of the bounds.
SAMPLE_RATE = 0.5
SAMPLE_REQUESTS = 400
SAMPLE_BOUNDS = (140, 260)

SAMPLED_ASGI = textwrap.dedent(
    """
    from fastapi import FastAPI

    app = FastAPI()


    @app.get("/item/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}
    """
)

# Flask's test client calls the app in this process: no server, only Flask.__call__
SAMPLED_WSGI_SCRIPT = textwrap.dedent(
    f"""
    from flask import Flask

    app = Flask(__name__)


    @app.get("/item/<int:item_id>")
    def item(item_id):
        return {{"id": item_id}}


    client = app.test_client()
    for number in range({SAMPLE_REQUESTS}):
        assert client.get(f"/item/{{number}}").status_code == 200
    """
)


def _assert_sampled(report: dict[str, object], sent: int) -> None:
    workers = report["workers"]
    assert isinstance(workers, list)
    scoped = sum(w["scopes"] for w in workers)
    low, high = SAMPLE_BOUNDS
    assert low <= scoped <= high, f"{scoped} of {sent} requests scoped at --sample {SAMPLE_RATE}"
    endpoints = report["endpoints"]
    assert isinstance(endpoints, list)
    assert sum(e["count"] for e in endpoints) == scoped  # each scoped request once


def test_sample_records_that_share_of_flask_requests(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(SAMPLED_WSGI_SCRIPT)
    run = hotpath_run(
        [
            "--report-dir",
            str(tmp_path),
            "--sample",
            str(SAMPLE_RATE),
            "--",
            sys.executable,
            "script.py",
        ],
        cwd=tmp_path,
    )
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    _assert_sampled(read_report(tmp_path), SAMPLE_REQUESTS)


@pytest.mark.slow
def test_sample_records_that_share_of_requests_served_by_uvicorn(tmp_path: Path) -> None:
    (tmp_path / "sampled.py").write_text(SAMPLED_ASGI)
    listen = port()
    run = hotpath_run(
        [
            "--report-dir",
            str(tmp_path),
            "--sample",
            str(SAMPLE_RATE),
            "--",
            sys.executable,
            "-m",
            "uvicorn",
            "sampled:app",
            "--port",
            str(listen),
            "--no-access-log",
        ],
        cwd=tmp_path,
    )
    wait_listening(run, listen)
    paths = [f"/item/{number}" for number in range(SAMPLE_REQUESTS)]
    sent = load(run, f"http://127.0.0.1:{listen}", paths)
    _, err = interrupt(run)
    assert run.returncode == 0, err
    _assert_sampled(read_report(tmp_path), sent)


# --db: a foreign key without an index, which doctor's fk_without_index check flags
DOCTOR_SUITE = textwrap.dedent(
    """
    import os

    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["PLANTED_DB_URL"])


    def test_reads_orders() -> None:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM planted_orders")).scalar_one() == 0
    """
)


@pytest.fixture(scope="module")
def database(hotpath_db: ModuleDatabase) -> ModuleDatabase:
    engine = create_engine(hotpath_db.url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE planted_customers (id int PRIMARY KEY)"))
        conn.execute(
            text(
                "CREATE TABLE planted_orders (id int PRIMARY KEY,"
                " customer_id int CONSTRAINT planted_orders_customer_fk"
                " REFERENCES planted_customers)"
            )
        )
    engine.dispose()
    return hotpath_db


def test_db_adds_doctors_findings_to_the_report_and_the_output(
    tmp_path: Path, database: ModuleDatabase
) -> None:
    (tmp_path / "test_suite.py").write_text(DOCTOR_SUITE)
    pytest_command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    run = hotpath_run(
        ["--report-dir", str(tmp_path), "--db", database.url, "--", *pytest_command],
        cwd=tmp_path,
        env={"PLANTED_DB_URL": database.url},
    )
    out, err = run.communicate(timeout=120)

    assert run.returncode == 0, out + err
    assert "1 passed" in out
    report = read_report(tmp_path)
    planted = [
        f
        for f in report["doctor"]
        if f["check"] == "fk_without_index" and "planted_orders_customer_fk" in f["object"]
    ]
    assert len(planted) == 1, report["doctor"]
    assert "CREATE INDEX" in planted[0]["fix"]
    assert not [u for u in report["uninstrumented"] if "doctor" in u["what"]]
    # printed with the diagnosis, one line per finding
    printed = [
        line
        for line in err.splitlines()
        if line.startswith("doctor [") and "planted_orders_customer_fk" in line
    ]
    assert len(printed) == 1, err
    assert "fk_without_index" in printed[0]


@pytest.mark.faults
def test_db_that_cannot_be_reached_is_a_note_and_the_command_runs(tmp_path: Path) -> None:
    closed = f"postgresql+psycopg://nobody:nothing@127.0.0.1:{port()}/nowhere"
    probe = "import sqlalchemy; print('ran')"
    run = hotpath_run(
        ["--report-dir", str(tmp_path), "--db", closed, "--", sys.executable, "-c", probe],
        cwd=tmp_path,
    )
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert out == "ran\n"
    report = read_report(tmp_path)
    assert report["doctor"] == []
    assert [u["what"] for u in report["uninstrumented"] if "doctor" in u["what"]] == [
        "doctor (--db)"
    ]


# the registries: a cache and a circuit breaker the app makes, found without a line changed
REGISTRY_SUITE = textwrap.dedent(
    """
    import pytest

    from hotpath.cache import Cache, MemoryTier
    from hotpath.concurrent import CircuitBreaker

    prices = Cache(MemoryTier(), namespace="planted-prices")
    payments = CircuitBreaker(failure_threshold=5, name="planted-payments")


    def load_price() -> int:
        return 42


    def decline() -> None:
        raise ConnectionError("planted: the provider is down")


    def test_cache() -> None:
        for _ in range(3):  # one miss (the load), then two hits
            assert prices.get_or_set("sku-1", load_price) == 42


    def test_breaker() -> None:
        assert payments.call(lambda: "paid") == "paid"
        assert payments.call(lambda: "paid") == "paid"
        with pytest.raises(ConnectionError):
            payments.call(decline)
    """
)


def test_the_apps_caches_and_breakers_are_in_the_report(tmp_path: Path) -> None:
    (tmp_path / "test_registries.py").write_text(REGISTRY_SUITE)
    pytest_command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    run = hotpath_run(["--report-dir", str(tmp_path), "--", *pytest_command], cwd=tmp_path)
    out, err = run.communicate(timeout=120)

    assert run.returncode == 0, out + err
    assert "2 passed" in out
    report = read_report(tmp_path)
    caches = [c for c in report["caches"] if c["namespace"] == "planted-prices"]
    assert len(caches) == 1, report["caches"]
    assert (caches[0]["misses"], caches[0]["hits"]) == (1, 2)
    assert caches[0]["pid"] == report["workers"][0]["pid"]
    breakers = [b for b in report["breakers"] if b["name"] == "planted-payments"]
    assert len(breakers) == 1, report["breakers"]
    assert (breakers[0]["successes"], breakers[0]["failures"]) == (2, 1)
    assert breakers[0]["state"] == "closed"
    html = (tmp_path / "hotpath-report.html").read_text()
    assert "planted-prices" in html
    assert "planted-payments" in html
