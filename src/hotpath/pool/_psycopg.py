"""psycopg_pool pools that meter every acquire and hold, and validate only idle connections.

psycopg_pool has no per-checkout hooks, so these subclasses override the public ``getconn()``
/ ``putconn()`` (which ``connection()`` uses) and pass a ``connection_class`` that times each
connect and reports each close. Validation happens in ``getconn()`` itself, only for a
connection returned more than ``validate_idle_s`` ago: a ping (psycopg_pool's
``check_connection``), and a connection that fails it is discarded the way psycopg_pool
discards one that fails its ``check`` callback. (Not through that callback: it would be a
Python call and a clock read on every checkout, a quarter of a 2 µs acquire+release.)
A ``check`` you pass runs instead, as psycopg_pool's own. Lifetime jitter and reconnect
backoff are psycopg_pool's own (``max_lifetime``, ``reconnect_timeout``).
"""

from __future__ import annotations

import sys
import time
import weakref
from time import perf_counter
from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from . import _housekeeping
from ._callstack import application_files, checkout_stack, distance_hint, verified_sites
from ._errors import ConnectionPoolExhaustedError
from ._metrics import PoolMetrics, PoolShape
from ._options import check_validate_idle_s

_INF = float("inf")
_getframe = sys._getframe


def _detach_and_close(conn: Connection[Any]) -> None:
    """Close a connection that failed its ping. Detached from the pool first, as psycopg_pool
    does before closing one: with ``close_returns=True``, ``close()`` would otherwise return it
    to the pool, and then the failed-check path would return it a second time."""
    conn._pool = None
    conn.close()


class _Metering:
    """State and logic shared by the sync and async metered pools."""

    hotpath_metrics: PoolMetrics
    _idle_s: float

    def _setup_metering(self, name: str | None, validate_idle_s: float | None, check: Any) -> None:
        check_validate_idle_s(validate_idle_s)
        # A check the user passed runs instead of hotpath's idle ping (psycopg_pool runs it).
        self.hotpath_user_check = check is not None
        self.validate_idle_s = None if self.hotpath_user_check else validate_idle_s
        # No leak checks until instrument_pool() asks for them, but folded from the start:
        # samples must not pile up in a pool nobody instruments.
        self.hotpath_metrics = PoolMetrics(
            name or "psycopg_pool", self._hotpath_shape, leak_threshold_s=None
        )
        _housekeeping.watch(self.hotpath_metrics)

    @property
    def validate_idle_s(self) -> float | None:
        return None if self._idle_s == _INF else self._idle_s

    @validate_idle_s.setter
    def validate_idle_s(self, value: float | None) -> None:
        self._idle_s = _INF if value is None else value  # hot path: one comparison

    def _hotpath_waiting(self) -> int | None:
        """Callers waiting for a connection now. psycopg_pool's ``requests_waiting`` counts
        its queue, where a caller that timed out stays until a connection is next handed out:
        it over-counts exactly when the pool is exhausted. Only entries still without a
        connection or an error are waiting."""
        queue = getattr(self, "_waiting", None)
        if queue is None:
            return None
        # A copy first: other threads (or the event loop) change the deque while it is read.
        return sum(entry.conn is None and entry.error is None for entry in tuple(queue))

    def _hotpath_shape(self) -> PoolShape:
        stats: dict[str, int] = self.get_stats()  # type: ignore[attr-defined]
        low, high = stats.get("pool_min", 0), stats.get("pool_max", 0)
        return PoolShape(
            low,
            high - low,
            float(self.timeout),  # type: ignore[attr-defined]
            type(self).__name__,
            size=stats.get("pool_size", 0),
            idle=stats.get("pool_available", 0),
            waiting=self._hotpath_waiting(),
        )

    def _hotpath_forget(self, conn: object) -> None:
        self.hotpath_metrics.connection_closed(id(conn))

    def _hotpath_remaining(self, started: float, timeout: float | None) -> float:
        limit = float(self.timeout if timeout is None else timeout)  # type: ignore[attr-defined]
        return max(0.0, started + limit - perf_counter())


def _timed_connection_class(base: type[Connection[Any]], pool: _Metering) -> type[Any]:
    owner = weakref.ref(pool)

    class TimedConnection(base):  # type: ignore[valid-type, misc]
        # When the pool's check should ping it: returned + validate_idle_s (never before
        # its first return: a new connection is not checked).
        hotpath_check_at = _INF

        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            conn = super().connect(*args, **kwargs)
            metered = owner()
            if metered is not None:
                metered.hotpath_metrics.connection_opened(id(conn), time.perf_counter() - started)
            return conn

        def close(self) -> None:
            metered = owner()
            if metered is not None and not self.closed:
                metered._hotpath_forget(self)
            super().close()

    TimedConnection.__name__ = TimedConnection.__qualname__ = base.__name__
    return TimedConnection


def _timed_async_connection_class(base: type[AsyncConnection[Any]], pool: _Metering) -> type[Any]:
    owner = weakref.ref(pool)

    class TimedAsyncConnection(base):  # type: ignore[valid-type, misc]
        hotpath_check_at = _INF  # see TimedConnection

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


