"""The live page in headless Chromium, served by uvicorn on loopback from a planted run."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from hotpath.dashboard import DashboardApp, hotpath_dashboard

from .conftest import HEALTH, ORDERS, REPORT, Planted

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium (make system-deps installs it)"
)
SCREENSHOT = Path("/tmp/hotpath-dashboard.png")  # kept after the run: the docs describe it


@dataclass
class Served:
    url: str
    app: DashboardApp
    polls: list[int]  # requests served by the app before each poll's state


@pytest.fixture(scope="module")
def served(planted: Planted) -> Iterator[Served]:
    """The dashboard of the planted run; every poll first serves one more round of requests,
    so each poll sees a run that changed since the last."""
    polls: list[int] = []

    def source() -> dict[str, Any]:
        planted.serve(1)
        state = planted.state()
        polls.append(sum(e["count"] for e in state["report"]["endpoints"]))
        return state

    planted.serve(2)
    app = hotpath_dashboard(source)
    # the socket is bound and listening before the server starts: a browser that connects
    # first waits in the backlog, no readiness polling needed
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{port}/", app, polls)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _chromium(
    tmp_path: Path, url: str, *extra: str, virtual_ms: int = 7000
) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            # virtual time runs the page's timers (its 2 s polls) as fast as the fetches allow
            f"--virtual-time-budget={virtual_ms}",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class _Text(HTMLParser):
    """The page's text by element id, and its <body> attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.stack: list[str | None] = []
        self.by_id: dict[str, list[str]] = {}
        self.canvases = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "body":
            self.body = found
        self.canvases += tag == "canvas"
        if tag in ("meta", "link", "br", "input", "img", "col", "hr", "source"):
            return
        self.stack.append(found.get("id"))

    def handle_endtag(self, tag: str) -> None:
        if self.stack and tag not in ("meta", "link", "br", "input", "img", "col", "hr"):
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for element in self.stack:
            if element:
                self.by_id.setdefault(element, []).append(data)

    def text(self, element: str) -> str:
        return " ".join(" ".join(self.by_id.get(element, [])).split())


def _console_errors(stderr: str) -> list[str]:
    # console messages (errors, CSP refusals) and uncaught exceptions, as Chromium logs them
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def test_page_loads_shows_the_planted_run_and_updates_itself(
    served: Served, tmp_path: Path
) -> None:
    run = _chromium(tmp_path, served.url, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_errors(run.stderr) == []
    page = _Text()
    page.feed(run.stdout)
    polls = int(page.body.get("data-polls") or 0)
    assert polls >= 2, "the page did not refresh itself"  # it polled, and redrew each time
    table = page.text("endpoint-table")
    for name in (ORDERS, REPORT, HEALTH):
        assert name in table
    # the requests the page shows are those of the last state it read: it updated itself
    requests = int(re.search(r"([\d,]+) requests", page.text("run")).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert requests == served.polls[-1]
    assert requests > served.polls[0]
    fixes = page.text("fix-list")
    assert "selectinload(User.orders)" in fixes
    assert "CREATE INDEX CONCURRENTLY ON events (customer_id);" in fixes
    queries = page.text("query-list")
    assert "sequential scan of events" in queries  # the slow query's plan flag
    assert "FROM orders" in queries  # the N+1's SQL
    assert "app" in page.text("pool-box")
    assert "shop" in page.text("cache-box")
    assert "replica1" in page.text("replica-box")
    assert "payments" in page.text("breaker-box")
    assert "open" in page.text("breaker-box")
    assert "events_kind_idx" in page.text("doctor-box")
    assert "sqlite" in page.text("uninstrumented-box")
    # uPlot drew the charts: layers by endpoint, p95 and throughput over time, layers over time
    assert page.canvases >= 4


def test_screenshot(served: Served, tmp_path: Path) -> None:
    run = _chromium(tmp_path, served.url, f"--screenshot={SCREENSHOT}", "--window-size=1440,4400")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_errors(run.stderr) == []
    assert SCREENSHOT.stat().st_size > 50_000  # a drawn page, not a blank one
