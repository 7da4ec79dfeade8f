"""The ``hotpath routing status`` command (registered by hotpath.cli as ``hotpath routing``)."""

from __future__ import annotations

import os
import time
from typing import Annotated, Optional

import orjson
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine
from sqlalchemy.exc import ArgumentError

from ._errors import RoutingConfigError
from ._replica_set import ReplicaSet
from ._router import NodeReport

_out = Console(highlight=False, soft_wrap=True)

routing_app = typer.Typer(help="Replica routing: what a ReplicaSet sees of each node.")


@routing_app.callback()
def _group() -> None:
    """Replica routing: what a ReplicaSet sees of each node."""


@routing_app.command()
def status(
    primary: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Option(help="Primary URL (default: $HOTPATH_PRIMARY_URL)."),
    ] = None,
    replica: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="A replica URL; repeat for each (default: $HOTPATH_REPLICA_URLS)."),
    ] = None,
    max_lag_s: Annotated[float, typer.Option(min=0.001, help="Ejection threshold.")] = 1.0,
    probe_for_s: Annotated[
        float, typer.Option(min=0.0, help="How long to watch before reporting.")
    ] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Probe every node as a ReplicaSet would and show role, lag and health; exit 1 if a
    replica would not receive reads."""
    primary_url = primary or os.environ.get("HOTPATH_PRIMARY_URL")
    if not primary_url:
        raise RoutingConfigError("no primary: pass --primary or set HOTPATH_PRIMARY_URL")
    replica_urls = replica
    if replica_urls is None:
        replica_urls = [u for u in os.environ.get("HOTPATH_REPLICA_URLS", "").split(",") if u]
    engines = []
    for url in [primary_url, *replica_urls]:
        try:
            engines.append(create_engine(url, pool_size=1))
        except ArgumentError:
            raise RoutingConfigError(
                f"{url!r} is not a database URL: use postgresql+psycopg://user:password@host:port/db"
            ) from None
    try:
        with ReplicaSet(
            engines[0], engines[1:], max_lag_s=max_lag_s, probe_interval_s=0.2
        ) as replicas:
            time.sleep(probe_for_s)  # a few probes: lag in seconds needs the primary's history
            reports = replicas.status()
    finally:
        for engine in engines:
            engine.dispose()
    writer = next((r for r in reports if r.name == "primary"), None)
    if writer is not None and writer.role == "unknown" and writer.why_ejected:
        # Nothing to report about routing without the primary: one line, like bad input.
        raise RoutingConfigError(
            f"the primary at {writer.address} did not answer ({writer.why_ejected}): check "
            "--primary / HOTPATH_PRIMARY_URL and that the server is up"
        )
    if as_json:
        _out.print(orjson.dumps([r.__dict__ for r in reports], option=orjson.OPT_INDENT_2).decode())
    else:
        _out.print(_table(reports))
    if not all(r.healthy for r in reports):
        raise typer.Exit(1)


def _table(reports: list[NodeReport]) -> Table:
    table = Table("node", "address", "role", "healthy", "lag", "replayed", "why not used")
    for r in reports:
        lag = "" if r.lag_s is None else f"{r.lag_s:.2f} s / {r.lag_bytes or 0} B"
        role = f"{r.role} (writer)" if r.writer else r.role
        table.add_row(
            r.name,
            r.address,
            role,
            "yes" if r.healthy else "no",
            lag,
            r.replayed or "",
            r.why_ejected or "",
        )
    return table
