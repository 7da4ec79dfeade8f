"""The ``hotpath doctor`` / ``advise`` / ``explain`` commands (registered by hotpath.cli)."""

from __future__ import annotations

from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import orjson
import typer
from rich.console import Console
from rich.progress import Progress

from ._errors import DoctorError

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


class Format(str, Enum):
    text = "text"
    html = "html"
    json = "json"


class FailOn(str, Enum):
    warning = "warning"
    critical = "critical"


def doctor(
    url: Annotated[str, typer.Argument(help="postgresql://user:password@host:port/db")],
    format: Annotated[Format, typer.Option("--format", help="text, html or json")] = Format.text,
    output: Annotated[Optional[Path], typer.Option("--output", help="write to FILE")] = None,  # noqa: UP045
    fail_on: Annotated[
        FailOn | None, typer.Option("--fail-on", help="exit 1 at this severity")
    ] = None,
    only: Annotated[Optional[str], typer.Option("--only", help="CHECK,CHECK,...")] = None,  # noqa: UP045
    show_literals: Annotated[
        bool, typer.Option("--show-literals", help="do not redact literals")
    ] = False,
) -> None:
    """Diagnose a live PostgreSQL database (read-only) and print what to fix."""
    from ._diagnose import diagnose  # noqa: PLC0415 - keep `hotpath --help` fast
    from ._render import render_html, render_text  # noqa: PLC0415

    if format is Format.text and output is None:
        with Progress(console=_err, transient=True) as progress:
            task = progress.add_task("checking", total=None)

            def step(check: object, number: int, total: int) -> None:
                progress.update(
                    task,
                    total=total,
                    completed=number - 1,
                    description=f"{getattr(check, 'id', '')}",
                )

            report = diagnose(url, only, show_literals=show_literals, progress=step)
        render_text(report, _out)
    else:
        report = diagnose(url, only, show_literals=show_literals)
        if format is Format.json:
            text = report.to_json()
        elif format is Format.html:
            text = render_html(report)
        else:
            console = Console(record=True, width=120, file=open("/dev/null", "w"))  # noqa: SIM115
            render_text(report, console)
            text = console.export_text()
        _write(text, output)
    if report.fails(fail_on.value if fail_on else None):
        raise typer.Exit(1)


def advise(
    url: Annotated[str, typer.Argument(help="postgresql://user:password@host:port/db")],
    workload: Annotated[
        str,
        typer.Option(
            "--workload",
            help="pg_stat_statements, pg_stat_activity (sampled), FILE.sql, or a PostgreSQL "
            "log file (stderr, .csv, .json)",
        ),
    ] = "pg_stat_statements",
    min_gain: Annotated[
        float, typer.Option("--min-gain", help="cost reduction an index must bring")
    ] = 0.3,
    include: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--include", help="only these tables: TABLE,SCHEMA.TABLE,..."),
    ] = None,
    exclude: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--exclude", help="never these tables: TABLE,SCHEMA.TABLE,..."),
    ] = None,
    min_calls: Annotated[
        int, typer.Option("--min-calls", min=0, help="skip statements with fewer calls")
    ] = 0,
    min_time: Annotated[
        float,
        typer.Option("--min-time", min=0, help="skip statements under this total time (minutes)"),
    ] = 0.0,
    create: Annotated[
        bool,
        typer.Option(
            "--create",
            help="create the validated suggestions (CONCURRENTLY, one creator at a time)",
        ),
    ] = False,
    format: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
) -> None:
    """Advise indexes for the workload, validated with HypoPG when it is installed."""
    from ._advise import advise_indexes  # noqa: PLC0415
    from ._render import render_advice  # noqa: PLC0415
    from ._sources import TableFilter, filter_workload, load_workload  # noqa: PLC0415

    tables = TableFilter.of(include, exclude)
    loaded, notices = load_workload(url, workload)
    queries, dropped = filter_workload(loaded, min_calls=min_calls, min_time_minutes=min_time)
    advice = advise_indexes(url, queries, min_gain, tables=tables)
    advice.notices.extend(notices)
    advice.unanalysed.extend(dropped)
    created = None
    if create and not advice.hypopg:
        raise DoctorError(f"--create builds only indexes HypoPG validated: {advice.hint}")
    if create:
        from ._create import create_indexes  # noqa: PLC0415

        created = create_indexes(url, [s for s in advice.suggestions if s.validated])
    if format is Format.json:
        data = advice.to_dict()
        if created is not None:
            data["created"] = [asdict(c) for c in created]
        _write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode(), None)
    else:
        render_advice(advice, _out)
        for c in created or []:
            _out.print(f"{c.outcome}: {c.ddl}" + (f"  ({c.detail})" if c.detail else ""))
    if created and any(c.outcome == "failed" for c in created):
        raise typer.Exit(1)


def explain(
    url: Annotated[str, typer.Argument(help="postgresql://user:password@host:port/db")],
    sql: Annotated[str, typer.Argument(help="the statement to plan")],
    analyze: Annotated[
        bool,
        typer.Option(
            "--analyze",
            help="run it: a plain SELECT calling no volatile function, read-only, rolled back",
        ),
    ] = False,
) -> None:
    """Show a statement's plan as a tree with the flags that make it slow."""
    from ._explain import explain as run_explain  # noqa: PLC0415
    from ._render import render_explained  # noqa: PLC0415

    render_explained(run_explain(url, sql, analyze=analyze), _out)


def _write(text: str, output: Path | None) -> None:
    if output is None:
        _out.print(text, markup=False, highlight=False, soft_wrap=True)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise DoctorError(f"cannot write {output}: {exc.strerror}") from None
    _err.print(f"wrote {output}")


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(doctor)
app.command()(advise)
app.command()(explain)
