"""The demo's self-contained HTML report: one file, inline CSS and SVG, no server needed."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from html import escape

import psutil

from .._charts import bar_chart, line_chart
from ._runner import SUMMARY_HEADERS, DemoResult, RunResult, summary_cells, summary_rows
from .shop.fixes import FIX_DESCRIPTIONS

PERCENTILES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.9)
PUBLISHED = (
    ("connection pooling", "150 ms -> 12 ms per request; 38.56 s -> 3.06 s for a batch"),
    ("N+1 fixed with eager loading", "100+ queries -> 1-3 per request"),
    ("parallel fan-out", "about 3x faster"),
    ("caching", "about 90% of reads served from cache"),
)

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:980px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .6rem;border:1px solid #ddd;
text-align:right}th{background:#f4f6f7}td:first-child,th:first-child{text-align:left}
table.text td{text-align:left}
.muted{color:#777;font-size:.9rem}.better{color:#1e8449;font-weight:600}
"""


def _table(headers: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    attribute = f' class="{css}"' if css else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ratio(value: float, base: float, higher_is_better: bool) -> str:
    if not base or not value:
        return ""
    ratio = value / base if higher_is_better else base / value
    css = ' class="better"' if ratio > 1.05 else ""
    return f" <span{css}>({ratio:.1f}x)</span>"


def _latency_curve(run: RunResult) -> list[tuple[float, float]]:
    timing = run.load.overall_latency()
    return [(p, timing.percentile_ms(p)) for p in PERCENTILES]


def render_html(result: DemoResult) -> str:
    """The whole report as one HTML document."""
    rows = summary_rows(result)
    base = rows[0]
    labels = [run.label for run in result.runs]
    summary = _table(list(SUMMARY_HEADERS), [summary_cells(r, base, _ratio) for r in rows])
    routes = sorted({name for run in result.runs for name in run.load.endpoints})
    first, last = result.runs[0], result.runs[-1]

    def throughput(run: RunResult, route: str) -> float:
        return run.load.throughput(route) if route in run.load.endpoints else 0.0

    def p99(run: RunResult, route: str) -> float:
        stats = run.load.endpoints.get(route)
        return stats.latency.percentile_ms(99) if stats else 0.0

    per_endpoint = _table(
        [
            "endpoint",
            f"{first.label} req/s",
            f"{last.label} req/s",
            f"{first.label} p99 ms",
            f"{last.label} p99 ms",
            f"{first.label} queries",
            f"{last.label} queries",
        ],
        [
            [
                escape(route),
                f"{throughput(first, route):.1f}",
                f"{throughput(last, route):.1f}"
                f"{_ratio(throughput(last, route), throughput(first, route), True)}",
                f"{p99(first, route):.1f}",
                f"{p99(last, route):.1f}{_ratio(p99(last, route), p99(first, route), False)}",
                f"{first.queries_per_request.get(route, 0):.0f}",
                f"{last.queries_per_request.get(route, 0):.0f}",
            ]
            for route in routes
        ],
    )
    charts = [
        bar_chart(
            "Throughput", labels, {"requests/s": [r["requests/s"] for r in rows]}, "requests/s"
        ),
        bar_chart(
            "Latency",
            labels,
            {p: [r[f"{p} ms"] for r in rows] for p in ("p50", "p95", "p99")},
            "ms",
        ),
        line_chart(
            "Latency distribution (all requests)",
            {run.label: _latency_curve(run) for run in result.runs},
            "percentile",
            "ms",
        ),
        bar_chart(
            "Queries per request (median)",
            routes,
            {
                run.label: [run.queries_per_request.get(r, 0.0) for r in routes]
                for run in result.runs
            },
            "queries",
        ),
    ]
    singles = [run for run in result.runs if run.label.count("+") == 1]
    if singles:
        charts.append(
            bar_chart(
                "Each fix on its own: throughput against naive",
                [r.label for r in singles],
                {
                    "x naive": [
                        r.load.throughput() / result.runs[0].load.throughput() for r in singles
                    ]
                },
                "x naive",
            )
        )
    fixes = _table(
        ["fix", "what it changes"],
        [[escape(name), escape(text)] for name, text in FIX_DESCRIPTIONS.items()],
        css="text",
    )
    advised = ""
    if result.indexes:
        listed = "".join(f"<li><code>{escape(ddl)}</code></li>" for ddl in result.indexes)
        advised = (
            "<p>The index fix creates what <code>hotpath advise</code> recommended from the "
            f"statements the naive run recorded in pg_stat_statements:</p><ul>{listed}</ul>"
        )
    published = _table(
        ["technique", "published figure"],
        [[escape(a), escape(b)] for a, b in PUBLISHED],
        css="text",
    )
    machine = (
        f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}"
    )
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hotpath demo: the shop, before and after</title>
<style>{_CSS}</style></head><body>
<h1>hotpath demo: the shop, before and after</h1>
<p class="muted">Scale <b>{escape(result.scale)}</b>, {result.concurrency} concurrent simulated
users, {result.duration_s:.0f} s per configuration, the same request mix (about 80% reads,
20% writes, Zipf-popular users and products). {escape(machine)}; {when}.</p>
<section id="summary"><h2>Summary</h2>{summary}</section>
<section id="charts"><h2>Charts</h2>{"".join(f"<div>{c}</div>" for c in charts)}</section>
<section id="endpoints"><h2>Per endpoint</h2>{per_endpoint}</section>
<section id="fixes"><h2>The fixes</h2>{fixes}{advised}</section>
<section id="published"><h2>Published figures this project started from</h2>{published}
<p class="muted">Measured above on this machine, in one run, against the same naive shop.</p>
</section>
</body></html>
"""
