"""Which stack frames are the application's: shared by observe's call sites and pool's
checkout stacks.

A frame is *library* when its code lives in the standard library, hotpath itself (except
what registers itself as application code: the demo shop), SQLAlchemy, the drivers, the
clients or the web frameworks (also those imported after the first look).
The verdict is cached per file name, so classifying a frame costs a dict lookup. Under
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
# hotpath's own code that is an application (the demo shop): it registers itself
_app_inside_hotpath: tuple[str, ...] = ()
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
    "h11",
    "requests",
    "urllib3",
    "aiohttp",
    "redis",
    "wrapt",
    "pydantic",
    "pydantic_core",
    "sqlmodel",
    "marshmallow",
    "gunicorn",
)

# by file name, which is all a verdict depends on (code objects compare equal across files
# when their bodies, names and first lines do: a cache keyed by them mixed files up)
_verdicts: dict[str, bool] = {}
_prefixes: tuple[str, ...] = ()
_libraries_seen = -1  # how many of _LIBRARIES were imported when _prefixes was made


def treat_as_application(directory: str | os.PathLike[str]) -> None:
    """Code under ``directory``, inside hotpath's package, is application code (the demo
    shop calls this for itself: its lines are the ones findings name)."""
    global _app_inside_hotpath
    _app_inside_hotpath = (*_app_inside_hotpath, str(Path(directory).resolve()))
    _verdicts.clear()


def _library_prefixes() -> tuple[str, ...]:
    prefixes = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    for name in _LIBRARIES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            prefixes.add(str(Path(module.__file__).resolve().parent))  # type: ignore[arg-type]
    return tuple(sorted(prefixes))


# a walk's inner loop reads the cache directly (``known_verdict(filename)``; None: not yet
# judged) and calls is_library only on a miss: a call per frame was most of a walk's cost
known_verdict = _verdicts.get


def is_library(code: CodeType) -> bool:
    """Whether ``code`` belongs to a library rather than to the application."""
    filename = code.co_filename
    verdict = _verdicts.get(filename)
    if verdict is None:
        global _prefixes, _libraries_seen
        # a library imported since the prefixes were made (requests on a first outbound
        # call, say) must count from now on: checked on cache misses only
        seen = sum(1 for name in _LIBRARIES if name in sys.modules)
        if seen != _libraries_seen:
            _prefixes, _libraries_seen = _library_prefixes(), seen
        if filename.startswith("<"):
            verdict = filename != "<stdin>" and not filename.startswith("<ipython")
        elif filename.startswith(_HOTPATH):
            verdict = not (_app_inside_hotpath and filename.startswith(_app_inside_hotpath))
        else:
            verdict = filename.startswith(_prefixes)
        _verdicts[filename] = verdict
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
