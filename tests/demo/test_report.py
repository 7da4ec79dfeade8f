"""A tiny end-to-end demo run: the before/after is measured and the report is valid HTML."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hotpath.demo._process import ShopServer
from hotpath.demo._report import render_html
from hotpath.demo._runner import DemoResult, run_shop
from hotpath.stack import LocalStack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Outline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.svgs = 0
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.sections.append(dict(attrs).get("id") or "")
        self.svgs += tag == "svg"
        if tag not in ("meta", "rect", "line", "polyline", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("rect", "line", "polyline"):
            return
        assert self.open, f"</{tag}> closes nothing"
        assert self.open[-1] == tag, f"</{tag}> closes <{self.open[-1]}>"
        self.open.pop()


@pytest.fixture(scope="module")
def result(hotpath_local_stack: LocalStack) -> DemoResult:
    return run_shop(
        hotpath_local_stack, "tiny", duration_s=2, concurrency=4, progress=lambda message: None
    )


def test_the_run_measures_both_configurations(result: DemoResult) -> None:
    naive, optimized = result.runs
    assert naive.label == "naive"
    assert naive.load.requests > 0
    assert optimized.load.requests > 0
    assert naive.load.stale_reads == optimized.load.stale_reads == 0
    assert optimized.connections_opened < naive.connections_opened  # the pool reuses them
    orders = "GET /users/{user_id}/orders"
    assert naive.queries_per_request[orders] > 3 >= optimized.queries_per_request[orders]
    assert naive.cache_hit_rates is None
    hits = optimized.cache_hit_rates
    assert hits is not None
    # the share depends on how many requests a loaded machine sends in the run: asserted
    # is that the cache answered reads, not how many
    assert hits[0] + hits[1] > 0
    assert naive.server_errors == optimized.server_errors == []


def test_server_errors_are_read_from_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    trace = (
        "Traceback (most recent call last):\n"
        '  File "app.py", line 3, in handler\n'
        "    boom()\n"
        "{error}\n"
    )
    log.write_text(
        "INFO: started\n"
        + trace.format(error="ZeroDivisionError: division by zero")
        + trace.format(error="KeyError: 'sku'")
        + trace.format(error="ZeroDivisionError: division by zero")
    )
    server = ShopServer("http://127.0.0.1:1", log)
    assert server.errors() == ["ZeroDivisionError: division by zero", "KeyError: 'sku'"]


def test_the_index_fix_uses_what_hotpath_advise_found_in_the_naive_run(
    result: DemoResult,
) -> None:
    # the statements the naive run recorded in pg_stat_statements lead to these
    assert any(ddl.startswith("CREATE INDEX ON orders (user_id") for ddl in result.indexes)
    assert any(ddl.startswith("CREATE INDEX ON order_items (order_id") for ddl in result.indexes)
    assert not any("$" in ddl for ddl in result.indexes)  # no pg_stat_statements placeholders


def test_report_is_valid_html_with_every_section(result: DemoResult, tmp_path: Path) -> None:
    html = render_html(result)
    outline = _Outline()
    outline.feed(html)
    outline.close()
    assert outline.sections == ["summary", "charts", "endpoints", "fixes", "published"]
    assert "cache hits L1 / Redis" in html
    assert outline.svgs >= 4
    assert outline.open == []  # every element closed
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no assets


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make system-deps installs it)")
def test_report_renders_in_headless_chromium_without_console_errors(
    result: DemoResult, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(result))
    run = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'id="summary"' in run.stdout  # the DOM chromium built from the file
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert console == []
