"""What a run leaves behind: the diagnosis printed, ``hotpath-report.json`` (the merged
``Report.to_dict()`` plus workers, pools, caches, replicas, breakers, doctor's findings and
what was not instrumented), ``hotpath-report.html``, and the ``--fail-on`` verdict."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console
from rich.markup import escape

from ._options import BUDGET

if TYPE_CHECKING:
    from ..observe import Report

JSON_NAME = "hotpath-report.json"
HTML_NAME = "hotpath-report.html"


def report_document(state: dict[str, Any], command: list[str], exit_code: int) -> dict[str, Any]:
    """The JSON file: the merged report's own keys first (``endpoints``, ``top_fixes``,
    ``functions``), then the rest of the RUN STATE."""
    rest = {key: value for key, value in state.items() if key != "report"}
    return {**state["report"], "command": command, "exit_code": exit_code, **rest}


def write_reports(report_dir: Path, report: Report, document: dict[str, Any]) -> tuple[Path, Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = report_dir / JSON_NAME, report_dir / HTML_NAME
    _write_atomically(json_path, orjson.dumps(document, option=orjson.OPT_INDENT_2, default=str))
    _write_atomically(html_path, _html(report, document).encode())
    return json_path, html_path


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def recorded_anything(report: Report) -> bool:
    return bool(report.scopes or report.functions)


def print_diagnosis(
    console: Console, report: Report, document: dict[str, Any], paths: tuple[Path, Path]
) -> None:
    """The ranked fixes and the per-endpoint table (``Report.print``), then what the run
    adds: workers, pools, doctor's findings, what was not instrumented, where the files are."""
    report.print(console)
    workers = document["workers"]
    scopes = sum(w.get("scopes", 0) for w in workers)
    console.print(f"workers: {len(workers)} process(es), {scopes} request(s)/test(s) scoped")
    for pool in document["pools"]:
        wait = pool.get("acquire_wait") or {}
        console.print(
            escape(
                f"pool {pool['name']} ({pool['kind']}, pid {pool['pid']}): {pool['checkouts']} "
                f"checkouts, {pool['connects']} connects, acquire wait p99 "
                f"{wait.get('p99', 0.0):.1f} ms, timeouts {pool.get('timeouts') or 0}"
            )
        )
    for finding in document["doctor"]:
        console.print(
            escape(f"doctor [{finding['severity']}] {finding['check']}: {finding['message']}")
        )
    for item in document["uninstrumented"]:
        console.print(escape(f"not instrumented: {item['what']}: {item['why']}"), soft_wrap=True)
    console.print(escape(f"report: {paths[0]} and {paths[1]}"), soft_wrap=True)


def one_line(report: Report, document: dict[str, Any], paths: tuple[Path, Path]) -> str:
    """What hotpath adds when the run recorded nothing (an app that failed to start): one
    line, so that the app's own error stays what the user reads."""
    missing = len(document["uninstrumented"])
    extra = f"; {missing} thing(s) not instrumented" if missing else ""
    return f"hotpath run: nothing was recorded{extra}; report: {paths[0]}"


def fail_on_hits(report: Report, fail_on: tuple[str, ...]) -> list[str]:
    """One line per ``--fail-on`` kind found in the merged report."""
    hits = []
    for kind in fail_on:
        if kind == BUDGET:
            missed = [s for s in report.scopes if s.p95_ms > s.budget_ms]
            if missed:
                names = ", ".join(f"{s.name} (p95 {s.p95_ms:.1f} ms)" for s in missed[:5])
                hits.append(f"{len(missed)} endpoint(s) over their p95 budget: {names}")
            continue
        fixes = [f for s in report.scopes for f in s.fixes if f.kind == kind]
        if fixes:
            where = ", ".join(f"{f.endpoint} at {f.call_site or '?'}" for f in fixes[:5])
            hits.append(f"{len(fixes)} {kind} finding(s): {where}")
    return hits


def _html(report: Report, document: dict[str, Any]) -> str:
    page = report.to_html("hotpath run: diagnosis")
    esc = html.escape
    sections = []

    def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
        if not rows:
            return
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>" for row in rows
        )
        sections.append(f"<h2>{esc(title)}</h2><table><tr>{head}</tr>{body}</table>")

    table(
        "Not instrumented",
        ["what", "why", "pids"],
        [[i["what"], i["why"], ", ".join(map(str, i["pids"]))] for i in document["uninstrumented"]],
    )
    table(
        "Workers",
        ["pid", "command", "requests/tests scoped"],
        [[w["pid"], " ".join(w["argv"]), w["scopes"]] for w in document["workers"]],
    )
    table(
        "Pools",
        ["pid", "pool", "kind", "checkouts", "connects", "acquire wait p99 ms", "timeouts"],
        [
            [
                p["pid"],
                p["name"],
                p["kind"],
                p["checkouts"],
                p["connects"],
                f"{(p.get('acquire_wait') or {}).get('p99', 0.0):.1f}",
                p.get("timeouts") or 0,
            ]
            for p in document["pools"]
        ],
    )
    table(
        "Caches",
        ["pid", "namespace", "hit ratio", "hits", "misses", "stampede joins"],
        [
            [
                c["pid"],
                c["namespace"],
                f"{c['hit_ratio']:.0%}",
                c["hits"],
                c["misses"],
                c.get("stampede_joins", 0),
            ]
            for c in document["caches"]
        ],
    )
    table(
        "Replicas",
        ["pid", "set", "node", "role", "healthy", "lag s", "reads"],
        [
            [r["pid"], r["name"], n["name"], n["role"], n["healthy"], n["lag_s"], n["reads"]]
            for r in document["routing"]
            for n in r["nodes"]
        ],
    )
    table(
        "Circuit breakers",
        ["pid", "name", "state", "successes", "failures", "rejected", "opened"],
        [
            [
                b["pid"],
                b["name"],
                b["state"],
                b["successes"],
                b["failures"],
                b["rejected"],
                b["opened"],
            ]
            for b in document["breakers"]
        ],
    )
    table(
        "Database (hotpath doctor)",
        ["severity", "check", "object", "finding", "fix"],
        [
            [f["severity"], f["check"], f["object"], f["message"], f.get("fix") or ""]
            for f in document["doctor"]
        ],
    )
    return page.replace("</body></html>", "".join(sections) + "</body></html>")
