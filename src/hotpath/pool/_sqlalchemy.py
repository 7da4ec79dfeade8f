"""Instrumenting a SQLAlchemy engine through its public pool events.

Metrics: ``connect`` (with ``do_connect`` for the connect time), ``checkout``, ``checkin``,
``close``, ``close_detached``, ``detach``, ``invalidate``, ``soft_invalidate``.
Liveness, also in ``checkout``: a connection idle longer than ``validate_idle_s`` is pinged
(``dialect.do_ping``); a failed ping or an expired lifetime raises ``DisconnectionError``,
which is SQLAlchemy's documented way to make the pool discard that connection and hand out a
fresh one. After one dead connection is found, every connection opened before it is pinged at
its next checkout, however recently used: that is how the pool heals after a restart.
A metered pool (``_sa_pools``) does the checkout and checkin part itself, without events.
"""

from __future__ import annotations

import random
import time
import warnings
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool, QueuePool
from sqlalchemy.util.queue import AsyncAdaptedQueue

from ._callstack import call_site, capture_stack
from ._errors import SessionStateWarning
from ._metrics import PoolMetrics, PoolShape
from ._pooler import session_state_use
from ._sa_pools import _MeteredMixin

_CONNECT_STARTED = "hotpath.connect_started"
_OPENED = "hotpath.opened"
_VERIFIED = "hotpath.verified"  # opened, or last passed a ping
_EXPIRES = "hotpath.expires"
_RETIRING = "hotpath.retiring"
_INF = float("inf")


def pool_shape(pool: Pool) -> PoolShape:
    kind = type(pool).__name__
    if isinstance(pool, QueuePool):
        # QueuePool has no public getter for max_overflow; read (never write) the attribute.
        max_overflow = int(getattr(pool, "_max_overflow", 0))
        waiting = _blocked_getters(getattr(pool, "_pool", None))
        return PoolShape(pool.size(), max_overflow, pool.timeout(), kind, waiting=waiting)
    return PoolShape(0, 0, None, kind)


def _blocked_getters(queue: object) -> int | None:
    """Callers blocked in ``queue.get()``, waiting for a connection to be returned (``None``
    when this queue cannot tell).

    Read from the queue's own bookkeeping rather than counted per checkout, which would
    cost the hot path a counter: QueuePool's ``sqlalchemy.util.queue.Queue`` waits on a
    ``threading.Condition``, which holds one lock per blocked thread in ``_waiters``;
    AsyncAdaptedQueue wraps an ``asyncio.Queue`` (made on first use), which holds one future
    per blocked ``get()`` in ``_getters``. ``tests/pool/test_metrics.py`` checks both.
    """
    if isinstance(queue, AsyncAdaptedQueue):
        inner = queue.__dict__.get("_queue")  # a memoized property: absent until first use
        getters = getattr(inner, "_getters", None) if inner is not None else ()
        if getters is None:
            return None
        # A copy first: the event loop's thread may change the deque while it is read.
        return sum(not getter.done() for getter in tuple(getters))
    waiters = getattr(getattr(queue, "not_empty", None), "_waiters", None)
    return None if waiters is None else len(waiters)


