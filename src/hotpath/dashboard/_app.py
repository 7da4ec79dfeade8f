"""The dashboard as a plain ASGI app: the page, its JSON, its vendored assets.

No framework: three routes do not need one, and the app must mount anywhere (Starlette's
``Mount``, FastAPI's ``app.mount``, or served alone by uvicorn in ``hotpath run``). Every URL
the page uses is relative, so it works under any prefix.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import orjson

from .._validate import check_number
from ._errors import DashboardConfigError
from ._history import History

logger = logging.getLogger("hotpath.dashboard")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Source = Callable[[], Mapping[str, Any]]

POLL_SECONDS = 2  # the page's refresh period (it reads it from /api/state)
_MIN_TOKEN = 16
# name -> content type: the only files served (no path is ever joined from a URL)
_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # a token given as ?token= must not leak to another site through the Referer header
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'",
    ),
]
# headers a reverse proxy adds: a request relayed from elsewhere is not a loopback client
# even though it arrives from 127.0.0.1
_PROXY_HEADERS = {b"forwarded", b"x-forwarded-for", b"x-real-ip"}


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("_static").joinpath(name).read_bytes()


def hotpath_dashboard(
    source: Source, *, token: str | None = None, history: int = 300
) -> DashboardApp:
    """The live page of ``source()`` (a RUN STATE) as an ASGI app.

    ``token``: serve clients other than loopback, provided they give it (``Authorization:
    Bearer <token>`` or ``?token=<token>``); loopback clients must give it too. Without a
    token only loopback clients are served. ``history``: samples kept for the charts over
    time (one per poll: 300 is 10 minutes at the page's 2 s).
    """
    return DashboardApp(source, token=token, history=history)


class DashboardApp:
    """``app.mount("/_hotpath", hotpath_dashboard(source))``, or serve it alone."""

    def __init__(self, source: Source, *, token: str | None = None, history: int = 300) -> None:
        if not callable(source):
            raise DashboardConfigError(
                f"source={source!r}: give a function returning the RUN STATE, e.g. "
                "lambda: {'report': profiler.report().to_dict()}"
            )
        if token is not None and (not isinstance(token, str) or len(token) < _MIN_TOKEN):
            raise DashboardConfigError(
                f"token must be a string of at least {_MIN_TOKEN} characters (got "
                f"{'a shorter one' if isinstance(token, str) else type(token).__name__}): "
                "make one with python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        check_number(
            DashboardConfigError,
            "history",
            history,
            integer=True,
            at_least=2,
            meaning="samples kept for the charts over time (2 are needed for a rate)",
        )
        self.source = source
        self.token = token
        self.history = History(history)
        self._assets: dict[str, bytes] = {}
        self._page = _asset("index.html")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets: the server closes the connection
        path = _route_path(scope)
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await _respond(scope, send, 405, b"GET only\n", extra=[(b"allow", b"GET, HEAD")])
            return
        if self.token is None and not _is_loopback(scope):
            await _respond(
                scope,
                send,
                403,
                b"the hotpath dashboard serves loopback clients only: configure a token "
                b"(hotpath_dashboard(source, token=...)) to serve others\n",
            )
            return
        if path.startswith("/static/"):
            await self._static(scope, send, path.removeprefix("/static/"))
            return
        if self.token is not None and not self._authorized(scope):
            await _respond(
                scope,
                send,
                401,
                b"a token is required: Authorization: Bearer <token>, or ?token=<token>\n",
                extra=[(b"www-authenticate", b'Bearer realm="hotpath"')],
            )
            return
        if path == "":  # mounted at /_hotpath and asked for /_hotpath: relative URLs need a /
            query = scope.get("query_string", b"")
            location = (scope.get("root_path", "") + "/").encode() + (
                b"?" + query if query else b""
            )
            await _respond(scope, send, 307, b"", extra=[(b"location", location)])
        elif path == "/":
            await _respond(scope, send, 200, self._page, "text/html; charset=utf-8")
        elif path == "/api/state":
            await self._state(scope, send)
        else:
            await _respond(scope, send, 404, b"not found\n")

    def _authorized(self, scope: Scope) -> bool:
        assert self.token is not None
        expected = self.token.encode()
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return hmac.compare_digest(value[7:].strip(), expected)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token", [""])[-1].encode()
        return hmac.compare_digest(given, expected)

    async def _static(self, scope: Scope, send: Send, name: str) -> None:
        content_type = _STATIC.get(name)
        if content_type is None:
            await _respond(scope, send, 404, b"not found\n")
            return
        body = self._assets.get(name)
        if body is None:
            body = self._assets[name] = _asset(name)
        await _respond(scope, send, 200, body, content_type)

    async def _state(self, scope: Scope, send: Send) -> None:
        try:
            # the source may merge many workers' snapshots: off the event loop
            body = await asyncio.to_thread(self._payload)
        except Exception as exc:
            logger.exception("hotpath dashboard: the state source failed")
            body = orjson.dumps({"error": f"the state source failed: {exc!r}"})
            await _respond(scope, send, 500, body, "application/json")
            return
        await _respond(scope, send, 200, body, "application/json")

    def _payload(self) -> bytes:
        state = self.source()
        self.history.sample(state)
        return orjson.dumps(
            {
                "now": time.time(),
                "poll_s": POLL_SECONDS,
                "state": state,
                "history": self.history.samples(),
            },
            default=str,  # a stray non-JSON value (a Path, a datetime) shows as text
        )


def _route_path(scope: Scope) -> str:
    """The path below the mount point: Starlette keeps the full path in ``path`` and the
    prefix in ``root_path``; other servers give the path below the prefix."""
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


def _is_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False  # a Unix socket or an unknown peer: not known to be this machine
    if any(name in _PROXY_HEADERS for name, _ in scope.get("headers", [])):
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


async def _respond(
    scope: Scope,
    send: Send,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *_HEADERS,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
