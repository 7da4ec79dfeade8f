"""One scope per HTTP request, named by the route template, for ASGI and WSGI apps.

``ASGIMiddleware`` (FastAPI, Starlette) reads the matched route from ``scope["route"]``;
``WSGIMiddleware`` (Flask, any WSGI app) matches the request against a Flask/Werkzeug URL
map when it can see one. Both can add a ``Server-Timing`` header with the time per layer
(``db``, ``redis``, ``http``...) and the query count. The ASGI one also times every step of
the request's coroutine, so a step that blocks the event loop is seen (see ``_loop``).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from functools import partial
from typing import Any

from ._callsite import mark_request_boundary
from ._loop import marks_steps, monitor_for_this_loop, timed_steps
from ._profiler import Profiler
from ._scope import Scope, current_scope

Message = MutableMapping[str, Any]
UNMATCHED = "<unmatched>"
ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]


class ASGIMiddleware:
    """``app.add_middleware(ASGIMiddleware, profiler=profiler)`` or wrap any ASGI app."""

    def __init__(self, app: ASGIApp, profiler: Profiler, *, server_timing: bool = True) -> None:
        self.app = app
        self.profiler = profiler
        self.server_timing = server_timing

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        # Named by the route template once routing has run; until then (and for a plain ASGI
        # app, which has none) by the raw path. Profiler(max_names=...) bounds the names.
        path = scope.get("path", "")
        async with self.profiler.scope(f"{method} {path}") as recording:
            query = scope.get("query_string", b"").decode("latin-1")
            recording.timeline.known_text = f"{path} {query}"
            # named through the ASGI scope, not through the exchange: the exchange holds the
            # recording, and a recording holding it back is a cycle, which only the garbage
            # collector frees (with all the recording holds: seen to make it run 60% more often)
            recording.namer = partial(_asgi_name, method, scope, 200)
            exchange = _Exchange(method, scope, recording, send, self.server_timing)
            app = self.app(scope, receive, exchange)
            # in flight on the loop's monitor: a step that holds the loop is a block. Awaited
            # here rather than through a coroutine of the monitor's: each step of the request
            # would pass through one more frame
            loop = asyncio.get_running_loop()
            monitor = monitor_for_this_loop(loop)
            if marks_steps(monitor):
                await timed_steps(app, recording, monitor)
                return
            monitor.arrive(loop, recording)
            try:
                await app
            finally:
                monitor.leave(recording)


class _Exchange:
    """One request's ``send``, seen on its way out: the response start names the scope (and
    gets the ``Server-Timing`` header), the body's end stops its clock. A callable object
    rather than closures (a cell per variable) or a bound method (one more object): each is
    a container the garbage collector counts while the request runs."""

    __slots__ = ("asgi_scope", "downstream", "method", "recording", "server_timing")

    def __init__(
        self,
        method: str,
        asgi_scope: MutableMapping[str, Any],
        recording: Scope,
        downstream: Callable[[Message], Awaitable[None]],
        server_timing: bool,
    ) -> None:
        self.method = method
        self.asgi_scope = asgi_scope
        self.recording = recording
        self.downstream = downstream
        self.server_timing = server_timing

    async def __call__(self, message: Message) -> None:  # the app's send
        kind = message["type"]
        recording = self.recording
        if kind == "http.response.start":
            recording.name = _asgi_name(self.method, self.asgi_scope, message.get("status", 200))
            if self.server_timing:
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", recording.server_timing().encode()))
                message["headers"] = headers
        await self.downstream(message)
        if kind == "http.response.body" and not message.get("more_body", False):
            # The response is complete: what runs after it (background tasks) is not the
            # request's time nor its queries.
            recording.stop_recording()


def _asgi_name(method: str, scope: MutableMapping[str, Any], status: int) -> str:
    route = getattr(scope.get("route"), "path", None)
    if route:
        return f"{method} {route}"
    if status == 404:  # Starlette found no route: one name for every unknown URL
        return f"{method} {UNMATCHED}"
    return f"{method} {scope.get('path', '')}"


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WSGIMiddleware:
    """``app.wsgi_app = WSGIMiddleware(app.wsgi_app, profiler)`` (Flask) or any WSGI app."""

    def __init__(self, app: WSGIApp, profiler: Profiler, *, server_timing: bool = True) -> None:
        self.app = app
        self.profiler = profiler
        self.server_timing = server_timing
        owner = getattr(app, "__self__", app)  # Flask: app.wsgi_app is a bound method
        self._url_map = getattr(owner, "url_map", None)

    def _route(self, environ: dict[str, Any]) -> str:
        method = environ.get("REQUEST_METHOD", "GET")
        if self._url_map is not None:
            try:
                rule, _ = self._url_map.bind_to_environ(environ).match(return_rule=True)
                return f"{method} {rule.rule}"
            except Exception:  # 404/405: one name for every URL the app does not route
                return f"{method} {UNMATCHED}"
        return f"{method} {environ.get('PATH_INFO', '')}"

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        recording = self.profiler.scope(self._route(environ))
        # The scope is entered in a context of its own, and is the current scope only while
        # the app runs (its call, then each body chunk it produces): a server or test client
        # that reads the body later, or never (Werkzeug's test client stops at the first
        # chunk), must not find it current afterwards, or its next requests and its own
        # queries would nest into it.
        own_context = contextvars.copy_context()
        own_context.run(recording.__enter__)
        recording.timeline.known_text = (
            f"{environ.get('PATH_INFO', '')} {environ.get('QUERY_STRING', '')}"
        )

        def start_with_timing(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            if self.server_timing:
                headers = [*headers, ("Server-Timing", recording.server_timing())]
            return start_response(status, headers, exc_info)

        token = current_scope.set(recording)
        try:
            body = self.app(environ, start_with_timing)
        except BaseException as exc:
            current_scope.reset(token)
            own_context.run(recording.__exit__, type(exc), exc, exc.__traceback__)
            raise
        current_scope.reset(token)
        return _RecordedBody(body, recording, own_context)


class _RecordedBody:
    """A WSGI body whose chunks are produced inside the request's scope (streamed bodies
    are the request's work too). The scope concludes when the body runs out, or when it is
    closed (PEP 3333 servers always close it) or dropped unread (what a test does with
    ``client.get(url).status_code``), whichever comes first."""

    def __init__(self, body: Iterable[bytes], scope: Scope, own_context: contextvars.Context):
        self._body = body
        self._chunks = iter(body)
        self._scope = scope
        self._own_context = own_context
        self._error: BaseException | None = None
        self._body_closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        token = current_scope.set(self._scope)
        try:
            chunk = next(self._chunks)
        except StopIteration:
            current_scope.reset(token)
            self._conclude()
            raise
        except BaseException as exc:
            current_scope.reset(token)
            self._error = exc  # the scope concludes with it when the server closes the body
            raise
        current_scope.reset(token)
        return chunk

    def close(self) -> None:
        if self._body_closed:
            return
        self._body_closed = True
        close = getattr(self._body, "close", None)
        try:
            if close is not None:
                token = None if self._scope.closed else current_scope.set(self._scope)
                try:
                    close()
                finally:
                    if token is not None:
                        current_scope.reset(token)
        finally:
            self._conclude()

    def __del__(self) -> None:
        self.close()

    def _conclude(self) -> None:
        if self._scope.closed:
            return
        error = self._error
        tb = error.__traceback__ if error is not None else None
        self._own_context.run(self._scope.__exit__, type(error) if error else None, error, tb)


mark_request_boundary(
    ASGIMiddleware.__call__, WSGIMiddleware.__call__, _RecordedBody.__next__, _RecordedBody.close
)
