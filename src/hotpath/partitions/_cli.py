"""``hotpath partitions ensure|detach|check|convert|hash-info|repartition``."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from .._errors import HotpathError

partitions_app = typer.Typer(
    help="Keep a table partitioned: time ranges, hash, online conversion of a live table."
)

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


def _with_progress_bar(action: Any) -> Any:
    """Run ``action(show)`` with a rich progress bar on stderr that ``show`` moves: it appears
    at the first step (an error before that stays one line) and is cleared at the end."""
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("starting", total=None, note="")

    def show(step: Any) -> None:
        if not bar.live.is_started:
            bar.start()
        total = max(step.total_estimate, step.copied) or None
        note = f"{step.replayed:,} changes replayed, {step.pending_changes:,} pending"
        bar.update(
            task, description=step.phase.value, completed=step.copied, total=total, note=note
        )

    try:
        return action(show)
    finally:
        bar.stop()


@partitions_app.command()
def convert(
    url: _Url,
    table: Annotated[str, typer.Argument(help="The live table to partition.")],
    by: Annotated[
        str | None, typer.Option(help="The partition key column (not with --resume).")
    ] = None,
    interval: Annotated[
        str | None, typer.Option(help="Range partitions of day, week, month or year.")
    ] = None,
    hash_partitions: Annotated[
        int | None, typer.Option(help="Hash partitions instead: how many.")
    ] = None,
    batch_rows: Annotated[int, typer.Option(help="Rows per copy/replay transaction.")] = 5000,
    lock_timeout_ms: Annotated[
        int, typer.Option(help="lock_timeout of the trigger creation and the swap.")
    ] = 2000,
    swap_attempts: Annotated[int, typer.Option(help="Tries of the swap's lock.")] = 5,
    extend_primary_key: Annotated[
        bool, typer.Option(help="Add the partition key to a primary key that lacks it.")
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue a conversion that stopped (its options are saved).")
    ] = False,
    abort: Annotated[
        bool, typer.Option(help="Undo an unfinished conversion (the table is untouched).")
    ] = False,
) -> None:
    """Partition a live TABLE online: copy in batches, replay captured writes, swap."""
    from . import (  # noqa: PLC0415
        ConversionError,
        ConvertOptions,
        abort_conversion,
        convert_to_partitioned,
        resume_conversion,
    )

    if abort:
        undone = _run(url, lambda e: abort_conversion(e, table))
        typer.echo(f"aborted the conversion of {table}" if undone else "no conversion to abort")
        return
    if resume:
        if by is not None or interval is not None or hash_partitions is not None:
            raise ConversionError(
                "--resume takes the saved options: drop --by/--interval/--hash-partitions"
            )
        result = _with_progress_bar(
            lambda show: _run(url, lambda e: resume_conversion(e, table, progress=show))
        )
    else:
        options = ConvertOptions(
            by=by or "",
            interval=interval,  # type: ignore[arg-type]  # validated by ConvertOptions
            hash_partitions=hash_partitions,
            batch_rows=batch_rows,
            lock_timeout_ms=lock_timeout_ms,
            swap_attempts=swap_attempts,
            extend_primary_key=extend_primary_key,
        )
        result = _with_progress_bar(
            lambda show: _run(
                url, lambda e: convert_to_partitioned(e, table, options=options, progress=show)
            )
        )
    typer.echo(
        f"{result.table} is partitioned ({len(result.partitions)} partitions): "
        f"{result.copied:,} rows copied, {result.replayed:,} changes replayed, swap held the "
        f"lock {result.swap_lock_ms:.1f} ms; the old table is {result.old_table} "
        f"(DROP TABLE {result.old_table} when satisfied)"
    )


@partitions_app.command()
def repartition(
    url: _Url,
    table: _Table,
    partitions: Annotated[int, typer.Option(help="The new number of hash partitions.")],
    batch_rows: Annotated[int, typer.Option(help="Rows per copy/replay transaction.")] = 5000,
) -> None:
    """Change the number of hash partitions of TABLE online."""
    from . import repartition_hash  # noqa: PLC0415

    result = _with_progress_bar(
        lambda show: _run(
            url,
            lambda e: repartition_hash(e, table, partitions, batch_rows=batch_rows, progress=show),
        )
    )
    typer.echo(
        f"{result.table} has {len(result.partitions)} hash partitions: {result.copied:,} rows "
        f"moved; the old table is {result.old_table}"
    )


@partitions_app.command("hash-info")
def hash_info(
    url: _Url,
    table: _Table,
    exact: Annotated[bool, typer.Option(help="Count rows (a scan) instead of estimates.")] = False,
) -> None:
    """List the hash partitions of TABLE: modulus, remainder, rows."""
    from . import inspect_hash  # noqa: PLC0415

    info = _run(url, lambda e: inspect_hash(e, table, exact=exact))
    typer.echo(f"{info.name}: hash of {info.column}, modulus {info.modulus}, skew {info.skew:.2f}")
    for p in info.partitions:
        typer.echo(f"  {p.name}  modulus {p.modulus} remainder {p.remainder}  {p.rows:,} rows")
