"""The root ``hotpath`` command and its error handling."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from .. import __version__
from .._errors import HotpathError
from ..doctor._cli import advise, doctor, explain
from ..partitions._cli import partitions_app
from ..pool._cli import pool_app
from ..routing._cli import routing_app
from ._console import err
from ._demo import demo
from ._stack import stack_app

app = typer.Typer(
    name="hotpath",
    help="Make PostgreSQL + Redis backends fast, and prove it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(stack_app, name="stack")
app.add_typer(partitions_app, name="partitions")
app.add_typer(pool_app, name="pool")
app.add_typer(routing_app, name="routing")
app.command()(demo)
app.command()(doctor)
app.command()(advise)
app.command()(explain)


def _show_version(value: bool) -> None:
    if value:
        print(f"hotpath {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Make PostgreSQL + Redis backends fast, and prove it."""


def main() -> None:
    """Console-script entry point: known errors become one line on stderr, not a traceback."""
    try:
        app()
    except HotpathError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except OSError as exc:  # the machine said no (permissions, disk full, a missing path)
        err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:
        if os.environ.get("HOTPATH_DEBUG"):
            raise
        err.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
            "This is a hotpath bug: rerun with HOTPATH_DEBUG=1 for the traceback and report it.",
            markup=True,
            soft_wrap=True,
        )
        sys.exit(1)
