"""The cache's driver: runs the shared flows of ``_core.CacheCore`` against Redis.

``_async.py`` (redis.asyncio, tasks) is the one source; ``tools/async_to_sync.py`` writes its
sync twin ``_sync.py`` (redis-py, threads) from it: ``make generate``, and ``make lint`` fails
while that file is stale. What differs between threads and tasks is in ``_acompat.py``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import redis

from ..concurrent import BreakerState, CircuitOpenError
from . import _checks as checks
from . import _core as core
from ._acompat import (
    AREDIS_FAILURES,
    LEADER_GONE,
    AChannel,
    AEvent,
    AFlight,
    ALoader,
    ARedisCluster,
    ARefresher,
    ensure_async,
    loading,
    reentrant_error,
)
from ._commands import command_for
from ._core import UNAVAILABLE, CacheCore, Flow, Op
from ._decorator import KeyTemplate
from ._memory import MemoryTier
from ._options import CacheKeywords, CacheOptions
from ._redis import SCRIPTS, AsyncClient, RedisTier, entry_key
from ._stats import CacheStats

if TYPE_CHECKING:
    from typing_extensions import Unpack

P = ParamSpec("P")
R = TypeVar("R")


class AsyncCache:
    """A multi-tier cache. See ``docs/cache.md``.

    The options (``default_ttl``, ``stale_ttl``, ``negative_ttl``, ``jitter``,
    ``xfetch_beta``, ``serializer``, ``refresh_workers``, ...) are the fields of
    :class:`CacheOptions`, where each is described, given as keywords or as
    ``options=CacheOptions(...)`` (keywords override its fields); they are validated once,
    into one frozen object.
    """

    def __init__(
        self,
        l1: MemoryTier | None = None,
        l2: RedisTier | None = None,
        *,
        options: CacheOptions | None = None,
        **keywords: Unpack[CacheKeywords],
    ) -> None:
        chosen = CacheOptions.build(options, keywords)
        self._core = CacheCore(l1, l2, chosen)
        self._l2 = l2
        self._ns = self._core.namespace
        self._client: AsyncClient | None = l2.async_client() if l2 is not None else None
        self._scripts = (
            {name: self._client.register_script(lua) for name, lua in SCRIPTS.items()}
            if self._client is not None
            else {}
        )
        self._flights: dict[str, AFlight] = {}
        self._refresher = ARefresher(chosen.refresh_workers)
        self._channel = AChannel(self._core)

    # -- public API ------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The cached value of ``key`` (which may be ``None``), or ``default`` on a miss."""
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
        """Store ``value`` (write-through to every tier; other processes drop their L1 copy)."""
        checks.ttl(ttl)
        await self._drive(
            self._core.set_flow(self._core.name(key), value, ttl, self._core.tag_names(tuple(tags)))
        )

    async def delete(self, key: str) -> None:
        await self._drive(self._core.delete_flow(self._core.name(key)))

    async def invalidate_tags(self, *tags: str) -> None:
        """Invalidate every entry stored under any of ``tags`` (O(1) per tag)."""
        await self._drive(self._core.invalidate_flow(self._core.tag_names(tags)))

    # ASYNC: loaders may be sync or async functions; the sync twin takes plain ones only.
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

    # ASYNC: (the second overload)
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
        loader: ALoader[R],
        ttl: float | None = None,
        tags: Iterable[str] = (),
        *,
        stale: bool = True,
    ) -> R:
        """The cached value, or the loader's, loaded once per key across callers and
        processes, and stored only if nothing invalidated it meanwhile. ``stale=False``: never
        serve a value past its ttl nor refresh one in the background; the loader runs only in
        this caller (for a loader bound to the caller's state, such as an ORM session)."""
        checks.ttl(ttl)
        name = self._core.name(key)
        value = self._core.fresh_from_l1(name)
        if value is not core.MISS:
            return value  # type: ignore[no-any-return]
        if name in loading.get():
            raise reentrant_error(name)
        if True:  # ASYNC: subscribed before the flight's mark (connecting flushes L1)
            if self._channel.subscribing:
                await self._channel.subscribed()
        # dict.setdefault and pop are atomic: the flights need no lock of their own.
        mine = AFlight(self._core.mark())
        flight = self._flights.setdefault(name, mine)
        if flight is not mine:
            if not self._core.joinable(flight.mark, name, self._core.tag_names(tuple(tags))):
                # Invalidated since that load began (perhaps by this very caller): a load of
                # its own, which the Redis lease still keeps to one per key.
                return await self._lead(name, loader, ttl, tags, stale)  # type: ignore[no-any-return]
            self._core.counters.stampede_joins += 1
            value = await flight.result()
            if True:  # ASYNC: a cancelled leader's joiners load (or join) anew
                while value is LEADER_GONE:
                    flight = self._flights.setdefault(name, mine)
                    if flight is mine:
                        break
                    value = await flight.result()
            if flight is not mine:  # the joined load's result (in the sync twin, always)
                return value  # type: ignore[no-any-return]
        try:
            value = await self._lead(name, loader, ttl, tags, stale)
        except BaseException as error:
            flight.finish(error=error)
            raise
        else:
            flight.finish(value)
            return value  # type: ignore[no-any-return]
        finally:
            del self._flights[name]

    async def _lead(
        self,
        name: str,
        loader: ALoader[Any],
        ttl: float | None,
        tags: Iterable[str],
        stale: bool = True,
    ) -> Any:
        """The single-flight leader's part: one GET, served at once when it can be (the
        common L1 miss), else the whole flow (tags, stale, lease, load)."""
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
        """Decorator: ``@cache.cached(ttl=300, key="user:{user_id}", tags=("user:{user_id}",))``."""

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
        """Hits per tier, misses, loads and load time, stale served, stampede joins, errors."""
        return self._core.stats()

    async def aclose(self) -> None:
        """Finish (sync) or cancel (async) the background refreshes, then stop listening and
        close the Redis clients."""
        await self._refresher.aclose()
        await self._channel.aclose()
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
        if True:  # ASYNC: the constructor did not wait for the channel
            if self._channel.subscribing:
                await self._channel.subscribed()
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as done:
                return done.value
            result, error = None, None
            if type(op) is core.Load:
                began = time.perf_counter()
                try:
                    value = await ensure_async(op.loader)
                except BaseException as failure:  # interrupted too: the flow gives its lease back
                    error = failure
                else:
                    result = (value, time.perf_counter() - began)
            else:
                result = await self._execute(op)

    async def _execute(self, op: Op) -> Any:
        kind = type(op)
        if kind is core.Wait:
            assert isinstance(op, core.Wait)
            # Woken by the holder's fill message; without the channel, short naps instead.
            await op.waiter.wait_at_most(
                op.timeout if self._channel.up() else min(op.timeout, 0.05)
            )
            return None
        if kind is core.Refresh:
            assert isinstance(op, core.Refresh)
            self._refresh_in_background(op)
            return None
        return await self._guarded(self._redis, op)

    async def _guarded(self, call: Callable[[Any], Awaitable[Any]], arg: Any) -> Any:
        """``call(arg)`` through the circuit breaker; UNAVAILABLE (counted) if Redis fails."""
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
        except AREDIS_FAILURES:
            self._core.counters.redis_errors += 1
        except Exception as error:  # a client bug must not reach the caller either (e.g.
            # redis-py's async cluster losing a connection's writer while it connects)
            self._core.client_failed(error)
        return UNAVAILABLE

    async def _from_l2(self, name: str, *, early: bool) -> tuple[Any, int | None]:
        """The common L1 miss in one GET, without a flow or a single-flight: the value, or
        :class:`~hotpath.cache._core.Unserved` for the flow to go on from; and the L1 mark
        taken before the read."""
        if self._client is None:
            return core.Unserved(None), None
        if True:  # ASYNC: the constructor did not wait for the channel
            if self._channel.subscribing:
                await self._channel.subscribed()
        if self._core.unsent:
            await self._replay()
        mark = self._core.mark()
        reply = await self._guarded(self._client.get, entry_key(self._ns, name))
        return self._core.serve_l2_reply(name, reply, mark, early=early), mark

    async def _replay(self) -> None:
        """Send again the writes that did not reach Redis (see ``CacheCore.unsent``), unless
        the circuit is still open."""
        assert self._l2 is not None
        if self._l2.breaker.state is BreakerState.OPEN:
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
            if isinstance(client, ARedisCluster):
                return command.parse(await client.mget_nonatomic(command.keys))
            return command.parse(await client.mget(command.keys))
        script = self._scripts[command.script]
        if not isinstance(op, core.Acquire):
            return command.parse(await script(keys=command.keys, args=command.args))
        # Armed before asking, so a fill landing between our reply and our wait still wakes us.
        event = AEvent()
        if op.wait:
            self._core.waiters.arm(op.name, event.set_from_thread)
        try:
            status, data = command.parse(await script(keys=command.keys, args=command.args))
        except BaseException:
            self._core.waiters.disarm(op.name, event.set_from_thread)
            raise
        if status != core.HELD:
            self._core.waiters.disarm(op.name, event.set_from_thread)
        return status, data, event

    def _refresh_in_background(self, op: core.Refresh) -> None:
        self._refresher.submit(
            op.name,
            lambda: self._drive(self._core.refresh_flow(op.name, op.loader, op.ttl, op.tags)),
        )
