"""Carry the read-your-writes token across HTTP requests, in a cookie and a response header.

Each request runs in its own token scope (:func:`use_token`) seeded from the request's cookie
(or header, for API clients); when the request committed a write, the response sets the new
token, so the same user's next request reads its own write even on another process. A
malformed token from a client is ignored and logged (at INFO, cut short): it can only concern
that client's own reads. A well-formed token beyond the primary's position (forged) is cut to
that position when a read checks it (see ``RouterCore.cap_token``), so it cannot keep the
client's reads on the primary, nor hold a replica connection for a whole ``mode="wait"``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from contextlib import AbstractContextManager
from http.cookies import CookieError, SimpleCookie
from typing import Any

from ._errors import TokenError
from ._lsn import parse_lsn, shown
from ._tokens import TokenBox, use_token

log = logging.getLogger("hotpath.routing")

COOKIE = "hotpath_lsn"
HEADER = "x-hotpath-lsn"

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _incoming(cookie_header: str | None, header: str | None, cookie: str) -> str | None:
    if header:
        return header.strip()
    if not cookie_header:
        return None
    try:
        jar = SimpleCookie(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(cookie)
    return morsel.value if morsel else None


def _set_cookie(cookie: str, token: str, max_age_s: int, secure: bool) -> str:
    flags = "; Secure" if secure else ""
    return f"{cookie}={token}; Max-Age={max_age_s}; Path=/; HttpOnly; SameSite=Lax{flags}"


class _TokenCarrier:
    def __init__(self, cookie: str, header: str, max_age_s: int, secure: bool) -> None:
        self.cookie = cookie
        self.header = header.lower()
        self.max_age_s = max_age_s
        self.secure = secure

    def scope_for(
        self, cookie_header: str | None, header: str | None
    ) -> AbstractContextManager[TokenBox]:
        token = _incoming(cookie_header, header, self.cookie)
        try:
            if token is not None:
                parse_lsn(token)
        except TokenError:
            log.info("hotpath.routing: ignored a malformed token from a client: %s", shown(token))
            token = None
        return use_token(token)

    def response_headers(self, box: TokenBox, before: int | None) -> list[tuple[str, str]]:
        token = box.token
        if token is None or box.position == before:
            return []
        return [
            ("set-cookie", _set_cookie(self.cookie, token, self.max_age_s, self.secure)),
            (self.header, token),
        ]


class ASGITokenMiddleware:
    """``app.add_middleware(ASGITokenMiddleware)`` (FastAPI, Starlette) or wrap any ASGI app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        cookie: str = COOKIE,
        header: str = HEADER,
        max_age_s: int = 60,
        secure: bool = False,
    ) -> None:
        self.app = app
        self._carrier = _TokenCarrier(cookie, header, max_age_s, secure)

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        carrier = self._carrier
        with carrier.scope_for(headers.get("cookie"), headers.get(carrier.header)) as box:
            before = box.position

            async def send_with_token(message: Message) -> None:
                if message["type"] == "http.response.start":
                    extra = carrier.response_headers(box, before)
                    message["headers"] = [
                        *message.get("headers", []),
                        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra),
                    ]
                await send(message)

            await self.app(scope, receive, send_with_token)


class WSGITokenMiddleware:
    """``app.wsgi_app = WSGITokenMiddleware(app.wsgi_app)`` (Flask) or wrap any WSGI app."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        cookie: str = COOKIE,
        header: str = HEADER,
        max_age_s: int = 60,
        secure: bool = False,
    ) -> None:
        self.app = app
        self._carrier = _TokenCarrier(cookie, header, max_age_s, secure)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        carrier = self._carrier
        header_key = "HTTP_" + carrier.header.upper().replace("-", "_")
        with carrier.scope_for(environ.get("HTTP_COOKIE"), environ.get(header_key)) as box:
            before = box.position

            def start_with_token(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
                return start_response(status, headers + carrier.response_headers(box, before), *exc)

            # Consume the body inside the scope: a streamed body may still write.
            body = self.app(environ, start_with_token)
            try:
                return list(body)
            finally:
                # PEP 3333: whoever consumes the iterable calls its close() (the server now
                # gets a list, so it is ours to call): streamed responses release their
                # resources, and frameworks run their teardown (Flask's request context).
                close = getattr(body, "close", None)
                if close is not None:
                    close()
