"""The ``hotpath run`` command (registered by hotpath.cli)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ._options import (
    RunOptions,
    WorkerOptions,
    parse_address,
    parse_budget,
    parse_command,
    parse_explain,
    parse_fail_on,
    parse_sample,
    parse_stop_grace,
)

CONTEXT = {"allow_interspersed_args": False}  # options after the command are the command's


def run(
    command: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="the command to run, after --: uvicorn app:app --workers 2"),
    ] = None,
    report_dir: Annotated[
        str, typer.Option("--report-dir", help="where hotpath-report.json/.html go")
    ] = ".",
    fail_on: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--fail-on", help="KIND[,KIND] or budget: exit 1 when found"),
    ] = None,
    explain: Annotated[
        str, typer.Option("--explain", help="plan, analyze or off (for slow queries)")
    ] = "plan",
    capture_params: Annotated[
        bool, typer.Option("--capture-params", help="keep parameter values and SQL literals")
    ] = False,
    sample: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--sample", help="share of requests recorded, 0 < RATE <= 1"),
    ] = None,
    budget_ms: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--budget-ms", help="each endpoint's p95 budget (default 100)"),
    ] = None,
    db: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--db", help="add hotpath doctor's checks of this database URL"),
    ] = None,
    dashboard: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--dashboard", help="[HOST:]PORT of a live page (loopback by default)"),
    ] = None,
    metrics: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--metrics", help="PORT of a Prometheus exposition on 127.0.0.1"),
    ] = None,
    stop_grace: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--stop-grace", help="seconds a stopped command may take to end (default 30)"),
    ] = None,
) -> None:
    """Run a command with hotpath loaded (no code change) and diagnose it on exit."""
    from ..observe import FindingKind  # noqa: PLC0415 - keep `hotpath --help` fast
    from ._supervisor import become_subreaper  # noqa: PLC0415
    from ._supervisor import run as supervise  # noqa: PLC0415

    options = RunOptions(
        command=parse_command(command),
        report_dir=report_dir,
        fail_on=parse_fail_on(fail_on, tuple(k.value for k in FindingKind)),
        worker=WorkerOptions(
            explain=parse_explain(explain),
            capture_params=capture_params,
            sample=parse_sample(sample),
            budget_ms=parse_budget(budget_ms),
        ),
        db=db,
        dashboard=parse_address("--dashboard", dashboard, host_allowed=True),
        metrics=parse_address(
            "--metrics", None if metrics is None else str(metrics), host_allowed=False
        ),
        stop_grace_s=parse_stop_grace(stop_grace),
    )
    become_subreaper()
    raise typer.Exit(supervise(options))
