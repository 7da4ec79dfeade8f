"""Cheap call-site attribution: the first frame outside hotpath, SQLAlchemy, drivers and
the standard library.

The verdict "library or application" is cached per code object, so a walk costs a few
microseconds; it is only taken when a pattern is first suspected or a query is slow. Under
``AsyncSession`` the query runs in a greenlet whose own stack ends at SQLAlchemy's
``greenlet_spawn``; the walk then continues in the parent greenlet, where the application's
``await`` is.
"""

from __future__ import annotations

import linecache
import re
import sys
import sysconfig
from pathlib import Path
from types import CodeType, FrameType

from ._records import CallSite

_HOTPATH = str(Path(__file__).resolve().parent.parent)
_APP_INSIDE_HOTPATH = (str(Path(_HOTPATH) / "demo"),)  # the demo shop is application code
_LIBRARIES = (
    "sqlalchemy",
    "psycopg",
    "psycopg_pool",
    "asyncpg",
    "greenlet",
    "pglast",
    "_pytest",
    "pluggy",
    "anyio",
    "starlette",
    "fastapi",
    "flask",
    "werkzeug",
    "uvicorn",
    "httpx",
    "httpcore",
)


def _library_prefixes() -> tuple[str, ...]:
    prefixes = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    for name in _LIBRARIES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            prefixes.add(str(Path(module.__file__).resolve().parent))  # type: ignore[arg-type]
    return tuple(sorted(prefixes))


_verdicts: dict[CodeType, bool] = {}
_prefixes: tuple[str, ...] = ()


def _is_library(code: CodeType) -> bool:
    verdict = _verdicts.get(code)
    if verdict is None:
        global _prefixes
        if not _prefixes:
            _prefixes = _library_prefixes()
        filename = code.co_filename
        if filename.startswith("<"):
            verdict = filename != "<stdin>" and not filename.startswith("<ipython")
        elif filename.startswith(_HOTPATH):
            verdict = not filename.startswith(_APP_INSIDE_HOTPATH)
        else:
            verdict = filename.startswith(_prefixes)
        _verdicts[code] = verdict
    return verdict


def _first_app_frame(frame: FrameType | None) -> FrameType | None:
    while frame is not None:
        if not _is_library(frame.f_code):
            return frame
        frame = frame.f_back
    return None


def capture_call_site() -> CallSite | None:
    """The application frame that (directly or through libraries) is running now."""
    found = _first_app_frame(sys._getframe(1))
    if found is None:
        try:
            import greenlet  # noqa: PLC0415 - only async SQLAlchemy needs it

            current = greenlet.getcurrent()
            while found is None and current.parent is not None:
                current = current.parent
                found = _first_app_frame(current.gr_frame)
        except ImportError:
            pass
    if found is None:
        return None
    return CallSite(found.f_code.co_filename, found.f_lineno, found.f_code.co_name)


_IGNORE = re.compile(r"#\s*hotpath:\s*ignore(?:\[([\w,\s]+)\])?")


def ignored_at(site: CallSite | None, kind: str) -> bool:
    """Whether the source line at ``site`` says ``# hotpath: ignore[kind]`` (or a bare ignore)."""
    if site is None:
        return False
    match = _IGNORE.search(linecache.getline(site.filename, site.lineno))
    if match is None:
        return False
    kinds = match.group(1)
    return kinds is None or kind in {k.strip() for k in kinds.split(",")}
