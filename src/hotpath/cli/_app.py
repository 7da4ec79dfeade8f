"""The root ``hotpath`` command and its error handling."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from .. import __version__
from .._errors import HotpathError
from ._console import err


@dataclass(frozen=True)
class _Entry:
    """A command imported only when it runs: its module pulls in psycopg, SQLAlchemy, redis
    or pglast, which cost seconds that ``hotpath --version`` and ``--help`` must not pay."""

    module: str
    attribute: str  # a typer.Typer (a command group) or a command function
    help: str  # the one-line summary ``hotpath --help`` lists (a test keeps it in sync)
    # click context settings of a single command (``run``: options after the command are
    # the command's own)
    context: dict[str, Any] | None = None


COMMANDS: dict[str, _Entry] = {
    "demo": _Entry(
        "hotpath.cli._demo",
        "demo",
        "Optimize the shop on a local stack the way the method goes: measure under load, "
        "apply the one fix hotpath's diagnosis names first, measure again, until the p99 "
        "target is met; print the ladder and write an HTML report.",
    ),
    "doctor": _Entry(
        "hotpath.doctor._cli",
        "doctor",
        "Diagnose a live PostgreSQL database (read-only) and print what to fix.",
    ),
    "advise": _Entry(
        "hotpath.doctor._cli",
        "advise",
        "Advise indexes for the workload, validated with HypoPG when it is installed.",
    ),
    "explain": _Entry(
        "hotpath.doctor._cli",
        "explain",
        "Show a statement's plan as a tree with the flags that make it slow.",
    ),
    "stack": _Entry(
        "hotpath.cli._stack",
        "stack_app",
        "A real local PostgreSQL primary + streaming replicas + Redis.",
    ),
    "partitions": _Entry(
        "hotpath.partitions._cli",
        "partitions_app",
        "Keep a table partitioned: time ranges, hash, online conversion of a live table.",
    ),
    "pool": _Entry(
        "hotpath.pool._cli",
        "pool_app",
        "Connection pools sized from the workload and the server's real budget.",
    ),
    "routing": _Entry(
        "hotpath.routing._cli",
        "routing_app",
        "Replica routing: what a ReplicaSet sees of each node.",
    ),
    "run": _Entry(
        "hotpath.run._cli",
        "run",
        "Run a command with hotpath loaded (no code change) and diagnose it on exit.",
        context={"allow_interspersed_args": False},
    ),
}


def load_command(name: str) -> Any:
    """The click command ``name`` stands for, importing its module now."""
    entry = COMMANDS[name]
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    if isinstance(target, typer.Typer):
        # a group even with one command (``hotpath pool plan``), as add_typer made it
        command: Any = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        single.command(name=name, context_settings=entry.context)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class _LazyGroup(TyperGroup):
    """The root group: ``--help`` lists every command from :data:`COMMANDS` through
    placeholders, and the command a user names is imported when click resolves it."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, entry in COMMANDS.items():
            self.commands.setdefault(name, _Placeholder(name=name, help=entry.help))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and isinstance(self.commands.get(args[0]), _Placeholder):
            self.commands[args[0]] = load_command(args[0])
        return super().resolve_command(ctx, args)


class _Placeholder(TyperCommand):
    """A command's name and summary for the help screen, until it is resolved."""


app = typer.Typer(
    name="hotpath",
    help="Make PostgreSQL + Redis backends fast, and prove it.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    cls=_LazyGroup,
)


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
