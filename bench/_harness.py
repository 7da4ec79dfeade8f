"""Shared measuring and reporting for the benchmarks."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


@dataclass
class Series:
    """Samples (seconds) of one contender."""

    name: str
    samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        """Nearest-rank 99th percentile (the maximum when there are fewer than 100 samples)."""
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def time_once(
    action: Callable[[], object], clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds ``action`` took by ``clock`` (wall time by default; ``time.process_time`` for
    this process's CPU time, which other processes on a shared machine barely disturb)."""
    began = clock()
    action()
    return clock() - began


def report(title: str, series: list[Series], baseline: str, unit: str = "ms") -> str:
    """Print a comparison table and return it as Markdown (ratio = median / baseline median)."""
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
    base = next(s for s in series if s.name == baseline).median
    table = Table(
        "contender", "n", f"median {unit}", f"p99 {unit}", "x baseline", "note", title=title
    )
    lines = [
        f"| contender | n | median {unit} | p99 {unit} | x {baseline} | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in series:
        cells = [
            s.name,
            str(len(s.samples)),
            f"{s.median * scale:.1f}",
            f"{s.p99 * scale:.1f}",
            f"{s.median / base:.2f}",
            s.note,
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    return "\n".join(lines)
