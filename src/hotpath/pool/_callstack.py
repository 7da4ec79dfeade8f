"""Cheap capture of the stack that checked a connection out, and its rendering.

Capture walks from the pool towards the caller and stops at the first application frame
(``hotpath._frames``): the frames in between are the libraries' (SQLAlchemy, hotpath), and
the first application frame is the call site a leak report names. Only (code object,
bytecode offset) pairs are kept; line numbers, file names and source lines are worked out
when a leak or an exhausted pool is reported. Under async SQLAlchemy the checkout runs in a
greenlet whose stack ends at ``greenlet_spawn``; the walk continues in the parent greenlet,
where the ``await`` is.
"""

from __future__ import annotations

import linecache
import sys
from collections.abc import Iterator, Sequence
from types import CodeType, FrameType

from .._frames import describe_site, is_library, parent_greenlet_frames

# Flat (code object, bytecode offset, code object, bytecode offset, ...), innermost first:
# one tuple for the common capture of a single frame instead of a tuple of pairs.
Stack = Sequence[object]

# Kept when no application frame is found at all (a checkout from a library's own thread).
_MAX_FRAMES = 32

# Verdicts per file name: a str caches its hash, a code object does not (hashing one is
# computed anew each time), and whether a frame is the application's depends only on its
# file. The
# metered pools read ``application_files`` inline for the caller's frame.
_library_files: set[str] = set()
application_files: set[str] = set()

_getframe = sys._getframe

# Call sites whose distance is known, for the metered pools' inline jump (see checkout_stack):
# (id of the code object, bytecode offset) of an application frame -> (its distance in frames
# above the checkout's caller, the code of the library function it called then (None at
# distance 0), its own code object: held so that its id stays its own).
verified_sites: dict[tuple[int, int], tuple[int, CodeType | None, CodeType]] = {}
# The distance to try first: where the last checkout found its application frame.
distance_hint = [0]
_distances: list[int] = []  # every distance learnt, most recent first
_MAX_DISTANCES = 8
_MAX_SITES = 4096


def _is_application_file(code: CodeType) -> bool:
    filename = code.co_filename
    if filename in application_files:
        return True
    if is_library(code):
        _library_files.add(filename)
        return False
    application_files.add(filename)
    return True


def capture_stack(skip: int = 1) -> Stack:
    """The caller's stack (``skip`` frames of its own dropped) out to the first application
    frame, innermost first."""
    return stack_from(_getframe(skip + 1))


def checkout_hold(now: float) -> tuple[object, ...]:
    """What a metered checkout keeps while the connection is out: ``(now, code, offset)`` of
    the application frame that called the pool (the caller of the function calling this
    one), found by trying the last distance that found one (``distance_hint``): 0 when the
    application calls the pool itself; else ``(now, *checkout_stack())``, which tries the
    other distances and then walks."""
    distance = distance_hint[0]
    try:
        frame = _getframe(2 + distance)
    except ValueError:  # shallower than that: another path
        return (now, *checkout_stack(1))
    code = frame.f_code
    lasti = frame.f_lasti
    if distance:  # a verified site at that distance, that called the same function
        site = verified_sites.get((id(code), lasti))
        known = (
            site is not None and site[0] == distance and _getframe(1 + distance).f_code is site[1]
        )
    else:  # the caller itself: the first application frame if it is one
        known = code.co_filename in application_files
    return (now, code, lasti) if known else (now, *checkout_stack(1))


