"""Roll-ups across scopes with the same name (an endpoint, a job) and across profiled
functions: counts and HDR-histogram percentiles, as JSON or a rich table."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._records import Finding

_MAX_US = 3_600_000_000  # one hour


def _histogram() -> HdrHistogram:
    return HdrHistogram(1, _MAX_US, 3)


class Timing:
    """Durations of one name (µs resolution, 3 significant digits)."""

    def __init__(self) -> None:
        self.histogram = _histogram()
        self.count = 0
        self.total_ms = 0.0
        self._lock = threading.Lock()

    def record_ms(self, ms: float) -> None:
        with self._lock:
            self.histogram.record_value(max(1, min(_MAX_US, int(ms * 1000))))
            self.count += 1
            self.total_ms += ms

    def percentile_ms(self, percentile: float) -> float:
        return (
            float(self.histogram.get_value_at_percentile(percentile)) / 1000 if self.count else 0.0
        )

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean_ms": self.total_ms / self.count if self.count else 0.0,
            "p50_ms": self.percentile_ms(50),
            "p95_ms": self.percentile_ms(95),
            "p99_ms": self.percentile_ms(99),
            "max_ms": float(self.histogram.get_max_value()) / 1000 if self.count else 0.0,
        }


class Rollup:
    """Everything observed for one scope name."""

    def __init__(self) -> None:
        self.latency = Timing()
        self.queries = _histogram()
        self.max_queries = 0
        self.db_ms = Timing()
        self.findings: Counter[tuple[str, str, str]] = Counter()
        self.examples: dict[tuple[str, str, str], Finding] = {}
        self._lock = threading.Lock()

    def add(self, duration_ms: float, queries: int, db_ms: float, findings: list[Finding]) -> None:
        self.latency.record_ms(duration_ms)
        self.db_ms.record_ms(db_ms)
        with self._lock:
            self.queries.record_value(queries)
            self.max_queries = max(self.max_queries, queries)
            for finding in findings:
                key = (finding.kind.value, str(finding.call_site), finding.fix or finding.message)
                self.findings[key] += 1
                self.examples.setdefault(key, finding)


@dataclass
class ScopeStats:
    """Per scope name: how many, how fast, how many queries, and the recurring findings."""

    name: str
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    queries_p50: int
    queries_max: int
    db_ms_p50: float
    findings: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FunctionStats:
    name: str
    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class Report:
    """What a profiler saw: per scope name and per profiled function."""

    scopes: list[ScopeStats]
    functions: list[FunctionStats]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scopes": [asdict(s) for s in self.scopes],
            "functions": [asdict(f) for f in self.functions],
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2).decode()

    def print(self, console: Console | None = None) -> None:
        console = console or Console()
        table = Table(
            "scope",
            "count",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "queries p50/max",
            "db ms p50",
            "findings",
            title="hotpath observe",
        )
        for s in self.scopes:
            table.add_row(
                s.name,
                str(s.count),
                f"{s.p50_ms:.1f}",
                f"{s.p95_ms:.1f}",
                f"{s.p99_ms:.1f}",
                f"{s.queries_p50}/{s.queries_max}",
                f"{s.db_ms_p50:.1f}",
                str(sum(f["scopes"] for f in s.findings)),
            )
        console.print(table)
        for s in self.scopes:
            for f in s.findings[:5]:
                kind = escape("[" + f["kind"] + "]")
                console.print(
                    f"[bold]{escape(s.name)}[/] {kind} x{f['scopes']} {escape(f['message'])}"
                )
                if f["call_site"]:
                    console.print(f"    at {escape(f['call_site'])}")
                if f["fix"]:
                    console.print(f"    fix: {escape(f['fix'])}")
        if self.functions:
            ftable = Table(
                "function",
                "calls",
                "mean ms",
                "p50",
                "p95",
                "p99",
                "max",
                title="profiled functions",
            )
            for fn in self.functions:
                ftable.add_row(
                    fn.name,
                    str(fn.count),
                    f"{fn.mean_ms:.2f}",
                    f"{fn.p50_ms:.2f}",
                    f"{fn.p95_ms:.2f}",
                    f"{fn.p99_ms:.2f}",
                    f"{fn.max_ms:.2f}",
                )
            console.print(ftable)


def build_report(rollups: dict[str, Rollup], timings: dict[str, Timing]) -> Report:
    scopes = []
    for name, rollup in sorted(rollups.items()):
        latency = rollup.latency.summary()
        findings = [
            {**rollup.examples[key].to_dict(), "scopes": count}
            for key, count in rollup.findings.most_common()
        ]
        scopes.append(
            ScopeStats(
                name,
                int(latency["count"]),
                latency["p50_ms"],
                latency["p95_ms"],
                latency["p99_ms"],
                latency["max_ms"],
                int(rollup.queries.get_value_at_percentile(50)) if rollup.latency.count else 0,
                rollup.max_queries,
                rollup.db_ms.percentile_ms(50),
                findings,
            )
        )
    functions = [
        FunctionStats(name, **{k: v for k, v in t.summary().items() if k != "count"}, count=t.count)
        for name, t in sorted(timings.items())
    ]
    return Report(scopes, functions)
