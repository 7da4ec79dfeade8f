"""A tiny end-to-end demo run: the ladder climbs, each step chosen by observe's diagnosis of
the run before, and the report (HTML, JSON, 80-column text) shows it."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from hotpath.demo._ladder import Ladder, ladder_dict, ladder_lines
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
        hotpath_local_stack,
        "tiny",
        duration_s=2,
        concurrency=4,
        progress=lambda message: None,
        ladder=True,
        max_steps=3,  # what the tests check shows by then; each step is a server and a load
    )


def _ladder(result: DemoResult) -> Ladder:
    assert result.ladder is not None
    return result.ladder


def test_the_ladder_applies_one_diagnosed_fix_a_step(result: DemoResult) -> None:
    ladder = _ladder(result)
    naive = ladder.steps[0]
    assert naive.run.label == "naive"
    assert naive.applied is None
    assert len(ladder.steps) >= 3  # the naive shop has more than two planted problems
    for before, step in zip(ladder.steps, ladder.steps[1:], strict=False):
        assert step.applied is not None
        assert step.because is not None
        assert step.because.fix == step.applied
        assert step.because.kind  # what the diagnosis named
        assert before.run.report["top_fixes"] or before.run.report["endpoints"]
        # exactly one fix more than the step before
        on = {name for name, value in vars(step.fixes).items() if value}
        was = {name for name, value in vars(before.fixes).items() if value}
        assert on - was == {step.applied}
        assert was <= on
    # each step applies what the diagnosis of the step before ranked first, over every fix
    # left (which one at this tiny scale depends on the machine: the database's N+1s and
    # missing indexes, the connections, or the risk check on a busy loop)
    for step in ladder.steps[1:]:
        assert step.because is not None
        if step.because.ranking:  # else no finding mapped: the endpoints' bottlenecks chose
            assert step.because.ranking[0] == (step.applied, step.because.saving_ms)
    assert ladder.steps[1].applied in ("eager", "indexes", "pool", "offload")
    assert ladder.stop
    assert result.runs == [step.run for step in ladder.steps]


def test_every_step_keeps_read_your_writes_and_serves_without_errors(result: DemoResult) -> None:
    for run in result.runs:
        assert run.load.requests > 0, run.label
        assert run.load.stale_reads == 0, run.label
        assert run.server_errors == [], run.label
    naive, last = result.runs[0], result.runs[-1]
    orders = "GET /users/{user_id}/orders"
    assert naive.queries_per_request[orders] > 3 >= last.queries_per_request[orders]


def test_the_ladder_json_has_each_step_with_its_diagnosis(
    result: DemoResult, tmp_path: Path
) -> None:
    ladder = _ladder(result)
    written = json.loads(json.dumps(ladder_dict(ladder)))
    steps = written["steps"]
    assert len(steps) == len(ladder.steps)
    for index, step in enumerate(steps):
        for key in ("diagnosis", "fix", "requests_per_s", "p50_ms", "p95_ms", "p99_ms"):
            assert key in step
        assert step["requests_per_s"] > 0
        assert set(step["breakdown_ms"]) <= {
            "connect",
            "pool_wait",
            "db",
            "redis",
            "http",
            "blocked",
            "other",
        }
        if index:
            assert step["diagnosis"]["fix"] == step["fix"]
            assert step["diagnosis"]["evidence"]  # the figures behind what it named
    assert steps[0]["diagnosis"] is None
    assert steps[0]["fix"] is None
    assert written["published"][0]["technique"] == "connection pooling"


def test_the_ladder_reads_in_80_columns(result: DemoResult) -> None:
    lines = ladder_lines(_ladder(result))
    console = Console(width=80, file=io.StringIO(), record=True)
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    shown = console.export_text().splitlines()
    assert max(len(line) for line in shown) <= 80
    assert "…" not in "".join(shown)
    assert any(line.startswith("step 1: +") for line in shown)
    assert any(line.startswith("  why:") for line in shown)


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
    assert outline.sections == ["ladder", "summary", "charts", "endpoints", "fixes", "published"]
    assert html.count('class="bar"') == len(_ladder(result).steps)  # a stacked bar a step
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
