"""Every process of a run leaves a FINAL state: after the requests in flight on its other
threads concluded, written before a fatal signal's default action; a process that could not
write one (killed) is named in the report. Real PostgreSQL, real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from hotpath.run._options import RunOptions
from hotpath.testing import ModuleDatabase

from .conftest import hotpath_run, read_report

IN_FLIGHT = textwrap.dedent(
    """
    import os
    import signal
    import sys
    import threading

    from flask import Flask
    from sqlalchemy import create_engine, text
    from werkzeug.test import EnvironBuilder

    engine = create_engine(os.environ["PLANTED_DB_URL"])
    app = Flask(__name__)


    def main_thread_writes_its_final_state() -> bool:
        frame = sys._current_frames().get(threading.main_thread().ident)
        while frame is not None:
            if frame.f_code.co_name == "write_final":
                return True
            frame = frame.f_back
        return False


    @app.get("/checkout")
    def checkout():
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        os.kill(os.getpid(), signal.SIGTERM)  # a deploy stops the server mid-request
        # the response is made only once the process handles the signal
        while not main_thread_writes_its_final_state():
            threading.Event().wait(0.01)
        return {"ok": 1}


    def serve() -> None:  # a server's request thread: it sends each chunk as it is made
        body = app(EnvironBuilder(path="/checkout").get_environ(), lambda *_: None)
        try:
            for chunk in body:  # the request concludes as the body runs out, after the last
                os.write(1, chunk)
        finally:
            body.close()


    threading.Thread(target=serve, daemon=True).start()
    threading.Event().wait()  # the main thread idles, as a server's does
    """
)

KILLED = textwrap.dedent(
    """
    import os
    import signal
    import threading
    from pathlib import Path

    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["PLANTED_DB_URL"])
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    state = Path(os.environ["HOTPATH_RUN_DIR"], f"worker-{os.getpid()}.json")
    while not state.exists():  # its first state (written every second)
        threading.Event().wait(0.05)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.fixture(scope="module")
def database(hotpath_db: ModuleDatabase) -> ModuleDatabase:
    engine = create_engine(hotpath_db.url)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    engine.dispose()
    return hotpath_db


def _run_script(tmp_path: Path, source: str, database: ModuleDatabase) -> tuple[int, str, str]:
    (tmp_path / "script.py").write_text(source)
    command = [sys.executable, "-m", "hotpath", "run", "--report-dir", str(tmp_path)]
    done = subprocess.run(
        [*command, "--", sys.executable, "script.py"],
        check=False,
        cwd=tmp_path,
        env={**os.environ, "PLANTED_DB_URL": database.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
@pytest.mark.faults
def test_sigterm_mid_request_writes_the_final_state_once_the_request_concluded(
    tmp_path: Path, database: ModuleDatabase
) -> None:
    code, out, err = _run_script(tmp_path, IN_FLIGHT, database)

    assert code == 128 + signal.SIGTERM, err  # it died of SIGTERM, as without hotpath
    assert out == '{"ok":1}\n', err  # the response of the request in flight was made
    report = read_report(tmp_path)
    assert [(w["scopes"], w["final"]) for w in report["workers"]] == [(1, True)], err
    assert [(e["name"], e["count"]) for e in report["endpoints"]] == [("GET /checkout", 1)]
    assert report["uninstrumented"] == []


@pytest.mark.slow
@pytest.mark.faults
def test_a_process_killed_before_its_final_state_is_named_in_the_report(
    tmp_path: Path, database: ModuleDatabase
) -> None:
    code, _, err = _run_script(tmp_path, KILLED, database)

    assert code == 128 + signal.SIGKILL, err
    report = read_report(tmp_path)
    [worker] = report["workers"]
    assert worker["final"] is False
    assert report["uninstrumented"] == [
        {
            "what": f"worker {worker['pid']} (script.py)",
            "why": "it ended without writing its final state (killed?): what it recorded "
            "after its last state, written every second, is missing",
            "pids": [],
        }
    ]


@pytest.mark.slow
def test_a_command_that_ignores_the_stop_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    """hotpath run never waits forever: a command hung in its shutdown (here: one that
    ignores SIGINT) is killed with its group once the grace period (``--stop-grace``, 30 s
    by default) has passed, and the report is still written."""
    grace_s = 2.0
    (tmp_path / "stubborn.py").write_text(
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    options = ["--report-dir", str(tmp_path), "--stop-grace", str(grace_s)]
    run = hotpath_run([*options, "--", sys.executable, "stubborn.py"], cwd=tmp_path)
    assert run.stdout is not None
    assert run.stdout.readline().strip() == "ready"
    started = time.monotonic()
    run.send_signal(signal.SIGINT)
    run.communicate(timeout=60)
    waited = time.monotonic() - started
    assert grace_s <= waited < RunOptions.stop_grace_s  # its grace period, not the default
    assert (tmp_path / "hotpath-report.json").exists()
