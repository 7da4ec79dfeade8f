"""An outer, pure-ASGI clock: a request's wall time as the server sees it, measured apart from
observe, so that what observe's scope accounts for can be checked against it.

A request's time runs from the server handing it to the app until the last byte of its
response body is handed back to the server: what the client waits for, less the transport.
Work the app does after that (observe concluding its scope, Starlette's background tasks) is
not the request's. When an observe scope wraps the app, the sample keeps it (the scope that
was current when the response was sent), so each request's two measurements can be compared.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from ...observe import Profiler, Scope

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]
_KEEP = 100_000


@dataclass
class WallSample:
    """One answered request: its wall time, and the observe scope that recorded it (if any;
    read its ``duration_ms`` and ``breakdown_ms`` once the app has returned)."""

    method: str
    path: str
    wall_ms: float
    scope: Scope | None


class WallClock:
    """``WallClock(app, samples)``: append a :class:`WallSample` per answered HTTP request."""

    def __init__(self, app: ASGIApp, samples: deque[WallSample] | None = None) -> None:
        self.app = app
        self.samples: deque[WallSample] = samples if samples is not None else deque(maxlen=_KEEP)

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        answered: list[float] = []
        observed: list[Scope | None] = []

        async def timed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered.append(perf_counter())
                # called from inside the app: observe's scope of this request is current
                observed.append(Profiler.current_scope())

        await self.app(scope, receive, timed_send)
        if answered:
            self.samples.append(
                WallSample(
                    scope.get("method", "GET"),
                    scope.get("path", ""),
                    (answered[0] - started) * 1000,
                    observed[0],
                )
            )
