"""Cheap capture of the stack that checked a connection out, and its rendering.

Capture keeps (code object, bytecode offset) pairs only, about a microsecond per checkout;
line numbers, file names, source lines and the "first application frame" are worked out only
when a leak or an exhausted pool is reported. Under async SQLAlchemy the checkout runs in a
greenlet whose stack ends at ``greenlet_spawn``; the walk continues in the parent greenlet,
where the ``await`` is.
"""

from __future__ import annotations

import linecache
import sys
from types import CodeType, FrameType

from .._frames import describe_site, is_library, parent_greenlet_frames

Stack = tuple[tuple[CodeType, int], ...]

_MAX_FRAMES = 32


def _walk(frame: FrameType | None, into: list[tuple[CodeType, int]], budget: int) -> int:
    append = into.append
    while frame is not None and budget:
        append((frame.f_code, frame.f_lasti))  # f_lineno would cost a line-table decode
        frame = frame.f_back
        budget -= 1
    return budget


def capture_stack(skip: int = 1) -> Stack:
    """The current stack, innermost first (``skip`` frames of the caller's own dropped)."""
    frames: list[tuple[CodeType, int]] = []
    budget = _walk(sys._getframe(skip + 1), frames, _MAX_FRAMES)
    for parent in parent_greenlet_frames():
        if not budget:
            break
        budget = _walk(parent, frames, budget)
    return tuple(frames)


def _line(code: CodeType, offset: int) -> int:
    for start, end, line in code.co_lines():
        if start <= offset < end and line is not None:
            return line
    return code.co_firstlineno


def call_site(stack: Stack) -> str:
    """``path:line in function`` of the first application frame (else the outermost one)."""
    for code, offset in stack:
        if not is_library(code):
            return _site(code, _line(code, offset))
    if stack:
        code, offset = stack[-1]
        return _site(code, _line(code, offset))
    return "<unknown>"


def _site(code: CodeType, line: int) -> str:
    return describe_site(code.co_filename, line, code.co_name)


def format_stack(stack: Stack) -> str:
    """A traceback-style rendering, outermost call first."""
    lines = []
    for code, offset in reversed(stack):
        line = _line(code, offset)
        lines.append(f'  File "{code.co_filename}", line {line}, in {code.co_name}')
        source = linecache.getline(code.co_filename, line).strip()
        if source:
            lines.append(f"    {source}")
    return "\n".join(lines)
