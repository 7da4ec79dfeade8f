"""Read-your-writes tokens: the WAL position of a context's last committed write.

A token lives in a mutable box held by a context variable, so a write anywhere in a request
(thread, task, or code run in a thread pool with a copied context) raises the token the rest of
the request reads with. :func:`use_token` opens a new box (one per HTTP request, job, ...).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ._lsn import format_lsn, parse_lsn


class TokenBox:
    """The highest WAL position written in one context (``None`` before any write)."""

    __slots__ = ("_lock", "position")

    def __init__(self, position: int | None = None) -> None:
        self.position = position
        self._lock = threading.Lock()

    def advance(self, position: int) -> None:
        with self._lock:
            if self.position is None or position > self.position:
                self.position = position

    @property
    def token(self) -> str | None:
        return None if self.position is None else format_lsn(self.position)


_BOX: ContextVar[TokenBox | None] = ContextVar("hotpath_routing_token", default=None)


def context_box() -> TokenBox:
    """The current context's box, created (and bound to this context) on first use."""
    box = _BOX.get()
    if box is None:
        box = TokenBox()
        _BOX.set(box)
    return box


def current_token() -> str | None:
    """The read-your-writes token of this context (a WAL position like ``'0/3000148'``), or None."""
    box = _BOX.get()
    return None if box is None else box.token


@contextmanager
def use_token(token: str | None) -> Iterator[TokenBox]:
    """Read with ``token`` (e.g. from a cookie or a job payload) for the block.

    Writes in the block advance the yielded box; read ``box.token`` after the block to hand the
    newest token on. Raises :class:`TokenError` when ``token`` is not a WAL position.
    """
    box = TokenBox(None if token is None else parse_lsn(token))
    reset = _BOX.set(box)
    try:
        yield box
    finally:
        _BOX.reset(reset)
