"""Who the servers run as, and running programs as that account.

PostgreSQL (and PgBouncer) refuse to run as root. When hotpath runs as root (CI, containers)
the servers run as an unprivileged system account, created on first use; otherwise as the
current user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._errors import StackError

SERVICE_ACCOUNT = os.environ.get("HOTPATH_SERVICE_USER", "hotpath")


@dataclass(frozen=True)
class Account:
    """A system account the servers run as."""

    name: str
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()

    def can_reach(self, path: Path) -> bool:
        """Whether this account can traverse every directory down to ``path`` and read it."""
        if self.is_current or self.uid == 0:
            return True
        path = path.resolve()
        for directory in [*reversed(path.parents), path]:
            st = directory.stat()
            need = stat.S_IXOTH if directory.is_dir() else stat.S_IROTH
            if st.st_uid == self.uid:
                need <<= 6
            elif st.st_gid == self.gid:
                need <<= 3
            if not st.st_mode & need:
                return False
        return True

    def own(self, path: Path) -> None:
        """Give ``path`` (a file or a directory, not recursive) to this account."""
        if not self.is_current:
            os.chown(path, self.uid, self.gid)

    def _popen_kwargs(self) -> dict[str, object]:
        if self.is_current:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as this account and capture its output; never raises on exit code."""
        kwargs = self._popen_kwargs()
        try:
            return subprocess.run(  # type: ignore[call-overload, no-any-return]
                [os.fspath(a) for a in argv],
                env=dict(env),
                cwd=cwd,
                timeout=timeout,
                capture_output=True,
                text=True,
                check=False,
                stdin=subprocess.DEVNULL,
                **kwargs,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                f"{Path(os.fspath(argv[0])).name} did not finish within {timeout:.0f}s; "
                "the machine may be overloaded: retry, or check the server logs in the stack dir"
            ) from exc


def current_account() -> Account:
    entry = pwd.getpwuid(os.geteuid())
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def server_account() -> Account:
    """The account servers run as: the current user, or an unprivileged one when root."""
    if os.geteuid() != 0:
        return current_account()
    try:
        entry = pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        entry = _create_system_account(SERVICE_ACCOUNT)
    if entry.pw_uid == 0:
        raise StackError(
            f"HOTPATH_SERVICE_USER={SERVICE_ACCOUNT!r} is a root account; PostgreSQL refuses to "
            "run as root: name an unprivileged account"
        )
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _create_system_account(name: str) -> pwd.struct_passwd:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise StackError(
            f"running as root, and the unprivileged account {name!r} that PostgreSQL needs could "
            f"not be created ({result.stderr.strip() or 'useradd failed'}): create it with "
            f"`useradd --system {name}`, set HOTPATH_SERVICE_USER to an existing unprivileged "
            "account, or run hotpath as a normal user"
        ) from None
