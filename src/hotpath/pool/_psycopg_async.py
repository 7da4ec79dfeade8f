"""``AsyncMeteredConnectionPool`` (and, generated from it by ``tools/async_to_sync.py``,
``MeteredConnectionPool`` in ``_psycopg_sync.py``): psycopg_pool pools that meter every acquire
and hold, and validate only idle connections. See ``_psycopg.py`` for how, and what the twins
share; this module is the one source of both (``make generate``; ``make lint`` fails while
the sync file is stale).
"""

from __future__ import annotations

import time
import weakref
from time import perf_counter
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ._callstack import checkout_hold
from ._errors import ConnectionPoolExhaustedError
from ._psycopg import _INF, _Metering


async def _adetach_and_close(conn: AsyncConnection[Any]) -> None:
    """Close a connection that failed its ping. Detached from the pool first, as psycopg_pool
    does before closing one: with ``close_returns=True``, ``close()`` would otherwise return it
    to the pool, and then the failed-check path would return it a second time."""
    conn._pool = None
    await conn.close()


def _timed_async_connection_class(base: type[AsyncConnection[Any]], pool: _Metering) -> type[Any]:
    owner = weakref.ref(pool)

    class TimedAsyncConnection(base):  # type: ignore[valid-type, misc]
        # When the pool's check should ping it: returned + validate_idle_s (never before
        # its first return: a new connection is not checked).
        hotpath_check_at = _INF

        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            conn = await super().connect(*args, **kwargs)
            metered = owner()
            if metered is not None:
                metered.hotpath_metrics.connection_opened(id(conn), time.perf_counter() - started)
            return conn

        async def close(self) -> None:
            metered = owner()
            if metered is not None and not self.closed:
                metered._hotpath_forget(self)
            await super().close()

    TimedAsyncConnection.__name__ = TimedAsyncConnection.__qualname__ = base.__name__
    return TimedAsyncConnection


class AsyncMeteredConnectionPool(_Metering, AsyncConnectionPool):
    """``psycopg_pool.AsyncConnectionPool`` with hotpath metrics, leak detection and cheap
    checks.

    Same arguments as ``AsyncConnectionPool`` plus ``validate_idle_s`` (``None``: never check;
    a ``check`` you pass yourself runs instead of the idle-based one).
    """

    def __init__(
        self,
        conninfo: Any = "",
        *,
        validate_idle_s: float | None = 0.5,
        connection_class: type[AsyncConnection[Any]] = AsyncConnection,
        check: Any = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._setup_metering(name, validate_idle_s, check)
        super().__init__(
            conninfo,
            connection_class=_timed_async_connection_class(connection_class, self),
            check=check,
            name=name,
            **kwargs,
        )

    async def getconn(self, timeout: float | None = None) -> Any:
        # Inline, as MeteredQueuePool.connect(): every call and attribute counts here.
        hot = self._hotpath_hot
        started = perf_counter()
        try:
            conn: Any = await AsyncConnectionPool.getconn(self, timeout)
            now = perf_counter()
            if now >= conn.hotpath_check_at:
                conn = await self._hotpath_validated(conn, started, timeout)
                now = perf_counter()
        except PoolTimeout as exc:
            raise self.hotpath_metrics.exhausted(
                started, exc, ConnectionPoolExhaustedError
            ) from exc
        hot.acquire_samples.append(now - started)
        # The call-site lookup is one helper shared with the metered QueuePool: its call did
        # not show in `python -m bench pool`'s acquire+release against the lines inlined here
        # (alternating runs), so it is written once.
        hot.holds[conn] = checkout_hold(now) if hot.capture_stacks else (now,)
        return conn

    async def _hotpath_validated(self, conn: Any, started: float, timeout: float | None) -> Any:
        """``conn`` was idle longer than ``validate_idle_s``: ping it; a dead one is discarded
        and the next one taken (and pinged if it was idle too), within the same timeout."""
        while True:
            try:
                await AsyncConnectionPool.check_connection(conn)
            except Exception:
                self.hotpath_metrics.pinged(ok=False)
                self.hotpath_metrics.invalidated()
                await _adetach_and_close(conn)
                # psycopg_pool's path for a failed check
                await self._putconn(conn, from_getconn=True)
            except BaseException:
                # Interrupted mid-ping (KeyboardInterrupt, gevent.Timeout, a cancelled task):
                # give it back, as psycopg_pool's own check loop does, rather than lose it.
                await self._putconn(conn, from_getconn=True)
                raise
            else:
                self.hotpath_metrics.pinged(ok=True)
                return conn
            conn = await AsyncConnectionPool.getconn(
                self, self._hotpath_remaining(started, timeout)
            )
            if perf_counter() < conn.hotpath_check_at:
                return conn

    async def putconn(self, conn: Any) -> None:
        # PoolMetrics.checked_in inlined: this is the hot path.
        hot = self._hotpath_hot
        now = perf_counter()
        hold = hot.holds.pop(conn, None)
        if hold is not None:
            hot.hold_samples.append(now - hold[0])
            if hot.reported:
                self.hotpath_metrics.returned(conn, hold, now)
        conn.hotpath_check_at = now + self._idle_s
        await AsyncConnectionPool.putconn(self, conn)
