"""The demo's self-contained HTML report: one file, inline CSS and SVG, no server needed."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from html import escape

import psutil

from .._charts import bar_chart, line_chart
from ._ladder import PUBLISHED as LADDER_PUBLISHED
from ._ladder import (
    Ladder,
    breakdown,
    endpoints_text,
    gain,
    gain_text,
    measured_figure,
    p99_ms,
    verdict,
)
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
.bar{display:flex;height:14px;min-width:2px;background:#eee}.bar span{display:block;height:100%}
.key span{display:inline-block;width:10px;height:10px;margin:0 .2rem 0 .8rem}
"""
# one colour per layer of observe's breakdown (hotpath.observe.Layer)
LAYER_COLOURS = {
    "connect": "#c0392b",
    "pool_wait": "#e67e22",
    "db": "#2e86c1",
    "redis": "#17a589",
    "http": "#8e44ad",
    "blocked": "#7f8c8d",
    "other": "#d4ac0d",
}


def _stacked_bar(parts: dict[str, float], scale_ms: float) -> str:
    """A step's mean time per request by layer, as one bar scaled to ``scale_ms``."""
    total = sum(parts.values())
    spans = "".join(
        f'<span style="width:{100 * ms / total:.2f}%;background:{LAYER_COLOURS.get(layer, "#999")}"'
        f' title="{escape(layer)} {ms:.1f} ms"></span>'
        for layer, ms in parts.items()
        if ms > 0
    )
    width = 100 * total / scale_ms if scale_ms else 0
    return f'<div class="bar" style="width:{width:.1f}%">{spans}</div>'


def _ladder_section(ladder: Ladder) -> str:
    naive = ladder.naive
    scale_ms = max((sum(breakdown(s.run).values()) for s in ladder.steps), default=0.0)
    rows = []
    for index, step in enumerate(ladder.steps):
        run, latency = step.run, step.run.load.overall_latency()
        why = "the naive shop"
        if step.because is not None:
            c = step.because
            site = f" at <code>{escape(c.call_site)}</code>" if c.call_site else ""
            named = escape(endpoints_text(c.endpoint))
            why = f"<b>{escape(c.kind)}</b> on {named}: {c.share:.0%} of its time{site}"
            why += f"<br><span class=muted>{escape(c.message)}</span>" if c.message else ""
            why += "".join(f"<br><span class=muted>{escape(n)}</span>" for n in c.notes)
        parts = breakdown(run)
        layers = ", ".join(f"{escape(k)} {v:.1f}" for k, v in parts.items() if v >= 0.05)
        gains = ""
        if index:
            before = ladder.steps[index - 1].run
            gains = (
                f"{gain(run, before):.2f}x{_ratio(p99_ms(before), p99_ms(run), True)}"
                f"<br>{gain(run, naive):.2f}x{_ratio(p99_ms(naive), p99_ms(run), True)}"
            )
        judged = verdict(ladder, index) if index else None
        checked = ""
        if judged is not None:
            checked = (
                f"{'right' if judged.right else '<b>wrong</b>'}: best {escape(judged.best_fix)} "
                f"{gain_text(judged.best, judged.best_spread)}, chosen "
                f"{gain_text(judged.chosen, judged.chosen_spread)}"
            )
        rows.append(
            [
                str(index),
                "naive" if step.applied is None else f"+{escape(step.applied)}",
                why,
                f"{run.load.throughput():.0f}",
                f"{latency.percentile_ms(50):.1f} / {latency.percentile_ms(95):.1f} / "
                f"{latency.percentile_ms(99):.1f}",
                _stacked_bar(parts, scale_ms) + f'<span class="muted">{layers}</span>',
                gains,
                checked,
            ]
        )
    headers = [
        "step",
        "fix",
        "what the diagnosis named",
        "req/s",
        "p50 / p95 / p99 ms",
        "ms per request by layer",
        "req/s gain (p99) vs previous / naive",
    ]
    if ladder.verified:
        headers.append("verify")
    else:
        rows = [row[:-1] for row in rows]
    key = "".join(
        f'<span style="background:{colour}"></span>{escape(layer)}'
        for layer, colour in LAYER_COLOURS.items()
    )
    accuracy = ladder.accuracy()
    said = ""
    if accuracy is not None:
        said = (
            f"<p><b>Diagnosis accuracy</b>: the chosen fix gained most (or within 10% of the "
            f"best) at {accuracy[0]} of {accuracy[1]} steps.</p>"
        )
    published = _table(
        ["technique", "published figure", "measured at the step that applied it"],
        [
            [escape(technique), escape(figure), escape(measured_figure(ladder, fix))]
            for fix, technique, figure in LADDER_PUBLISHED
        ],
        css="text",
    )
    return (
        f"<p>Target: p99 &le; {ladder.target_p99_ms:.1f} ms (naive {p99_ms(naive):.1f} ms). "
        f"Each step applies the one fix that observe's diagnosis of the step before named "
        f"first. Stopped: {escape(ladder.stop)}.</p>{said}"
        f'<p class="key">{key}</p>{_table(headers, rows, css="text")}'
        f"<h3>Published figures, side by side with this run</h3>{published}"
    )


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
    ladder = ""
    if result.ladder is not None:
        ladder = (
            '<section id="ladder"><h2>The ladder: one fix a step, chosen by the diagnosis</h2>'
            f"{_ladder_section(result.ladder)}</section>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hotpath demo: the shop, before and after</title>
<style>{_CSS}</style></head><body>
<h1>hotpath demo: the shop, before and after</h1>
<p class="muted">Scale <b>{escape(result.scale)}</b>, {result.concurrency} concurrent simulated
users, {result.duration_s:.0f} s per configuration, the same request mix (about 80% reads,
20% writes, Zipf-popular users and products). {escape(machine)}; {when}.</p>
{ladder}<section id="summary"><h2>Summary</h2>{summary}</section>
<section id="charts"><h2>Charts</h2>{"".join(f"<div>{c}</div>" for c in charts)}</section>
<section id="endpoints"><h2>Per endpoint</h2>{per_endpoint}</section>
<section id="fixes"><h2>The fixes</h2>{fixes}{advised}</section>
<section id="published"><h2>Published figures this project started from</h2>{published}
<p class="muted">Measured above on this machine, in one run, against the same naive shop.</p>
</section>
</body></html>
"""