class EngineInstrumentation:
    """The listeners on one engine and its liveness rules; ``PoolMetrics`` does the counting.

    Every pool entry carries ``_hotpath_check_at``, the perf_counter() time its connection is
    next looked at: a checkin sets it to "now + validate_idle_s", so the common checkout costs
    one attribute read and one comparison. (An attribute of the entry, not a key of its
    ``info``: reading ``ConnectionPoolEntry.info`` goes through a Python-level descriptor,
    several times the cost of the attribute; entries have a ``__dict__`` for per-entry
    state.)
    The rarer reasons to look sooner are pushed into it instead of being tested at every
    checkout: a dead connection found (every connection opened before it is
    suspect) sets it to -inf on every known connection at once, and the housekeeping thread
    does the same each second for connections past their max lifetime or still suspect (a
    checkin racing with either is caught by the next sweep). A metered pool reads it in its
    own ``connect()`` and checkin (no ``checkout``/``checkin`` listeners, see ``_sa_pools``);
    other pools get the events.
    """

    def __init__(
        self,
        engine: Engine,
        metrics: PoolMetrics,
        *,
        validate_idle_s: float | None,
        max_lifetime_s: float | None,
        lifetime_jitter: float,
        transaction_pooler: bool,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.validate_idle_s = validate_idle_s
        # Hot path: seconds of idle before a ping (infinite: never).
        self.idle_s = _INF if validate_idle_s is None else validate_idle_s
        self.max_lifetime_s = max_lifetime_s
        self.lifetime_jitter = lifetime_jitter
        self.transaction_pooler = transaction_pooler
        # Connections not verified since this perf_counter() are pinged at their checkout.
        self.suspect_before = -_INF
        # Every pool entry with a connection, for the sweeps (entries outlive reconnects).
        self._records: weakref.WeakSet[ConnectionPoolEntry] = weakref.WeakSet()
        self._metered = isinstance(engine.pool, _MeteredMixin)
        self._warned: set[tuple[str, str]] = set()

    def install(self) -> None:
        engine = self.engine
        event.listen(engine, "do_connect", self._on_do_connect)
        event.listen(engine, "connect", self._on_connect)
        if not self._metered:
            event.listen(engine, "checkout", self._on_checkout)
            event.listen(engine, "checkin", self._on_checkin)
        event.listen(engine, "close", self._on_close)
        event.listen(engine, "close_detached", self._on_close_detached)
        event.listen(engine, "detach", self._on_detach)
        event.listen(engine, "invalidate", self._on_invalidate)
        event.listen(engine, "soft_invalidate", self._on_soft_invalidate)
        if self.transaction_pooler:
            event.listen(engine, "before_cursor_execute", self._on_statement)
        if isinstance(engine.pool, _MeteredMixin):
            engine.pool.hotpath_meter(self)
        # A weak reference: the metrics must not keep the engine alive.
        self.metrics.sweep = weakref.WeakMethod(self.sweep)

    # -- connection lifecycle --------------------------------------------------------------

    def _on_do_connect(
        self, dialect: Any, record: ConnectionPoolEntry, cargs: Any, cparams: Any
    ) -> None:
        record.info[_CONNECT_STARTED] = time.perf_counter()

    def _on_connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        started = record.info.pop(_CONNECT_STARTED, None)
        now = time.perf_counter()
        self._adopt(record, now)
        connect_s = None if started is None else now - started
        self.metrics.connection_opened(id(dbapi_connection), connect_s)

    def _adopt(self, record: ConnectionPoolEntry, now: float) -> None:
        """Stamp a connection opened now (or found unstamped: opened before instrumenting)."""
        info = record.info
        info[_OPENED] = info[_VERIFIED] = now
        expires = _INF
        if self.max_lifetime_s is not None:
            # Jitter spreads the reconnects of connections opened together (HikariCP, psycopg)
            spread = 1.0 - random.uniform(0.0, self.lifetime_jitter)
            expires = now + self.max_lifetime_s * spread
        info[_EXPIRES] = expires
        record._hotpath_check_at = min(now + self.idle_s, expires)  # type: ignore[attr-defined]
        self._records.add(record)

    def _on_close(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        self.metrics.connection_closed(id(dbapi_connection))

    def _on_close_detached(self, dbapi_connection: Any) -> None:
        self.metrics.connection_closed(id(dbapi_connection))

    def _on_detach(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        self.metrics.connection_closed(id(dbapi_connection))
        self.metrics.checked_in(record)

    def _on_invalidate(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exception: BaseException | None
    ) -> None:
        expired = bool(record.info.pop(_RETIRING, False))
        if not expired and self.validate_idle_s is not None:
            self.suspect_before = time.perf_counter()
            self.sweep()  # every older connection: pinged at its next checkout
        self.metrics.invalidated(expired=expired)

    def _on_soft_invalidate(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exception: BaseException | None
    ) -> None:
        self.metrics.invalidated(expired=True)

    # -- liveness at checkout --------------------------------------------------------------

    def sweep(self) -> None:
        """Make connections past their lifetime or still suspect be looked at on their next
        checkout (run on a dead connection, and each second by the housekeeping thread)."""
        now = time.perf_counter()
        suspect_before = self.suspect_before
        for record in list(self._records):
            info = record.info
            if now >= info.get(_EXPIRES, _INF) or info.get(_VERIFIED, _INF) < suspect_before:
                record._hotpath_check_at = -_INF  # type: ignore[attr-defined]

    def check(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        """The slow path of a checkout whose ``_hotpath_check_at`` has passed: raise
        ``DisconnectionError`` if the connection must be replaced."""
        info = record.info
        now = time.perf_counter()
        if _EXPIRES not in info:  # opened before instrument_pool(), or a reconnect unseen
            self._adopt(record, now)
        if now >= info[_EXPIRES]:
            info[_RETIRING] = True
            raise sa_exc.DisconnectionError("connection reached its max lifetime; replacing it")
        check_at: float = record._hotpath_check_at  # type: ignore[attr-defined]
        if self.validate_idle_s is not None and now >= check_at:
            # The mark is "last returned + idle_s", or -inf when swept: expired (above) or
            # suspect; the ping is wanted either way.
            if info[_VERIFIED] < self.suspect_before:
                why = "opened before a dead connection was found"
            else:
                why = f"idle {now - (check_at - self.idle_s):.2f} s"
            self._validate(dbapi_connection, why)
            info[_VERIFIED] = now  # a suspect is pinged once, not at every checkout
        record._hotpath_check_at = min(now + self.idle_s, info[_EXPIRES])  # type: ignore[attr-defined]

    def _on_checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        if time.perf_counter() >= getattr(record, "_hotpath_check_at", -_INF):
            self.check(dbapi_connection, record)
        self.metrics.checked_out(record, skip=1)

    def _validate(self, dbapi_connection: Any, why: str) -> None:
        try:
            alive = bool(self.engine.dialect.do_ping(dbapi_connection))
        except Exception:  # any error on a trivial ping means the connection is unusable
            alive = False
        self.metrics.pinged(ok=alive)
        if not alive:
            raise sa_exc.DisconnectionError(
                f"connection ({why}) failed its liveness check; replacing it"
            )

    def _on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record._hotpath_check_at = time.perf_counter() + self.idle_s  # type: ignore[attr-defined]
        self.metrics.checked_in(record)

    # -- transaction-pooler mode -----------------------------------------------------------

    def _on_statement(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        use = session_state_use(statement)
        if use is None:
            return
        site = call_site(capture_stack(1))
        if (use, site) in self._warned:
            return
        self._warned.add((use, site))
        warnings.warn(
            f"{use} at {site} runs behind a transaction pooler: the next transaction may run "
            "on another server connection, so this session state is lost or leaks to other "
            "clients. Make it transaction-scoped, or use a direct (session) connection for it.",
            SessionStateWarning,
            stacklevel=2,
        )
