"""Checks on the query workload (pg_stat_statements): top queries and temp-file spills."""

from __future__ import annotations

from ..plans import Severity
from ._context import Context
from ._model import Finding, FixKind
from ._registry import check

_ENABLE = (
    "shared_preload_libraries = 'pg_stat_statements'  # postgresql.conf, then restart and run: "
    "CREATE EXTENSION pg_stat_statements;"
)


@check("top_queries", "Top queries by total time, mean time and calls")
def top_queries(ctx: Context) -> list[Finding]:
    """The queries that cost the most; without pg_stat_statements, how to enable it."""
    if "pg_stat_statements" not in ctx.caps.extensions:
        return [
            Finding(
                "top_queries",
                Severity.WARNING,
                ctx.caps.database,
                "pg_stat_statements is not installed: doctor cannot rank queries or tie "
                "sequential scans to the statements that cause them",
                {},
                _ENABLE,
                FixKind.CONFIG,
            )
        ]
    rows = ctx.statements
    total = sum(float(r["total_ms"]) for r in rows) or 1.0
    n = ctx.thresholds.top_queries
    ranked: dict[int, tuple[str, dict[str, object]]] = {}
    by_mean = sorted(rows, key=lambda r: -float(r["total_ms"]) / max(1, int(r["calls"])))
    by_calls = sorted(rows, key=lambda r: -int(r["calls"]))
    for label, group in (("total time", rows), ("mean time", by_mean), ("calls", by_calls)):
        for rank, r in enumerate(group[:n], 1):
            key = int(r["queryid"])
            ranked.setdefault(key, ("", r))
            ranked[key] = (
                ranked[key][0] + f"{'; ' if ranked[key][0] else ''}#{rank} by {label}",
                r,
            )
    findings = []
    for ranks, r in ranked.values():
        calls = int(r["calls"])  # type: ignore[call-overload]
        total_ms = float(r["total_ms"])  # type: ignore[arg-type]
        share = total_ms / total
        severity = Severity.WARNING if share >= 0.5 and total_ms >= 60_000 else Severity.INFO
        findings.append(
            Finding(
                "top_queries",
                severity,
                f"queryid {r['queryid']}",
                f"{ranks}: {share:.0%} of database time, {calls:,} calls, "
                f"{total_ms / calls:,.2f} ms mean — {_short(str(r['query']))}",
                {
                    "total_ms": round(total_ms, 3),
                    "calls": calls,
                    "mean_ms": round(total_ms / calls, 3),
                    "share": round(share, 4),
                    "rows": int(r["rows"]),  # type: ignore[call-overload]
                },
                f"hotpath explain URL {_quote(str(r['query']))}",
                FixKind.ACTION,
            )
        )
    return findings


@check("temp_spills", "Temp-file spills (work_mem)", "pg_stat_statements")
def temp_spills(ctx: Context) -> list[Finding]:
    """Queries writing temp files per call beyond the threshold: raise work_mem for them."""
    findings = []
    work_mem_kb = int(
        ctx.rows("SELECT setting::int AS kb FROM pg_settings WHERE name='work_mem'")[0]["kb"]
    )
    for r in ctx.statements:
        calls = max(1, int(r["calls"]))
        per_call = int(r["temp_blks_written"]) * 8192 / calls
        if per_call < ctx.thresholds.temp_bytes_per_call:
            continue
        # a sort needs roughly twice its on-disk size in memory; round up to a power of two
        need_kb = 1 << max(0, int(2 * per_call / 1024) - 1).bit_length()
        findings.append(
            Finding(
                "temp_spills",
                Severity.WARNING,
                f"queryid {r['queryid']}",
                f"writes {per_call / 1024 / 1024:,.1f} MB of temp files per call "
                f"({calls:,} calls, work_mem is {work_mem_kb:,} kB) — {_short(str(r['query']))}",
                {
                    "temp_bytes_per_call": int(per_call),
                    "calls": calls,
                    "work_mem_kb": work_mem_kb,
                },
                f"SET work_mem = '{need_kb}kB';  -- for this query's session/transaction, "
                "or index its ORDER BY / GROUP BY columns",
                FixKind.CONFIG,
                f"no temp I/O ({per_call * calls / 1024 / 1024:,.0f} MB written so far)",
            )
        )
    return findings


def _short(query: str, limit: int = 120) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _quote(query: str) -> str:
    return "'" + " ".join(query.split()).replace("'", "'\\''") + "'"
