"""The root ``hotpath`` command and its error handling."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape

from .. import __version__
from .._errors import HotpathError
from ..doctor._cli import advise, doctor, explain
from ..partitions._cli import partitions_app
from ..pool._cli import pool_app
from ..routing._cli import routing_app
from ..run._cli import CONTEXT as RUN_CONTEXT
from ..run._cli import run
from ._console import err
from ._demo import demo
from ._stack import stack_app

app = typer.Typer(
    name="hotpath",
    help="Make PostgreSQL + Redis backends fast, and prove it.",
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
app.command(context_settings=RUN_CONTEXT)(run)


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


def _click_class(name: str) -> type[Exception]:
    """One of click's exception classes, through typer's public ``BadParameter``: typer
    0.22+ vendors click (``typer._click``), so ``import click`` may name other classes."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_UsageError = _click_class("UsageError")
_ClickException = _click_class("ClickException")


def main() -> None:
    """Console-script entry point: bad input and known errors are one line on stderr (exit
    2), never a usage box or a traceback.

    typer runs in ``standalone_mode=False`` so that click's usage errors (bad option values,
    unknown commands or options, missing arguments, a group without its command) reach this
    function instead of being drawn as boxes; ``--help`` and ``typer.Exit`` work as usual.
    A group called without its command (``hotpath``, ``hotpath pool``) is such an error too,
    listing the commands, rather than a help screen on a script's stdout.
    """
    try:
        code = app(standalone_mode=False)
    except _UsageError as exc:
        _fail(_usage_line(exc))
    except typer.Abort:  # Ctrl-C, turned into Abort by click
        err.print("interrupted")
        sys.exit(130)
    except _ClickException as exc:  # e.g. a file option that cannot be opened
        _fail(exc.format_message())  # type: ignore[attr-defined]
    except HotpathError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except OSError as exc:  # the machine said no (permissions, disk full, a missing path)
        _fail(str(exc))
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
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> NoReturn:
    text = " ".join(message.split())  # one line, whatever the message held
    err.print(f"[bold red]error:[/] {escape(text)}", markup=True, soft_wrap=True)
    sys.exit(2)


def _usage_line(exc: Exception) -> str:
    """``hotpath pool plan: Invalid value for '--processes': ... (see hotpath pool plan
    --help)``, with the commands to choose from when a group's command is missing or
    unknown."""
    ctx: Any = getattr(exc, "ctx", None)
    message: str = exc.format_message()  # type: ignore[attr-defined]
    # typer's validation words some messages pydantic-style; the rest names what is accepted
    message = message.replace("Value error, ", "")
    if ctx is None:
        return message
    commands = ctx.command.list_commands(ctx) if hasattr(ctx.command, "list_commands") else []
    # Groups have no no_args_is_help (its help screen is drawn while the error is built):
    # a group called alone fails with click's "Missing command."
    if commands and message.startswith(("Missing command", "No such command")):
        message = f"{message.rstrip('.')}: use one of {', '.join(commands)}."
    path = ctx.command_path
    return f"{path}: {message} (see {path} --help)"
