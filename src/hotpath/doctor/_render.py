"""Presenting results: rich terminal output, and a self-contained HTML file (inline CSS/SVG)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .._charts import hbar_chart
from ..plans import Severity, render_plan
from ._model import Report

if TYPE_CHECKING:
    from ._advise import IndexAdvice
    from ._explain import Explained

_STYLE = {Severity.CRITICAL: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def render_text(report: Report, console: Console) -> None:
    """Summary table first (one row per check with findings), then each finding in detail."""
    summary = Table(
        title=f"hotpath doctor — {report.database} (PostgreSQL "
        f"{report.server_version // 10000}), {report.duration_s:.2f} s"
    )
    for column in ("check", "critical", "warning", "info"):
        summary.add_column(column, justify="left" if column == "check" else "right")
    checks = list(dict.fromkeys(f.check for f in report.findings))
    for check in checks:
        found = report.by_check(check)
        summary.add_row(
            check,
            *(
                str(sum(1 for f in found if f.severity is s) or "")
                for s in (Severity.CRITICAL, Severity.WARNING, Severity.INFO)
            ),
        )
    console.print(summary)
    clean = [c for c in report.checks_run if c not in checks]
    if clean:
        console.print(Text(f"no findings: {', '.join(clean)}", style="green"))
    for finding in report.findings:
        body = Text(finding.message + "\n")
        if finding.fix:
            body.append("fix: ", style="bold").append(finding.fix + "\n")
        if finding.gain:
            body.append("gain: ", style="bold").append(finding.gain + "\n")
        if finding.evidence:
            body.append("evidence: ", style="dim").append(
                ", ".join(f"{k}={v}" for k, v in finding.evidence.items()), style="dim"
            )
        console.print(
            Panel(
                body,
                title=f"[{_STYLE[finding.severity]}]{finding.severity.value}[/] "
                f"{finding.check} · {finding.target}",
                title_align="left",
            )
        )
    for skipped in report.skipped:
        console.print(
            f"[dim]skipped {skipped.check}: {skipped.reason}"
            f"{' — unlock with: ' + skipped.grant if skipped.grant else ''}[/]"
        )


def render_advice(advice: IndexAdvice, console: Console) -> None:
    table = Table(
        title=f"hotpath advise — {advice.queries} queries, "
        f"{'validated with HypoPG' if advice.hypopg else 'NOT validated (no HypoPG)'}"
    )
    for column in ("index", "status", "best gain", "time saved"):
        table.add_column(column)
    for s in advice.suggestions:
        table.add_row(
            s.ddl,
            "validated" if s.validated else "unvalidated",
            "" if s.best_gain is None else f"{s.best_gain:.0%}",
            "" if s.time_saved_ms is None else f"{s.time_saved_ms:,.0f} ms",
        )
    console.print(table)
    if advice.hint:
        console.print(f"[yellow]{advice.hint}[/]")
    for notice in advice.notices:
        console.print(Text(notice, style="yellow"))
    for s in advice.suggestions:
        if s.note:
            console.print(Text(f"{_first_line(s.ddl)} — {s.note}", style="dim"))
    for r in advice.rejected:
        console.print(Text(f"rejected {r.ddl} — {r.reason}", style="dim"))
    for sql, why in advice.unanalysed:
        console.print(Text(f"not analysed: {' '.join(sql.split())[:100]} — {why}", style="dim"))
    for sql, why in advice.unserved:
        console.print(Text(f"no index for: {' '.join(sql.split())[:100]} — {why}", style="dim"))


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text


def render_explained(explained: Explained, console: Console) -> None:
    if explained.not_analyzed:
        why = f"ANALYZE not run: {explained.not_analyzed}. The plan below was not executed."
        console.print(Text(why, style="yellow"), soft_wrap=True)
    console.print(render_plan(explained.plan, explained.flags))
    for flag in explained.flags:
        line = Text(f"{flag.severity.value} ", style=_STYLE[flag.severity])
        line.append(f"[{flag.kind}] {flag.message}")
        if flag.suggestion:
            line.append(f"\n  fix: {flag.suggestion}")
        console.print(line)
    if not explained.flags:
        console.print(Text("no problems flagged in this plan", style="green"))


_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
.critical{color:#b00;font-weight:bold}.warning{color:#a60}.info{color:#07a}
code,pre{background:#f4f4f4;padding:2px 4px;white-space:pre-wrap}
.finding{border-left:4px solid #ccc;padding:0 1em;margin:1em 0}
.finding.critical{border-color:#b00}.finding.warning{border-color:#d80}"""


def render_html(report: Report) -> str:
    """One self-contained HTML file: no scripts, no external assets, charts as inline SVG."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(c)}</td>"
        + "".join(
            f"<td>{sum(1 for f in report.by_check(c) if f.severity is s) or ''}</td>"
            for s in (Severity.CRITICAL, Severity.WARNING, Severity.INFO)
        )
        + "</tr>"
        for c in dict.fromkeys(f.check for f in report.findings)
    )
    findings = "".join(
        f'<div class="finding {f.severity.value}"><h3><span class="{f.severity.value}">'
        f"{f.severity.value}</span> {e(f.check)} · {e(f.target)}</h3><p>{e(f.message)}</p>"
        + (f"<p>fix ({e(f.fix_kind)}): <code>{e(f.fix)}</code></p>" if f.fix else "")
        + (f"<p>gain: {e(f.gain)}</p>" if f.gain else "")
        + (
            f"<p><small>{e(', '.join(f'{k}={v}' for k, v in f.evidence.items()))}</small></p>"
            if f.evidence
            else ""
        )
        + "</div>"
        for f in report.findings
    )
    skipped = "".join(
        f"<li>{e(s.check)}: {e(s.reason)}"
        + (f" — <code>{e(s.grant)}</code>" if s.grant else "")
        + "</li>"
        for s in report.skipped
    )
    top = [(f"#{i} {q.query}", q.total_ms) for i, q in enumerate(report.top_queries, 1)]
    shares = [(f"#{i} {q.query}", 100 * q.share) for i, q in enumerate(report.top_queries, 1)]
    queries = "".join(
        f"<tr><td>#{i}</td><td><code>{e(q.query)}</code></td><td>{q.calls:,}</td>"
        f"<td>{q.total_ms:,.1f}</td><td>{q.mean_ms:,.2f}</td><td>{q.share:.0%}</td></tr>"
        for i, q in enumerate(report.top_queries, 1)
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>hotpath doctor — {e(report.database)}</title><style>{_CSS}</style></head><body>
<h1>hotpath doctor — {e(report.database)}</h1>
<p>PostgreSQL {report.server_version}, user {e(report.user)}, {report.duration_s:.2f} s,
statistics since {e(str(report.stats_since))}. {report.count(Severity.CRITICAL)} critical,
{report.count(Severity.WARNING)} warning, {report.count(Severity.INFO)} info.</p>
<h2>Summary</h2><table><tr><th>check</th><th>critical</th><th>warning</th><th>info</th></tr>{rows}</table>
<h2>Top queries by total time</h2>{hbar_chart(top, "ms")}
<h2>Share of database time</h2>{hbar_chart(shares, "%")}
<table><tr><th></th><th>query</th><th>calls</th><th>total ms</th><th>mean ms</th><th>share</th></tr>
{queries}</table>
<h2>Findings</h2>{findings or "<p>none</p>"}
<h2>Skipped checks</h2><ul>{skipped or "<li>none</li>"}</ul>
</body></html>"""
