"""``hotpath partitions ensure|detach|check``."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from .._errors import HotpathError

partitions_app = typer.Typer(help="Keep a table range-partitioned by time.")

_Url = Annotated[str, typer.Argument(help="Database URL (postgresql://... or SQLAlchemy).")]
_Table = Annotated[str, typer.Argument(help="The partitioned table.")]


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine  # noqa: PLC0415
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        return create_engine(url)
    except ArgumentError as exc:
        raise HotpathError(f"{url!r} is not a database URL: {exc}") from None


def _run(url: str, action: Any) -> Any:
    from sqlalchemy.exc import OperationalError  # noqa: PLC0415

    engine = _engine(url)
    try:
        return action(engine)
    except OperationalError as exc:
        raise HotpathError(
            f"cannot connect: {str(exc.orig).strip().splitlines()[0]} — check host, port, "
            "user and password"
        ) from None
    finally:
        engine.dispose()


@partitions_app.command()
def ensure(
    url: _Url,
    table: _Table,
    interval: Annotated[str, typer.Option(help="day, week, month or year.")] = "month",
    ahead: Annotated[int, typer.Option(min=0, max=120, help="Future periods to create.")] = 3,
) -> None:
    """Create the current period's partition and the next AHEAD ones (idempotent)."""
    from . import ensure_partitions  # noqa: PLC0415

    created = _run(url, lambda e: ensure_partitions(e, table, interval, ahead))  # type: ignore[arg-type]
    typer.echo("\n".join(f"created {name}" for name in created) or "nothing to create")


@partitions_app.command()
def detach(
    url: _Url,
    table: _Table,
    older_than_days: Annotated[int, typer.Option(min=1, help="Age of the data to detach.")],
    drop: Annotated[bool, typer.Option(help="Also drop the detached partitions.")] = False,
) -> None:
    """Detach (with --drop, drop) partitions whose whole range is older than N days."""
    from . import detach_older_than  # noqa: PLC0415

    gone = _run(
        url, lambda e: detach_older_than(e, table, timedelta(days=older_than_days), drop=drop)
    )
    verb = "dropped" if drop else "detached"
    typer.echo("\n".join(f"{verb} {name}" for name in gone) or f"nothing to {verb[:-1]}")


@partitions_app.command()
def check(url: _Url, table: _Table) -> None:
    """Report rows in the DEFAULT partition (exit 1 if there are any)."""
    from . import default_partition_rows  # noqa: PLC0415

    name, rows = _run(url, lambda e: default_partition_rows(e, table))
    if name is None:
        typer.echo(f"{table} has no default partition")
    else:
        typer.echo(
            f"{name}: {rows} rows"
            + (" (they escape pruning: add partitions and move them)" if rows else "")
        )
    if rows:
        raise typer.Exit(1)