def checkout_stack(skip: int = 0) -> Stack:
    """The stack to keep for a checkout: the caller of the function calling this one
    (``sys._getframe(2)`` here; ``skip`` frames further out) and its callers out to the
    first application frame.

    Through ``engine.connect()`` or a ``Session`` there are three to eight SQLAlchemy frames
    between the pool and the application, and CPython 3.11 makes a frame object of each
    frame walked. So a walk records the application frame it found as a
    verified site: its (code, bytecode offset), its distance above the checkout's caller and
    the library function it called. Later checkouts jump to a known distance with
    ``sys._getframe(n)``, which materialises only the frames it returns, and keep the frame
    they land on when it is a verified site at that distance that called the same function
    (so ``f.connect()`` reaching an application class's ``connect`` is not taken for the same
    line reaching ``Engine.connect``). The frames further in are then taken to be the library
    frames the walk saw: an application frame that replaced one of them, at the same depth
    under the same two frames (a ``Connection`` subclass set as ``Engine._connection_cls``), is
    not looked for. The metered pools try the last distance inline (``distance_hint``) before
    calling this, which tries the others and then walks. The stack kept after a jump is the
    application frame alone.
    """
    for distance in _distances:
        try:
            frame = _getframe(2 + skip + distance)
        except ValueError:  # not that deep: another path
            continue
        code = frame.f_code
        lasti = frame.f_lasti
        site = verified_sites.get((id(code), lasti))
        if (
            site is not None
            and site[0] == distance
            and (not distance or _getframe(1 + skip + distance).f_code is site[1])
        ):
            distance_hint[0] = distance
            return (code, lasti)
    try:
        caller = _getframe(2 + skip)
    except ValueError:  # the checkout is a thread's or greenlet's entry point: no caller
        return ()
    stack = stack_from(caller)
    distance = len(stack) // 2 - 1
    found, offset = stack[-2], stack[-1]
    assert isinstance(found, CodeType)
    assert isinstance(offset, int)
    if _is_application_file(found):
        try:  # found in this thread's own frames, not a parent greenlet's: remember it
            if _getframe(2 + skip + distance).f_code is found:
                if len(verified_sites) >= _MAX_SITES:
                    verified_sites.clear()
                inner = stack[-4] if distance else None  # the function the site called
                assert inner is None or isinstance(inner, CodeType)
                verified_sites[(id(found), offset)] = (distance, inner, found)
                if distance not in _distances:
                    _distances.insert(0, distance)
                    del _distances[_MAX_DISTANCES:]
                distance_hint[0] = distance
        except ValueError:
            pass
    return stack


def stack_from(frame: FrameType | None) -> Stack:
    """``frame`` and its callers out to the first application frame. CPython 3.11+
    materialises a frame object for each frame walked, so the walk stops at the call site."""
    stack: list[object] = []
    push = stack.append
    library = _library_files
    while frame is not None:
        code = frame.f_code
        push(code)
        push(frame.f_lasti)  # f_lineno would cost a line-table decode
        if code.co_filename not in library and _is_application_file(code):
            return stack
        frame = frame.f_back
    # No application frame in this greenlet (async SQLAlchemy): go on in the parents'.
    for parent in parent_greenlet_frames():
        frame = parent
        while frame is not None:
            code = frame.f_code
            push(code)
            push(frame.f_lasti)
            if code.co_filename not in library and _is_application_file(code):
                return stack
            frame = frame.f_back
    return stack[: 2 * _MAX_FRAMES]


def frames(stack: Stack) -> Iterator[tuple[CodeType, int]]:
    """(code object, bytecode offset) pairs of ``stack``, innermost first."""
    for index in range(0, len(stack) - 1, 2):
        code, offset = stack[index], stack[index + 1]
        assert isinstance(code, CodeType)
        assert isinstance(offset, int)
        yield code, offset


def _line(code: CodeType, offset: int) -> int:
    for start, end, line in code.co_lines():
        if start <= offset < end and line is not None:
            return line
    return code.co_firstlineno


def call_site(stack: Stack) -> str:
    """``path:line in function`` of the first application frame (else the outermost one)."""
    pairs = list(frames(stack))
    for code, offset in pairs:
        if not is_library(code):
            return _site(code, _line(code, offset))
    if pairs:
        code, offset = pairs[-1]
        return _site(code, _line(code, offset))
    return "<unknown>"


def _site(code: CodeType, line: int) -> str:
    return describe_site(code.co_filename, line, code.co_name)


def format_stack(stack: Stack) -> str:
    """A traceback-style rendering, outermost call first."""
    lines = []
    for code, offset in reversed(list(frames(stack))):
        line = _line(code, offset)
        lines.append(f'  File "{code.co_filename}", line {line}, in {code.co_name}')
        source = linecache.getline(code.co_filename, line).strip()
        if source:
            lines.append(f"    {source}")
    return "\n".join(lines)
