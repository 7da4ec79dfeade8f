"""``hotpath demo``: start the local stack, show its URLs and run the smoke workload."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..demo import run_smoke
from ..stack import LocalStack
from ._console import out
from ._stack import status_table


def demo(
    replicas: Annotated[int, typer.Option(min=1, max=8, help="Streaming replicas.")] = 2,
    rows: Annotated[int, typer.Option(min=1, max=1_000_000, help="Rows to write.")] = 10_000,
) -> None:
    """Start a local primary + replicas + Redis, print their URLs, run a short smoke workload."""
    with out.status("starting PostgreSQL primary, replicas and Redis..."):
        stack = LocalStack(replicas=replicas, redis=True).start()
    try:
        out.print(f"[bold]Local stack up in {stack.startup_seconds:.1f}s[/] ({stack.directory})")
        for name, value in stack.env_exports().items():
            out.print(f"  {name}={value}")
        with out.status("running the smoke workload..."):
            report = run_smoke(stack, rows=rows)

        out.print(
            f"\n[bold]Write on the primary[/]: {report.rows_written} rows "
            f"in {report.write_ms:.1f} ms"
        )
        table = Table(
            "replica", "rows seen", "visible after", "replayed LSN", title="Streaming replication"
        )
        for obs in report.replicas:
            table.add_row(
                obs.name,
                str(obs.rows_seen),
                f"{obs.visible_after_ms:.1f} ms",
                f"{obs.lsn_before} -> {obs.lsn_after}",
            )
        out.print(table)
        out.print(
            f"[bold]Replay paused on {report.paused_replica}[/]: primary has "
            f"{report.primary_rows} rows, {report.paused_replica} still shows "
            f"{report.paused_rows_seen} ({report.paused_lag_bytes} bytes of WAL behind); "
            f"after resume it shows {report.resumed_rows_seen}."
        )
        out.print(
            f"[bold]Redis[/]: {report.redis_roundtrips} SET+GET round trips, "
            f"p50 {report.redis_p50_us:.0f} us, p99 {report.redis_p99_us:.0f} us"
        )
        out.print(status_table(stack.status()))
    finally:
        stack.stop()
    out.print("stack stopped; nothing left running.")
