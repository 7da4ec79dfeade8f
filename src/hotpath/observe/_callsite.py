"""Cheap call-site attribution: the first frame outside hotpath, SQLAlchemy, drivers and
the standard library.

The verdict "library or application" is cached per file name, so a walk costs a few
microseconds; it is only taken when a pattern is first suspected or a query is slow. Under
``AsyncSession`` the query runs in a greenlet whose own stack ends at SQLAlchemy's
``greenlet_spawn``; the walk then continues in the parent greenlet, where the application's
``await`` is.
"""

from __future__ import annotations

import linecache
import re
import sys
from collections.abc import Callable, Hashable
from functools import lru_cache
from types import CodeType, FrameType
from typing import Any

from .._frames import is_library, known_verdict, parent_greenlet_frames
from ._records import CallSite

# The frames of hotpath's middleware: a request's code runs below them, and what is above
# (the server, a test client and the test calling it) is not that request's code.
_request_boundaries: set[CodeType] = set()


def mark_request_boundary(*functions: Callable[..., Any]) -> None:
    """Stop call-site walks at ``functions``' frames (the middleware that runs a request)."""
    _request_boundaries.update(function.__code__ for function in functions)


def _first_app_frame(frame: FrameType | None) -> tuple[FrameType | None, bool]:
    """The first application frame from ``frame`` outwards, and whether the walk stopped at
    a request's boundary (then nothing further out is the request's code)."""
    boundaries = _request_boundaries
    while frame is not None:
        code = frame.f_code
        if code in boundaries:
            return None, True
        library = known_verdict(code.co_filename)
        if library is None:
            library = is_library(code)
        if not library:
            return frame, False
        frame = frame.f_back
    return None, False


def capture_call_site() -> CallSite | None:
    """The application frame that (directly or through libraries) is running now, inside the
    current request: ``None`` when only libraries run there (a response serialized by the
    framework after the view returned)."""
    found, bounded = _first_app_frame(sys._getframe(1))
    if found is None and not bounded:
        for frame in parent_greenlet_frames():
            found, bounded = _first_app_frame(frame)
            if found is not None or bounded:
                break
    if found is None:
        return None
    return CallSite(found.f_code.co_filename, found.f_lineno, found.f_code.co_name)


class SiteMemo:
    """The call site of a recurring operation (a statement, a Redis key template, a cached
    thing), walked at its 1st, 2nd, 4th, 8th... occurrence in the process and remembered in
    between.

    A walk materializes every frame it passes (tens, under an async ORM), which made the
    walks for evidence (where a slow Redis command, a cache miss, a long statement was
    issued) a large part of what observe cost a request. One operation is issued from one
    place in nearly every application; one issued from several is named by the site walked
    last, and walked again ever more rarely.
    """

    __slots__ = ("_max_keys", "_seen")

    def __init__(self, max_keys: int = 4096) -> None:
        self._seen: dict[Hashable, tuple[int, CallSite | None]] = {}
        self._max_keys = max_keys

    def site(self, key: Hashable) -> CallSite | None:
        seen = self._seen.get(key)
        count = 1 if seen is None else seen[0] + 1
        if seen is not None and count & (count - 1):
            self._seen[key] = (count, seen[1])
            return seen[1]
        site = capture_call_site()
        if seen is not None or len(self._seen) < self._max_keys:
            # past the bound, new keys are walked each time and not remembered
            self._seen[key] = (count, site)
        return site


_IGNORE = re.compile(r"#\s*hotpath:\s*ignore(?:\[([\w,\s]+)\])?")


def ignored_at(site: CallSite | None, kind: str) -> bool:
    """Whether the source line at ``site`` says ``# hotpath: ignore[kind]`` (or a bare ignore)."""
    if site is None:
        return False
    ignored = _ignored_kinds(linecache.getline(site.filename, site.lineno))
    return ignored is not None and (not ignored or kind in ignored)


@lru_cache(maxsize=4096)
def _ignored_kinds(line: str) -> frozenset[str] | None:
    """The kinds a source line's ``# hotpath: ignore[...]`` names (empty: every kind; None:
    no such comment). Parsed once per line text: a recurring pattern asks at every
    occurrence; the line itself is read each time (``linecache``: a dict lookup), so an
    edited file that ``linecache.checkcache`` reloads is seen."""
    match = _IGNORE.search(line)
    if match is None:
        return None
    kinds = match.group(1)
    return frozenset() if kinds is None else frozenset(k.strip() for k in kinds.split(","))
