"""Read-your-writes tokens: the WAL position of a context's last committed write, per server.

A token lives in a mutable box held by a context variable, so a write anywhere in a request
(thread, task, or code run in a thread pool with a copied context) raises the token the rest of
the request reads with. :func:`use_token` opens a new box (one per HTTP request, job, ...).

A WAL position means something only on the server that wrote it (and its replicas): the box
keeps the positions written through each replica set apart, by the set's primary server
(:func:`server_of`). A write on one database server never becomes the token of another one's
reads (its position, beyond that server's, would send every read there to the primary or get
capped). A token from outside (:func:`use_token`, a cookie) carries no server: it applies
to every server, and one beyond a server's position is capped at it there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy.engine import URL

from ._lsn import format_lsn, parse_lsn

_DEFAULT_PORT = 5432


def server_of(url: URL) -> str:
    """The database server a URL points at (``host:port``), whose WAL positions a token names.

    The database name, user and driver do not matter (WAL is per server): sync and async
    sets, or sets on two databases of one server, share tokens.
    """
    query_host = url.query.get("host")
    host = url.host or (query_host if isinstance(query_host, str) else "")
    query_port = url.query.get("port")
    port = url.port or (query_port if isinstance(query_port, str) else _DEFAULT_PORT)
    return f"{host.lower()}:{port}"


class TokenBox:
    """The highest WAL position written in one context, per server (``None`` before any)."""

    __slots__ = ("_carried", "_lock", "_written")

    def __init__(self, position: int | None = None) -> None:
        self._carried = position  # from outside: no server known, so it applies to every one
        self._written: dict[str, int] = {}
        self._lock = threading.Lock()

    def advance(self, position: int, server: str | None = None) -> None:
        """Raise the token of ``server`` (see :func:`server_of`; ``None``: of every server)."""
        with self._lock:
            if server is None:
                if self._carried is None or position > self._carried:
                    self._carried = position
                return
            known = self._written.get(server)
            if known is None or position > known:
                self._written[server] = position

    def position_for(self, server: str) -> int | None:
        """The token reads on ``server`` must see: its own writes', or one carried in."""
        written, carried = self._written.get(server), self._carried
        if written is None or (carried is not None and carried > written):
            return carried
        return written

    @property
    def position(self) -> int | None:
        """The newest position of the box, whatever the server (what leaves the process)."""
        with self._lock:  # another thread may add a server meanwhile
            newest = max(self._written.values(), default=None)
        if newest is None or (self._carried is not None and self._carried > newest):
            return self._carried
        return newest

    @property
    def token(self) -> str | None:
        position = self.position
        return None if position is None else format_lsn(position)


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
