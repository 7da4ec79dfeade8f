"""What really differs between the cache's twins, both sides side by side.

``_async.py`` is the one source of the drivers; ``tools/async_to_sync.py`` writes ``_sync.py``
from it, renaming each async name here to its sync partner (``AFlight`` -> ``Flight``, ...).
Everything else the twins do is the same code.

- single-flight: a thread's load that other threads join (a lock) / a task's (an event; a
  cancelled leader's joiners are not cancelled, they load or join anew);
- background refreshes: a pool of ``refresh_workers`` threads / at most that many tasks;
- the invalidation channel: both listen on a daemon thread (``_listener.Listener``); the sync
  constructor waits up to ``SUBSCRIBE_WAIT_S`` for the subscription, the async one never
  blocks its event loop: the first call that reaches Redis awaits it instead;
- the event a caller waiting for another process's load sleeps on, woken from the listener
  thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeAlias, TypeVar, overload

import redis
import redis.asyncio.cluster
import redis.cluster

from .._timeouts import wait_within
from ._errors import CacheError
from ._listener import Listener
from ._redis import channel_name

if TYPE_CHECKING:
    from ._core import CacheCore

P = ParamSpec("P")
R = TypeVar("R")

# A loader: the sync twin calls it, the async one awaits what it returns if it is awaitable.
Loader: TypeAlias = Callable[[], R]
ALoader: TypeAlias = Callable[[], Awaitable[R]] | Callable[[], R]

RedisCluster = redis.cluster.RedisCluster
ARedisCluster = redis.asyncio.cluster.RedisCluster

# What a failed Redis call raises (on Python 3.10 asyncio's timeout is not an OSError).
REDIS_FAILURES: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
AREDIS_FAILURES: tuple[type[BaseException], ...] = (*REDIS_FAILURES, asyncio.TimeoutError)

# The first calls may use L1 once subscribed: how long a new cache waits for that.
SUBSCRIBE_WAIT_S = 1.0

LEADER_GONE: Any = object()  # a joined load's result when its (async) leader was cancelled

# The keys whose loader is running in this context: a loader asking for its own key would
# wait for itself forever.
loading: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "hotpath_cache_loading", default=frozenset()
)


@overload
async def ensure_async(f: Callable[P, Awaitable[R]], *args: P.args, **kwargs: P.kwargs) -> R: ...
@overload
async def ensure_async(f: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R: ...
async def ensure_async(f: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> Any:
    """``f(...)``, awaited if it returns an awaitable (the sync twin calls ``f`` directly)."""
    value = f(*args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value


# -- single-flight -------------------------------------------------------------------------


class Flight:
    """One thread's load of a key that other threads join: a lock the leader holds until the
    result is in (a ``Future`` costs far more to make, on every L2 read of ``get_or_set``)."""

    __slots__ = ("_done", "_error", "_value", "mark")

    def __init__(self, mark: int) -> None:
        self.mark = mark  # the invalidations this load may not have seen start after it
        self._done = threading.Lock()
        self._done.acquire()
        self._value: Any = None
        self._error: BaseException | None = None

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error
        self._done.release()

    def result(self) -> Any:
        with self._done:  # released once the leader is done; each joiner passes through
            pass
        if self._error is not None:
            raise self._error
        return self._value


class AFlight:
    """One task's load of a key that other tasks join. A joiner's cancellation is its own; a
    cancelled leader's joiners get ``LEADER_GONE`` and load (or join) anew."""

    __slots__ = ("_done", "_error", "_value", "mark")

    def __init__(self, mark: int) -> None:
        self.mark = mark
        self._done = asyncio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        if isinstance(error, asyncio.CancelledError):  # its joiners were not cancelled
            value, error = LEADER_GONE, None
        self._value, self._error = value, error
        self._done.set()

    async def result(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


# -- background refreshes ------------------------------------------------------------------


class Refresher:
    """Stale-while-revalidate refreshes on ``workers`` threads, one at a time per key."""

    def __init__(self, workers: int) -> None:
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="hotpath.cache")

    def submit(self, name: str, refresh: Callable[[], Any]) -> None:
        with self._lock:
            if name in self._running:
                return
            self._running.add(name)

        def run() -> None:
            try:
                refresh()
            finally:
                with self._lock:
                    self._running.discard(name)

        try:
            self._executor.submit(run)
        except RuntimeError:  # closed
            with self._lock:
                self._running.discard(name)

    def close(self) -> None:
        self._executor.shutdown(wait=True)  # the refreshes under way finish first


