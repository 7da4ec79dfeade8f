"""``AsyncCache``: the async twin. Runs the shared flows with redis.asyncio and tasks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

import redis
import redis.asyncio.cluster

from ..concurrent import CircuitOpenError
from . import _checks as checks
from . import _core as core
from ._commands import command_for
from ._core import UNAVAILABLE, CacheCore, Flow, Op
from ._decorator import KeyTemplate
from ._memory import MemoryTier
from ._redis import SCRIPTS, AsyncClient, RedisTier, entry_key
from ._serialize import Serializer
from ._stats import CacheStats
from ._sync import loading, reentrant_error

P = ParamSpec("P")
R = TypeVar("R")

_LEADER_CANCELLED = object()  # a joined load's result when its caller was cancelled


class AsyncCache:
    """The async twin of :class:`hotpath.cache.Cache`: the same options and methods, as
    coroutines; loaders may be sync or async functions."""

    def __init__(
        self,
        l1: MemoryTier | None = None,
        l2: RedisTier | None = None,
        *,
        namespace: str = "hotpath",
        default_ttl: float = 300.0,
        stale_ttl: float | None = None,
        negative_ttl: float | None = 30.0,
        jitter: float = 0.1,
        xfetch_beta: float = 1.0,
        serializer: str | Serializer = "json",
        max_value_bytes: int = 1 << 20,
        wait_timeout: float | None = None,
    ) -> None:
        self._core = CacheCore(
            l1,
            l2,
            namespace=namespace,
            default_ttl=default_ttl,
            stale_ttl=stale_ttl,
            negative_ttl=negative_ttl,
            jitter=jitter,
            xfetch_beta=xfetch_beta,
            serializer=serializer,
            max_value_bytes=max_value_bytes,
            wait_timeout=wait_timeout,
        )
        self._l2 = l2
        self._ns = self._core.namespace
        self._client: AsyncClient | None = l2.async_client() if l2 is not None else None
        self._scripts = (
            {name: self._client.register_script(lua) for name, lua in SCRIPTS.items()}
            if self._client is not None
            else {}
        )
        self._flights: dict[str, tuple[asyncio.Future[Any], int]] = {}  # with its mark
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._listener = self._core.start_channel()

    # -- public API ------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        name = self._core.name(key)
        value = self._core.fresh_from_l1(name)
        if value is core.MISS:
            value, mark = await self._from_l2(name, early=False)
            if type(value) is core.Unserved:
                value = await self._drive(self._core.get_flow(name, value.reply, mark))
        return default if value is core.MISS else value

    async def set(
        self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        checks.ttl(ttl)
        flow = self._core.set_flow(
            self._core.name(key), value, ttl, self._core.tag_names(tuple(tags))
        )
        await self._drive(flow)

    async def delete(self, key: str) -> None:
        await self._drive(self._core.delete_flow(self._core.name(key)))

    async def invalidate_tags(self, *tags: str) -> None:
        await self._drive(self._core.invalidate_flow(self._core.tag_names(tags)))

    @overload
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[R]],
        ttl: float | None = None,
        tags: Iterable[str] = (),
        *,
        stale: bool = True,
    ) -> R: ...

    @overload
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], R],
        ttl: float | None = None,
        tags: Iterable[str] = (),
        *,
        stale: bool = True,
    ) -> R: ...

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[R]] | Callable[[], R],
        ttl: float | None = None,
        tags: Iterable[str] = (),
        *,
        stale: bool = True,
    ) -> R:
        """The cached value, or the (sync or async) loader's, loaded once per key across tasks
        and processes, and stored only if nothing invalidated it meanwhile. ``stale`` as for
        ``Cache.get_or_set``."""
        checks.ttl(ttl)
        name = self._core.name(key)
        value = self._core.fresh_from_l1(name)
        if value is not core.MISS:
            return value  # type: ignore[no-any-return]
        if name in loading.get():
            raise reentrant_error(name)
        joined = self._flights.get(name)
        if joined is not None:
            flight, mark = joined
            if not self._core.joinable(mark, name, self._core.tag_names(tuple(tags))):
                # Invalidated since that load began (perhaps by this very caller): a load of
                # its own, which the Redis lease still keeps to one per key.
                return await self._lead(name, loader, ttl, tags, stale)  # type: ignore[no-any-return]
            self._core.counters.stampede_joins += 1
            while True:
                value = await asyncio.shield(flight)
                if value is not _LEADER_CANCELLED:
                    return value  # type: ignore[no-any-return]
                joined = self._flights.get(name)  # the leader went: load (or join) anew
                if joined is None:
                    break
                flight = joined[0]
        flight = asyncio.get_running_loop().create_future()
        self._flights[name] = (flight, self._core.flight_mark())
        try:
            value = await self._lead(name, loader, ttl, tags, stale)
        except BaseException as error:
            if not flight.done():
                if isinstance(error, asyncio.CancelledError):
                    flight.set_result(_LEADER_CANCELLED)  # its joiners were not cancelled
                else:
                    flight.set_exception(error)
                    flight.exception()  # retrieved: no "never retrieved" warning
            raise
        else:
            flight.set_result(value)
            return value  # type: ignore[no-any-return]
        finally:
            del self._flights[name]

    async def _lead(
        self,
        name: str,
        loader: Callable[[], Awaitable[Any]] | Callable[[], Any],
        ttl: float | None,
        tags: Iterable[str],
        stale: bool = True,
    ) -> Any:
        """As ``Cache._lead``: one GET, served at once when it can be, else the flow."""
        found, mark = await self._from_l2(name, early=stale)
        if type(found) is not core.Unserved:
            return found
        token = loading.set(loading.get() | {name})
        try:
            tag_names = self._core.tag_names(tuple(tags))
            return await self._drive(
                self._core.get_or_set_flow(
                    name, loader, ttl, tag_names, found.reply, mark, stale=stale
                )
            )
        finally:
            loading.reset(token)

    def cached(
        self, ttl: float | None = None, key: str | None = None, tags: Iterable[str] = ()
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Decorator for ``async def`` functions (same templates as ``Cache.cached``)."""

        checks.ttl(ttl)

        def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            template = KeyTemplate(fn, key, tuple(tags))

            @functools.wraps(fn)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                built, built_tags = template.build(args, kwargs)
                return await self.get_or_set(built, lambda: fn(*args, **kwargs), ttl, built_tags)

            return wrapper

        return decorate

    def stats(self) -> CacheStats:
        return self._core.stats()

    async def aclose(self) -> None:
        refreshes = list(self._refreshing.values())
        for task in refreshes:
            task.cancel()
        await asyncio.gather(*refreshes, return_exceptions=True)  # leases given back first
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
            self._listener = None
        if self._l2 is not None:
            await self._l2.aclose()

    async def __aenter__(self) -> AsyncCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the driver ------------------------------------------------------------------------

    async def _drive(self, flow: Flow) -> Any:
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as done:
                return done.value
            result, error = None, None
            if isinstance(op, core.Load):
                began = time.perf_counter()
                try:
                    value = op.loader()
                    if inspect.isawaitable(value):
                        value = await value
                except BaseException as failure:  # cancelled too: the flow gives its lease back
                    error = failure
                else:
                    result = (value, time.perf_counter() - began)
            else:
                result = await self._execute(op)

    async def _execute(self, op: Op) -> Any:
        if isinstance(op, core.Wait):
            up = self._listener is not None and self._listener.connected.is_set()
            timeout = op.timeout if up else min(op.timeout, 0.05)  # no channel: short naps
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(op.waiter.wait(), timeout)
            return None
        if isinstance(op, core.Refresh):
            self._refresh_in_background(op)
            return None
        return await self._guarded(self._redis, op)

    async def _guarded(self, call: Callable[[Any], Awaitable[Any]], arg: Any) -> Any:
        """``await call(arg)`` through the circuit breaker; UNAVAILABLE (counted) if Redis
        fails."""
        assert self._l2 is not None
        try:
            with self._l2.breaker:
                try:
                    return await call(arg)
                except redis.ResponseError as error:
                    if not str(error).startswith("WRONGTYPE"):
                        raise
                    # Redis answered: someone stored another type under an entry's name (the
                    # scripts read through pcall; only the plain GET gets here). A miss.
                    return core.FOREIGN
        except CircuitOpenError:
            self._core.counters.redis_skipped += 1
        except (redis.RedisError, OSError, asyncio.TimeoutError):
            self._core.counters.redis_errors += 1
        except Exception as error:  # e.g. redis-py's async cluster losing a connection's
            # writer while it connects (seen with 50 tasks on cold connections)
            self._core.client_failed(error)
        return UNAVAILABLE

    async def _from_l2(self, name: str, *, early: bool) -> tuple[Any, int | None]:
        """As ``Cache._from_l2``: the common L1 miss in one GET, without a flow."""
        if self._client is None:
            return core.Unserved(None), None
        if self._core.unsent:
            await self._replay()
        mark = self._core.mark_l1()
        reply = await self._guarded(self._client.get, entry_key(self._ns, name))
        return self._core.serve_l2_reply(name, reply, mark, early=early), mark

    async def _replay(self) -> None:
        """As ``Cache._replay``."""
        assert self._l2 is not None
        if self._l2.breaker.state.value == "open":
            return
        for unsent, version, op in self._core.replay_ops():
            self._core.replayed(unsent, version, await self._guarded(self._redis, op))

    async def _redis(self, op: Op) -> Any:
        client = self._client
        assert client is not None
        assert self._l2 is not None
        command = command_for(op, self._ns, int(self._l2.lease_ttl * 1000))
        if command.script is None:
            if command.command == "get":
                return command.parse(await client.get(command.keys[0]))
            if isinstance(client, redis.asyncio.cluster.RedisCluster):
                return command.parse(await client.mget_nonatomic(command.keys))
            return command.parse(await client.mget(command.keys))
        script = self._scripts[command.script]
        if not isinstance(op, core.Acquire):
            return command.parse(await script(keys=command.keys, args=command.args))
        event = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake() -> None:  # called from the listener thread
            loop.call_soon_threadsafe(event.set)

        if op.wait:
            self._core.waiters.arm(op.name, wake)
        try:
            status, data = command.parse(await script(keys=command.keys, args=command.args))
        except BaseException:
            self._core.waiters.disarm(op.name, wake)
            raise
        if status != core.HELD:
            self._core.waiters.disarm(op.name, wake)
        return status, data, event

    def _refresh_in_background(self, op: core.Refresh) -> None:
        if op.name in self._refreshing:
            return
        task = asyncio.get_running_loop().create_task(
            self._drive(self._core.refresh_flow(op.name, op.loader, op.ttl, op.tags))
        )
        self._refreshing[op.name] = task
        task.add_done_callback(lambda _: self._refreshing.pop(op.name, None))
