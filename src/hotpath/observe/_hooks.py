"""Process-wide hooks that time a request's work outside its SQL statements: connection
set-up and pool wait (SQLAlchemy), Redis commands (redis-py), outbound HTTP (httpx,
requests, aiohttp), and hotpath.cache's lookups (hit or load, for the cache_miss detector).

Why not OpenTelemetry's instrumentation packages: they hook the same functions (httpx's
``Client.send``-level transport, ``requests.Session.send``, redis-py's ``execute_command``
and pipelines, an aiohttp ``TraceConfig``) but make an SDK span per call (an object with
attributes, ids and a processor pass; docs/observe.md has the measured cost) where this needs
a tuple on a list, and each
instrumentor is a process singleton a user's own OpenTelemetry set-up would collide with.
These wrappers use ``wrapt`` (what those packages use) and its post-import hooks, so the
import order does not matter, and they stack with OpenTelemetry's when both are installed.
Outside a scope each costs one ContextVar read.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
from functools import lru_cache
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

import wrapt
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool, Pool

from ._callsite import SiteMemo, capture_call_site
from ._records import Layer
from ._scope import Scope, current_scope
from ._timeline import IoOp, recording_scopes
from ._values import body_values, text_values

# read per query and per request: bound once (see ``_records.LAYERS``)
_CONNECT, _HTTP, _POOL_WAIT, _REDIS = Layer.CONNECT, Layer.HTTP, Layer.POOL_WAIT, Layer.REDIS


logger = logging.getLogger("hotpath.observe")

_installed = False
_install_lock = threading.Lock()
_CONNECT_STARTED = "hotpath_connect_started"
# a pool wait this long is worth a stack walk (the first one in a scope names the site)
_WAIT_SITE_S = 0.001


def install() -> None:
    """Install every hook once per process (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
        wrapt.wrap_function_wrapper(Engine, "raw_connection", _raw_connection)
        event.listen(Engine, "do_connect", _before_connect)
        event.listen(Pool, "connect", _after_connect)
        for module, hook in _CLIENT_HOOKS.items():
            wrapt.register_post_import_hook(_guarded(hook), module)


def _guarded(hook: Any) -> Any:
    def install_hook(module: Any) -> None:
        try:
            hook(module)
        except Exception:  # a client version we do not know: its time stays in "other"
            logger.warning("hotpath: could not time %s calls", module.__name__, exc_info=True)

    return install_hook


def _span(scope: Scope, layer: Layer, started: float, ended: float) -> Scope | None:
    """Add the span to every recording scope from ``scope`` outwards; the innermost of them
    (None: none records), which gets the operation's details."""
    span = (layer, started, ended)
    if scope.parent is None:  # one scope (a request's): no walk up the nesting
        if scope.recording:
            scope.timeline.add_span(span)
            return scope
        return None
    inner = None
    for recording in recording_scopes(scope):
        recording.timeline.add_span(span)
        if inner is None:
            inner = recording
    return inner


def _innermost(scope: Scope | None) -> Scope | None:
    if scope is not None and scope.recording:
        return scope
    for recording in recording_scopes(scope):
        return recording
    return None


# -- SQLAlchemy: pool wait and connection set-up ----------------------------------------------


def _raw_connection(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    scope = current_scope.get()
    if scope is None:
        return wrapped(*args, **kwargs)
    inner = _innermost(scope)
    connects = inner.timeline.connects if inner is not None else 0
    idle = getattr(instance.pool, "checkedin", None)
    exhausted = callable(idle) and idle() == 0 and _at_limit(instance.pool)
    scope.timeline.connecting += 1
    started = perf_counter()
    try:
        return wrapped(*args, **kwargs)
    finally:
        ended = perf_counter()
        scope.timeline.connecting -= 1
        _span(scope, _POOL_WAIT, started, ended)
        if inner is not None and inner.timeline.connects > connects:
            timeline = inner.timeline
            timeline.connect_cause = timeline.connect_cause or _connect_cause(instance)
            # set-up goes on after the DBAPI connect (the dialect's first_connect and
            # on_connect: server version, type codecs), until the connection is handed out
            if timeline.connect_started is not None:
                _span(scope, _CONNECT, timeline.connect_started, ended)
                timeline.connect_started = None
        if inner is not None and exhausted and ended - started >= _WAIT_SITE_S:
            timeline = inner.timeline
            timeline.pool_waits += 1
            if timeline.pool_wait_site is None:
                timeline.pool_wait_site = capture_call_site()
            pool = instance.pool
            size = getattr(pool, "size", None)
            overflow = getattr(pool, "_max_overflow", None)
            timeline.pool_size = (
                f"{type(pool).__name__} pool_size={size()} max_overflow={overflow}"
                if callable(size)
                else type(pool).__name__
            )


def _at_limit(pool: Any) -> bool:
    """Whether a QueuePool has every connection it may open checked out (a checkout then
    waits); pools without that notion never make a request wait."""
    size, overflow = getattr(pool, "size", None), getattr(pool, "overflow", None)
    max_overflow = getattr(pool, "_max_overflow", None)  # QueuePool's, SQLAlchemy 2.0-2.1
    if not (callable(size) and callable(overflow)) or max_overflow is None:
        return False
    return bool(max_overflow >= 0 and overflow() >= max_overflow)


# engines seen connecting, per URL: many engines for one URL is an engine made per request
_engines_per_url: dict[str, set[int]] = {}
_ENGINES_PER_REQUEST = 3


def _connect_cause(engine: Any) -> str | None:
    """Why a checkout had to open a connection, when that is a pattern rather than a pool
    filling up: a pool that keeps none, or a new engine (and pool) per request."""
    if isinstance(engine.pool, NullPool):
        return "NullPool: every checkout opens a new connection"
    url = engine.url.render_as_string(hide_password=True)
    engines = _engines_per_url.setdefault(url, set())
    if len(engines) <= _ENGINES_PER_REQUEST:
        engines.add(id(engine))
    if len(engines) > _ENGINES_PER_REQUEST:
        return f"more than {_ENGINES_PER_REQUEST} engines for one URL: an engine per request"
    return None


def _before_connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
    if record is not None and current_scope.get() is not None:
        record.info[_CONNECT_STARTED] = perf_counter()


def _after_connect(dbapi_connection: Any, record: Any) -> None:
    started = record.info.pop(_CONNECT_STARTED, None) if record is not None else None
    if started is None:
        return
    scope = current_scope.get()
    if scope is None:
        return
    inner = _innermost(scope)
    if inner is not None:
        inner.timeline.connects += 1
        inner.timeline.connect_started = started
        if inner.timeline.connect_site is None:
            inner.timeline.connect_site = capture_call_site()


# -- redis-py --------------------------------------------------------------------------------


# where each kind of Redis command and each cached thing is issued (see SiteMemo)
_redis_sites = SiteMemo()
_cache_sites = SiteMemo()


def _redis_command(args: Any) -> str:
    """What a Redis call does, by command and key template (``GET user:{n}``); a pipeline's
    commands are its own."""
    if not args:
        return "pipeline"
    key = args[1] if len(args) > 1 else ""
    return f"{args[0]} {key_template(key) if isinstance(key, str) else type(key).__name__}"


def _redis_done(scope: Scope, started: float, args: Any) -> None:
    ended = perf_counter()
    inner = _span(scope, _REDIS, started, ended)
    if inner is None:
        return
    timeline = inner.timeline
    ms = (ended - started) * 1000
    # the site of the slowest command, walked for a slow one when none is known yet or when
    # this one is twice as slow as the last walked (a loaded machine makes every command
    # "the slowest so far" in turn: a walk each was most of a cached request's overhead)
    if ms >= _WAIT_SITE_S * 1000 and ms > 2 * timeline.redis_slowest_ms:
        timeline.redis_slowest_ms = ms
        timeline.redis_site = _redis_sites.site(_redis_command(args))


def _redis_sync(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    scope = current_scope.get()
    if scope is None:
        return wrapped(*args, **kwargs)
    started = perf_counter()
    try:
        return wrapped(*args, **kwargs)
    finally:
        _redis_done(scope, started, args)


async def _redis_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    scope = current_scope.get()
    if scope is None:
        return await wrapped(*args, **kwargs)
    started = perf_counter()
    try:
        return await wrapped(*args, **kwargs)
    finally:
        _redis_done(scope, started, args)


def _hook_redis(module: Any) -> None:
    import redis.client  # noqa: PLC0415 - only once redis is imported

    wrapt.wrap_function_wrapper(redis.client, "Redis.execute_command", _redis_sync)
    wrapt.wrap_function_wrapper(redis.client, "Pipeline.execute", _redis_sync)
    wrapt.register_post_import_hook(_guarded(_hook_redis_asyncio), "redis.asyncio.client")
    wrapt.register_post_import_hook(_guarded(_hook_redis_cluster), "redis.cluster")


def _hook_redis_asyncio(module: Any) -> None:
    wrapt.wrap_function_wrapper(module, "Redis.execute_command", _redis_async)
    wrapt.wrap_function_wrapper(module, "Pipeline.execute", _redis_async)


def _hook_redis_cluster(module: Any) -> None:
    wrapt.wrap_function_wrapper(module, "RedisCluster.execute_command", _redis_sync)


# -- outbound HTTP -------------------------------------------------------------------------------

_ID_SEGMENT = re.compile(
    r"^(\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}|[A-Za-z0-9_\-]{24,})$"
)


# a request's URLs and cache keys repeat (hot keys, one payment URL): templated once each
@lru_cache(maxsize=4096)
def url_template(method: str, url: str) -> tuple[str, str]:
    """("GET http://host:port/users/{id}/orders", "http://host:port") for a URL: ids,
    UUIDs and hashes in the path become ``{id}``; the query string is dropped."""
    parts = urlsplit(url)
    path = "/".join("{id}" if _ID_SEGMENT.match(p) else p for p in parts.path.split("/"))
    origin = f"{parts.scheme}://{parts.netloc}"
    return f"{method.upper()} {origin}{path or '/'}", origin


def _http_op(
    scope: Scope,
    method: str,
    url: str,
    started: float,
    sent: str,
    received: bytes | None,
    timeout: bool | None,
    *,
    awaited: bool,
) -> None:
    ended = perf_counter()
    inner = _span(scope, _HTTP, started, ended)
    if inner is None:
        return
    target, origin = url_template(method, url)
    inner.timeline.add_op(
        IoOp(
            _HTTP,
            started,
            ended,
            target,
            target,
            origin,
            capture_call_site(),
            inputs_from=text_values,
            inputs_of=f"{url} {sent}",
            outputs_from=body_values,
            outputs_of=received,
            timeout=timeout,
            awaited=awaited,
        )
    )


def _httpx_timeout(request: Any) -> bool | None:
    timeout = request.extensions.get("timeout")
    if not isinstance(timeout, dict):
        return None
    return any(value is not None for value in timeout.values())


def _httpx_body(response: Any) -> bytes | None:
    try:
        return bytes(response.content)
    except Exception:  # streamed and not read: unknown
        return None


def _httpx_sent(request: Any) -> str:
    try:
        return bytes(request.content[:16384]).decode("utf-8", "replace")
    except Exception:
        return ""


def _httpx_done(
    scope: Scope, request: Any, started: float, response: Any, *, awaited: bool
) -> None:
    _http_op(
        scope,
        request.method,
        str(request.url),
        started,
        _httpx_sent(request),
        _httpx_body(response) if response is not None else None,
        _httpx_timeout(request),
        awaited=awaited,
    )


def _httpx_sync(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    scope = current_scope.get()
    if scope is None:
        return wrapped(*args, **kwargs)
    request = args[0] if args else kwargs["request"]
    started = perf_counter()
    response = None
    try:
        response = wrapped(*args, **kwargs)
        return response
    finally:
        _httpx_done(scope, request, started, response, awaited=False)


async def _httpx_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    scope = current_scope.get()
    if scope is None:
        return await wrapped(*args, **kwargs)
    request = args[0] if args else kwargs["request"]
    started = perf_counter()
    response = None
    try:
        response = await wrapped(*args, **kwargs)
        return response
    finally:
        _httpx_done(scope, request, started, response, awaited=True)


def _hook_httpx(module: Any) -> None:
    wrapt.wrap_function_wrapper(module, "Client.send", _httpx_sync)
    wrapt.wrap_function_wrapper(module, "AsyncClient.send", _httpx_async)


def _requests_send(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    scope = current_scope.get()
    if scope is None:
        return wrapped(*args, **kwargs)
    request = args[0] if args else kwargs["request"]
    started = perf_counter()
    response = None
    try:
        response = wrapped(*args, **kwargs)
        return response
    finally:
        body = request.body
        sent = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        received = None
        if response is not None and not kwargs.get("stream"):
            received = response.content
        _http_op(
            scope,
            request.method,
            request.url,
            started,
            sent[:16384],
            received,
            kwargs.get("timeout") is not None,
            awaited=False,
        )


def _hook_requests(module: Any) -> None:
    import requests.sessions  # noqa: PLC0415

    wrapt.wrap_function_wrapper(requests.sessions, "Session.send", _requests_send)


def _hook_aiohttp(module: Any) -> None:
    import aiohttp  # noqa: PLC0415

    async def on_start(session: Any, context: Any, params: Any) -> None:
        context.hotpath_scope = current_scope.get()
        context.hotpath_started = perf_counter()

    async def on_end(session: Any, context: Any, params: Any) -> None:
        scope = getattr(context, "hotpath_scope", None)
        if scope is None:
            return
        timeout = session.timeout
        bounded = any(
            getattr(timeout, name, None) is not None
            for name in ("total", "sock_read", "sock_connect", "connect")
        )
        # the body is read later by the application: what it returned is not known here
        _http_op(
            scope,
            params.method,
            str(params.url),
            context.hotpath_started,
            "",
            None,
            bounded,
            awaited=True,
        )

    def add_trace(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        config = aiohttp.TraceConfig()
        config.on_request_start.append(on_start)
        config.on_request_end.append(on_end)
        kwargs["trace_configs"] = [*(kwargs.get("trace_configs") or []), config]
        return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper(aiohttp, "ClientSession.__init__", add_trace)


# -- hotpath.cache ------------------------------------------------------------------------------

_KEY_PARTS = re.compile(r"\d+|[0-9a-fA-F]{8,}")


@lru_cache(maxsize=4096)
def key_template(key: str) -> str:
    """``user:{n}`` for ``user:42``: the lookups of one cached thing share a name."""
    return _KEY_PARTS.sub("{n}", key)[:80]


class _LoaderClock:
    """Wraps a cache loader: whether it ran (a miss) and for how long."""

    __slots__ = ("loader", "ms", "ran")

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.ran = False
        self.ms = 0.0

    def __call__(self) -> Any:
        self.ran = True
        started = perf_counter()
        result = self.loader()
        if inspect.isawaitable(result):
            return self._awaited(result, started)
        self.ms = (perf_counter() - started) * 1000
        return result

    async def _awaited(self, result: Any, started: float) -> Any:
        try:
            return await result
        finally:
            self.ms = (perf_counter() - started) * 1000


def _cache_lookup(scope: Scope, key: str, clock: _LoaderClock, started: float) -> None:
    inner = _innermost(scope)
    if inner is None:
        return
    template = key_template(key)
    site = _cache_sites.site(template) if clock.ran else None
    inner.timeline.add_cache_lookup(
        (template, not clock.ran, (perf_counter() - started) * 1000, clock.ms, site)
    )


def _split_lookup(args: Any, kwargs: Any) -> tuple[str, Any, tuple[Any, ...], dict[str, Any]]:
    if len(args) > 1 and not kwargs:  # get_or_set(key, loader, ...): the usual call
        return args[0], args[1], args[2:], kwargs
    kwargs = dict(kwargs)  # the caller's own dict is not ours to pop from
    key = args[0] if args else kwargs.pop("key")
    loader = args[1] if len(args) > 1 else kwargs.pop("loader")
    return key, loader, tuple(args[2:]), kwargs


def _cache_sync(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    scope = current_scope.get()
    if scope is None:
        return wrapped(*args, **kwargs)
    key, loader, rest, kwargs = _split_lookup(args, kwargs)
    clock = _LoaderClock(loader)
    started = perf_counter()
    try:
        return wrapped(key, clock, *rest, **kwargs)
    finally:
        _cache_lookup(scope, key, clock, started)


async def _cache_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    scope = current_scope.get()
    if scope is None:
        return await wrapped(*args, **kwargs)
    key, loader, rest, kwargs = _split_lookup(args, kwargs)
    clock = _LoaderClock(loader)
    started = perf_counter()
    try:
        return await wrapped(key, clock, *rest, **kwargs)
    finally:
        _cache_lookup(scope, key, clock, started)


def _hook_cache_sync(module: Any) -> None:
    wrapt.wrap_function_wrapper(module, "Cache.get_or_set", _cache_sync)


def _hook_cache_async(module: Any) -> None:
    wrapt.wrap_function_wrapper(module, "AsyncCache.get_or_set", _cache_async)


_CLIENT_HOOKS = {
    "hotpath.cache._sync": _hook_cache_sync,
    "hotpath.cache._async": _hook_cache_async,
    "redis.client": _hook_redis,
    "httpx": _hook_httpx,
    "requests": _hook_requests,
    "aiohttp": _hook_aiohttp,
}
