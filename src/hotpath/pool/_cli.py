"""The ``hotpath pool plan`` command (registered by hotpath.cli as ``hotpath pool``)."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import orjson
import typer
from rich.console import Console

from ._errors import PoolConfigError
from ._plan import PoolPlan

_out = Console(highlight=False, soft_wrap=True)

pool_app = typer.Typer(
    help="Connection pools sized from the workload and the server's real budget.",
)


@pool_app.command()
def plan(
    processes: Annotated[int, typer.Option(min=1, help="App processes, across every host.")],
    concurrency: Annotated[
        int, typer.Option(min=1, help="Requests or tasks one process serves at once.")
    ],
    url: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Option(help="Primary (or PgBouncer) URL [default: $HOTPATH_PRIMARY_URL]."),
    ] = None,
    replica_url: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="A replica URL; repeat for each [default: $HOTPATH_REPLICA_URLS]."),
    ] = None,
    pgbouncer: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="The URL points at a pooler in this mode: transaction or session."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per-process pool_size / max_overflow / timeout and the arithmetic; exit 1 if it does
    not fit the server's budget."""
    server_url = url or os.environ.get("HOTPATH_PRIMARY_URL")
    if not server_url:
        raise PoolConfigError("no server to plan for: pass --url or set HOTPATH_PRIMARY_URL")
    replicas = replica_url
    if replicas is None:
        replicas = [u for u in os.environ.get("HOTPATH_REPLICA_URLS", "").split(",") if u]
    result = PoolPlan.for_app(
        processes=processes,
        concurrency_per_process=concurrency,
        server_url=server_url,
        replica_urls=replicas,
        pgbouncer=pgbouncer,  # type: ignore[arg-type]  # PoolPlan names the allowed values
    )
    if as_json:
        _out.print(
            orjson.dumps(
                {
                    "pool_size": result.pool_size,
                    "max_overflow": result.max_overflow,
                    "pool_timeout": result.timeout_s,
                    "replica_pool_size": result.replica_pool_size,
                    "total_connections": result.total_connections,
                    "pgbouncer": result.pgbouncer,
                    "fits": result.fits,
                    "warnings": list(result.warnings),
                    "connect_args": result.engine_kwargs()["connect_args"],
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        _out.print(result.explain())
    if not result.fits:
        raise typer.Exit(1)
