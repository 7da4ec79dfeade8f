"""``hotpath stack up|status|down``: a detached local stack for a shell session."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..stack import LocalStack, NodeStatus, default_stack_dir
from ._console import err, out

stack_app = typer.Typer(help="A real local PostgreSQL primary + streaming replicas + Redis.")

_DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Stack directory [default: $HOTPATH_STACK_DIR or <tmp>/hotpath-<uid>/default].",
    ),
]


@stack_app.command()
def up(
    replicas: Annotated[int, typer.Option(min=0, max=8, help="Streaming replicas.")] = 2,
    redis: Annotated[bool, typer.Option(help="Start a Redis server.")] = True,
    redis_cluster: Annotated[bool, typer.Option(help="Also a 3-master Redis Cluster.")] = False,
    pgbouncer: Annotated[
        bool, typer.Option(help="Also PgBouncer in front of the primary.")
    ] = False,
    directory: _DirOption = None,
    port: Annotated[int | None, typer.Option(help="Primary's port [default: a free one].")] = None,
) -> None:
    """Start the stack detached and print `export` lines (use: eval "$(hotpath stack up)")."""
    stack = LocalStack(
        replicas=replicas,
        redis=redis,
        redis_cluster=redis_cluster,
        pgbouncer=pgbouncer,
        directory=directory or default_stack_dir(),
        port=port,
        detached=True,
    )
    with err.status("starting PostgreSQL primary, replicas and Redis..."):
        stack.start()
    for name, value in stack.env_exports().items():
        out.print(f"export {name}={shlex.quote(value)}")
    err.print(f"hotpath stack up in {stack.startup_seconds:.1f}s at {stack.directory}")
    err.print(status_table(stack.status()))
    err.print(f"stop it with: hotpath stack down --dir {shlex.quote(str(stack.directory))}")


@stack_app.command()
def status(
    directory: _DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show each server: role, port, pid and replication lag. Exit 1 if any server is down."""
    stack = LocalStack.attach(directory or default_stack_dir())
    rows = stack.status()
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in rows]))
    else:
        out.print(status_table(rows))
    if not all(r.running for r in rows):
        raise typer.Exit(1)


@stack_app.command()
def down(
    directory: _DirOption = None,
    keep: Annotated[bool, typer.Option(help="Keep the data directories.")] = False,
) -> None:
    """Stop every server of the stack and remove its data (unless --keep)."""
    stack = LocalStack.attach(directory or default_stack_dir())
    stack.stop(keep=keep)
    err.print(f"hotpath stack in {stack.directory} stopped" + (" (data kept)" if keep else ""))


def status_table(rows: list[NodeStatus]) -> Table:
    table = Table("node", "role", "port", "pid", "lag", "note", title="hotpath stack")
    for row in rows:
        lag = ""
        if row.lag_bytes is not None:
            lag = f"{row.lag_bytes} B"
            if row.lag_seconds is not None:
                lag += f" / {row.lag_seconds:.2f} s"
            if row.replay_paused:
                lag += " (replay paused)"
        role = row.role if row.running else "[red]down[/]"
        table.add_row(row.name, role, str(row.port), str(row.pid or "-"), lag, row.note)
    return table
