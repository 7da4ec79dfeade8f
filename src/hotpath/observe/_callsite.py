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
from types import FrameType

from .._frames import is_library, parent_greenlet_frames
from ._records import CallSite


def _first_app_frame(frame: FrameType | None) -> FrameType | None:
    while frame is not None:
        if not is_library(frame.f_code):
            return frame
        frame = frame.f_back
    return None


def capture_call_site() -> CallSite | None:
    """The application frame that (directly or through libraries) is running now."""
    found = _first_app_frame(sys._getframe(1))
    if found is None:
        for frame in parent_greenlet_frames():
            found = _first_app_frame(frame)
            if found is not None:
                break
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