class MeteredConnectionPool(_Metering, ConnectionPool):
    """``psycopg_pool.ConnectionPool`` with hotpath metrics, leak detection and cheap checks.

    Same arguments as ``ConnectionPool`` plus ``validate_idle_s`` (``None``: never check;
    a ``check`` you pass yourself runs instead of the idle-based one).
    """

    def __init__(
        self,
        conninfo: Any = "",
        *,
        validate_idle_s: float | None = 0.5,
        connection_class: type[Connection[Any]] = Connection,
        check: Any = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._setup_metering(name, validate_idle_s, check)
        super().__init__(
            conninfo,
            connection_class=_timed_connection_class(connection_class, self),
            check=check,
            name=name,
            **kwargs,
        )

    def getconn(self, timeout: float | None = None) -> Any:
        # Inline, as MeteredQueuePool.connect(): every call and attribute counts here.
        metrics = self.hotpath_metrics
        started = perf_counter()
        try:
            conn: Any = ConnectionPool.getconn(self, timeout)
            now = perf_counter()
            if now >= conn.hotpath_check_at:
                conn = self._hotpath_validated(conn, started, timeout)
                now = perf_counter()
        except PoolTimeout as exc:
            raise metrics.exhausted(started, exc, ConnectionPoolExhaustedError) from exc
        metrics._acquire_raw.append(now - started)
        if metrics.capture_stacks:
            # The last distance that found the application frame, tried inline (see
            # checkout_stack): 0 when the application calls the pool itself. The same lines
            # are in the metered QueuePool's connect (_sa_pools): a shared helper would be a
            # call per checkout (~1%).
            distance = distance_hint[0]
            try:
                frame = _getframe(1 + distance)
            except ValueError:  # shallower than that: another path
                metrics._holds[conn] = (now, *checkout_stack())
            else:
                code = frame.f_code
                lasti = frame.f_lasti
                if distance:  # a verified site at that distance, that called the same function
                    site = verified_sites.get((id(code), lasti))
                    known = (
                        site is not None
                        and site[0] == distance
                        and _getframe(distance).f_code is site[1]
                    )
                else:  # the caller itself: the first application frame if it is one
                    known = code.co_filename in application_files
                metrics._holds[conn] = (now, code, lasti) if known else (now, *checkout_stack())
        else:
            metrics._holds[conn] = (now,)
        return conn

    def _hotpath_validated(self, conn: Any, started: float, timeout: float | None) -> Any:
        """``conn`` was idle longer than ``validate_idle_s``: ping it; a dead one is discarded
        and the next one taken (and pinged if it was idle too), within the same timeout."""
        while True:
            try:
                ConnectionPool.check_connection(conn)
            except Exception:
                self.hotpath_metrics.pinged(ok=False)
                self.hotpath_metrics.invalidated()
                _detach_and_close(conn)
                self._putconn(conn, from_getconn=True)  # psycopg_pool's path for a failed check
            except BaseException:
                # Interrupted mid-ping (KeyboardInterrupt, gevent.Timeout): give it back, as
                # psycopg_pool's own check loop does, rather than lose it.
                self._putconn(conn, from_getconn=True)
                raise
            else:
                self.hotpath_metrics.pinged(ok=True)
                return conn
            conn = ConnectionPool.getconn(self, self._hotpath_remaining(started, timeout))
            if perf_counter() < conn.hotpath_check_at:
                return conn

    def putconn(self, conn: Any) -> None:
        # PoolMetrics.checked_in inlined (the async twin calls it): this is the hot path.
        metrics = self.hotpath_metrics
        now = perf_counter()
        hold = metrics._holds.pop(conn, None)
        if hold is not None:
            metrics._hold_raw.append(now - hold[0])
            if metrics._reported:
                metrics.returned(conn, hold, now)
        conn.hotpath_check_at = now + self._idle_s
        ConnectionPool.putconn(self, conn)


class AsyncMeteredConnectionPool(_Metering, AsyncConnectionPool):
    """``psycopg_pool.AsyncConnectionPool`` twin of :class:`MeteredConnectionPool`."""

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
        metrics = self.hotpath_metrics
        started = metrics.acquire_started()
        try:
            conn: Any = await super().getconn(timeout)
            if perf_counter() >= conn.hotpath_check_at:
                conn = await self._hotpath_validated(conn, started, timeout)
        except PoolTimeout as exc:
            raise metrics.exhausted(started, exc, ConnectionPoolExhaustedError) from exc
        metrics.acquired(started, conn)  # the sync twin inlines this: its hot path
        return conn

    async def _hotpath_validated(self, conn: Any, started: float, timeout: float | None) -> Any:
        """The async twin of ``MeteredConnectionPool._hotpath_validated``."""
        while True:
            try:
                await AsyncConnectionPool.check_connection(conn)
            except Exception:
                self.hotpath_metrics.pinged(ok=False)
                self.hotpath_metrics.invalidated()
                conn._pool = None  # see _detach_and_close
                await conn.close()
                await self._putconn(conn, from_getconn=True)
            except BaseException:  # cancelled mid-ping: give it back, then stop
                await self._putconn(conn, from_getconn=True)
                raise
            else:
                self.hotpath_metrics.pinged(ok=True)
                return conn
            conn = await super().getconn(self._hotpath_remaining(started, timeout))
            if perf_counter() < conn.hotpath_check_at:
                return conn

    async def putconn(self, conn: Any) -> None:
        self.hotpath_metrics.checked_in(conn)
        conn.hotpath_check_at = perf_counter() + self._idle_s
        await super().putconn(conn)
