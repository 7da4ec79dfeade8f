"""``hotpath demo``: the local stack, then the shop run naive and optimized under load."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ._console import out
from ._stack import status_table

if TYPE_CHECKING:
    from ..demo._ladder import Ladder
    from ..demo._runner import DemoResult
    from ..stack import LocalStack

SCALES = ("tiny", "small", "medium")  # hotpath.demo.shop.data.SCALES, without importing it


def demo(
    scale: Annotated[str, typer.Option(help=f"Shop size: {', '.join(SCALES)}.")] = "small",
    duration: Annotated[float, typer.Option(min=1, max=600, help="Seconds per run.")] = 20,
    users: Annotated[int, typer.Option(min=1, max=256, help="Concurrent simulated users.")] = 16,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="uvicorn worker processes serving the shop, the users spread over them (pools "
            "planned for all together; Redis answers what one's L1 lacks). Default 1: on 2 "
            "cores more workers only compete with the load and the databases for them.",
        ),
    ] = 1,
    ablation: Annotated[
        bool,
        typer.Option(help="Instead of the loop: naive, each fix alone, then every fix at once."),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(help="At each step also try every other remaining fix alone from there."),
    ] = False,
    target_p99_ms: Annotated[
        float | None,
        typer.Option(min=0.1, help="Stop once p99 is at most this (default: naive's p99 / 10)."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the ladder as JSON to this path.")
    ] = None,
    smoke: Annotated[
        bool, typer.Option(help="Only start the stack and check replication.")
    ] = False,
    rows: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Rows for the smoke write.")
    ] = 10_000,
    report: Annotated[
        Path, typer.Option(help="Where to write the self-contained HTML report.")
    ] = Path("demo-report.html"),
) -> None:
    """Optimize the shop on a local stack the way the method goes: measure under load, apply
    the one fix hotpath's diagnosis names first, measure again, until the p99 target is met;
    print the ladder and write an HTML report."""
    from ..demo._report import render_html  # noqa: PLC0415 - keep `hotpath --help` fast
    from ..demo._runner import run_shop  # noqa: PLC0415
    from ..stack import LocalStack  # noqa: PLC0415

    if scale not in SCALES:
        raise typer.BadParameter(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    for path in (report, json_path):
        # checked before the runs: a bad path found after minutes of load loses the result
        if path is not None and not path.resolve().parent.is_dir():
            raise typer.BadParameter(f"{path}: its directory does not exist; give another path")
    with out.status("starting PostgreSQL primary, replicas and Redis..."):
        stack = LocalStack(replicas=2, redis=True, stop_on_signals=True).start()
    try:
        _smoke(stack, rows)
        if smoke:
            return
        with _progress() as (say, rows_loaded):
            result = run_shop(
                stack,
                scale,
                duration,
                users,
                ablation,
                progress=say,
                rows_loaded=rows_loaded,
                ladder=not ablation,
                verify=verify,
                target_p99_ms=target_p99_ms,
                workers=workers,
            )
        if result.indexes:
            out.print("[bold]indexes hotpath advise recommended[/] (the index fix):")
            for ddl in result.indexes:
                out.print(f"  {ddl}", soft_wrap=True, markup=False)
        if result.ladder is not None:
            _print_ladder(result.ladder, json_path)
        else:
            _before_after(result)
        for run in result.runs:
            for error in run.server_errors:
                out.print(f"[yellow]{run.label}: the server logged[/] {escape(error)}")
        report.write_text(render_html(result))
        out.print(f"[bold]report[/]: {report.resolve()}")
    finally:
        stack.stop()
    out.print("stack stopped; nothing left running.")


@contextmanager
def _progress() -> Iterator[tuple[Callable[[str], None], Callable[[int, int], None]]]:
    """A status line for each step and a bar for the data load, in one live display."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rows]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=out, transient=True) as progress:
        step = progress.add_task("starting", total=None, rows="")
        bar: list[TaskID] = []

        def say(message: str) -> None:
            out.print(f"[dim]{message}[/]")
            progress.update(step, description=message)

        def rows_loaded(done: int, expected: int) -> None:
            if not bar:
                bar.append(progress.add_task("rows loaded", total=expected, rows=""))
            total = max(expected, done)
            progress.update(bar[0], completed=done, total=total, rows=f"{done:,} rows")
            if done >= expected:
                progress.update(bar[0], visible=False)

        yield say, rows_loaded


def _smoke(stack: LocalStack, rows: int) -> None:
    from ..demo import run_smoke  # noqa: PLC0415

    out.print(f"[bold]Local stack up in {stack.startup_seconds:.1f}s[/] ({stack.directory})")
    for name, value in stack.env_exports().items():
        out.print(f"  {name}={value}")
    with out.status("checking replication..."):
        report = run_smoke(stack, rows=rows)
    table = Table(
        "replica",
        "rows seen",
        "visible after",
        "replayed LSN",
        title=f"A write of {report.rows_written} rows on the primary",
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


def _print_ladder(ladder: Ladder, json_path: Path | None) -> None:
    import json  # noqa: PLC0415

    from ..demo._ladder import ladder_dict, ladder_lines  # noqa: PLC0415

    out.print("[bold]The ladder[/]: each fix chosen by hotpath's diagnosis of the run before")
    for line in ladder_lines(ladder):
        # the lines are made to fit 80 columns: never re-wrapped nor cut
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    if json_path is not None:
        json_path.write_text(json.dumps(ladder_dict(ladder), indent=2))
        out.print(f"[bold]ladder JSON[/]: {json_path.resolve()}")


def _before_after(result: DemoResult) -> None:
    from ..demo._runner import SUMMARY_HEADERS, summary_cells, summary_rows  # noqa: PLC0415

    def ratio(value: float, base: float, higher_is_better: bool) -> str:
        if not value or not base:
            return ""
        return f" ({(value / base if higher_is_better else base / value):.1f}x)"

    rows = summary_rows(result)
    table = Table(*SUMMARY_HEADERS, title=f"The shop ({result.scale}) under the same load")
    for row in rows:
        table.add_row(*summary_cells(row, rows[0], ratio))
    out.print(table)
    routes = sorted({name for run in result.runs for name in run.queries_per_request})
    queries = Table(
        "endpoint", *(run.label for run in result.runs), title="Queries per request (median)"
    )
    for route in routes:
        queries.add_row(
            route, *(f"{run.queries_per_request.get(route, 0):.0f}" for run in result.runs)
        )
    out.print(queries)
