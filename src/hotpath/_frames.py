"""Which stack frames are the application's: shared by observe's call sites and pool's
checkout stacks.

A frame is *library* when its code lives in the standard library, hotpath itself (except
the demo shop, which is application code), SQLAlchemy, the drivers or the web frameworks.
The verdict is cached per code object, so classifying a frame costs a dict lookup. Under
async SQLAlchemy the work runs in a greenlet whose stack ends at ``greenlet_spawn``; the
application's ``await`` is in the parent greenlets' frames.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from types import CodeType, FrameType

_HOTPATH = str(Path(__file__).resolve().parent)
_APP_INSIDE_HOTPATH = (str(Path(_HOTPATH) / "demo"),)
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

_verdicts: dict[CodeType, bool] = {}
_prefixes: tuple[str, ...] = ()


def _library_prefixes() -> tuple[str, ...]:
    prefixes = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    for name in _LIBRARIES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            prefixes.add(str(Path(module.__file__).resolve().parent))  # type: ignore[arg-type]
    return tuple(sorted(prefixes))


def is_library(code: CodeType) -> bool:
    """Whether ``code`` belongs to a library rather than to the application."""
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


def parent_greenlet_frames() -> Iterator[FrameType]:
    """The innermost frame of each parent greenlet, nearest first (none outside greenlets)."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return
    current = greenlet.getcurrent()
    while current.parent is not None:
        current = current.parent
        frame = current.gr_frame  # made on each access: read once
        if frame is not None:
            yield frame


def display_path(filename: str) -> str:
    """``filename`` relative to the working directory when it is below it."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive (Windows)
        return filename
    return filename if relative.startswith("..") else relative


def describe_site(filename: str, lineno: int, function: str) -> str:
    return f"{display_path(filename)}:{lineno} in {function}"