class ARefresher:
    """Stale-while-revalidate refreshes as tasks, at most ``workers`` at once, one per key."""

    def __init__(self, workers: int) -> None:
        self._running: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(workers)
        self._closed = False

    def submit(self, name: str, refresh: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        if self._closed or name in self._running:
            return

        async def run() -> None:
            async with self._slots:
                await refresh()

        task = asyncio.get_running_loop().create_task(run())
        self._running[name] = task
        task.add_done_callback(lambda _: self._running.pop(name, None))

    async def aclose(self) -> None:
        self._closed = True
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)  # leases given back first


# -- the invalidation channel --------------------------------------------------------------


def _listener(core: CacheCore) -> Listener | None:
    if core.l2 is None:
        return None
    return Listener(
        core.l2.listener_client().pubsub,
        channel_name(core.namespace),
        core.on_message,
        core.on_connect,
        core.on_disconnect,
        core.l2.health_interval,
        core.on_unreadable,
    )


class Channel:
    """The invalidation channel's listener thread; the constructor waits for the subscription
    (up to ``SUBSCRIBE_WAIT_S``), so the first calls can use L1."""

    def __init__(self, core: CacheCore) -> None:
        self._listener = _listener(core)
        if self._listener is not None:
            self._listener.start()
            self._listener.connected.wait(SUBSCRIBE_WAIT_S)

    def up(self) -> bool:
        return self._listener is not None and self._listener.connected.is_set()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


class AChannel:
    """The same listener thread, started without waiting: a constructor must not block an
    event loop. ``subscribing`` stays true until a call awaited :meth:`subscribed`."""

    def __init__(self, core: CacheCore) -> None:
        self._listener = _listener(core)
        self.subscribing = self._listener is not None
        self._deadline: float | None = None  # set by the first call that waits
        self._subscribed: asyncio.Future[bool] | None = None
        if self._listener is not None:
            self._listener.start()

    def up(self) -> bool:
        return self._listener is not None and self._listener.connected.is_set()

    async def subscribed(self) -> None:
        """Wait (without blocking the loop) for the first subscription, up to what is left of
        ``SUBSCRIBE_WAIT_S`` from the first call; concurrent first calls share one wait.
        From the first call, not from the constructor: caches made together and used at once
        on a busy machine each get their full wait (a listener connecting during a read or
        load refuses its L1 fill, so the next call reads Redis again)."""
        listener = self._listener
        if listener is not None and not listener.connected.is_set():
            if self._subscribed is None:
                if self._deadline is None:
                    self._deadline = time.monotonic() + SUBSCRIBE_WAIT_S
                left = max(self._deadline - time.monotonic(), 0.0)
                self._subscribed = asyncio.ensure_future(
                    asyncio.to_thread(listener.connected.wait, left)
                )
            await asyncio.shield(self._subscribed)
        self.subscribing = False

    async def aclose(self) -> None:
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
            self._listener = None


# -- waiting for another process's load ----------------------------------------------------


class Event(threading.Event):
    """What a caller waiting for another process's load sleeps on."""

    set_from_thread = threading.Event.set  # the listener thread wakes it


class AEvent(asyncio.Event):
    """The async side: woken from the listener thread through its loop, and with a
    ``wait_at_most`` that ``threading.Event.wait(timeout)`` is its sync twin of."""

    def __init__(self) -> None:
        super().__init__()
        self._loop_now = asyncio.get_running_loop()

    def set_from_thread(self) -> None:
        self._loop_now.call_soon_threadsafe(self.set)

    async def wait_at_most(self, timeout: float) -> bool:
        try:
            await wait_within(self.wait(), timeout)
        except asyncio.TimeoutError:  # TimeoutError itself from 3.11
            return False
        return True


def reentrant_error(name: str) -> CacheError:
    return CacheError(
        f"the loader of cache key {name!r} asked the cache for {name!r} again; it would wait "
        "for itself forever: load the value directly inside its own loader"
    )
