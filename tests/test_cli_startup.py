"""``hotpath --version`` and ``--help`` import no database or parser library: each command's
module is imported only when that command runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hotpath.cli._app import COMMANDS, load_command

# each costs hundreds of milliseconds to import; together they made --version take ~3 s
HEAVY = ("sqlalchemy", "psycopg", "pglast", "redis", "orjson", "hotpath.stack", "hotpath.doctor")


def imported_by(*args: str) -> set[str]:
    """Every module loaded by the time ``hotpath ARGS`` exits, in a fresh interpreter."""
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('MODULES ' + ' '.join(sys.modules) + '\\n'))\n"
        f"sys.argv = ['hotpath', *{list(args)!r}]\n"
        "from hotpath.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [line] = [x for x in result.stderr.splitlines() if x.startswith("MODULES ")]
    return set(line.split()[1:])


@pytest.mark.parametrize("args", [("--version",), ("--help",)])
def test_version_and_help_import_no_heavy_library(args: tuple[str, ...]) -> None:
    modules = imported_by(*args)
    assert "hotpath.cli._app" in modules  # the measurement saw the CLI load
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY)
    assert heavy == []


def test_a_command_imports_only_its_own_module() -> None:
    modules = imported_by("explain", "--help")
    assert "hotpath.doctor._cli" in modules
    assert not {"hotpath.pool", "hotpath.partitions", "hotpath.routing", "sqlalchemy"} & modules


@pytest.mark.parametrize("name", list(COMMANDS))
def test_listed_summary_is_the_commands_own(name: str) -> None:
    """The summary ``hotpath --help`` shows without importing a command is the one the
    command itself declares."""
    command = load_command(name)
    assert command.name == name
    own = " ".join((command.help or "").split("\n\n")[0].split())
    assert own == " ".join(COMMANDS[name].help.split())
