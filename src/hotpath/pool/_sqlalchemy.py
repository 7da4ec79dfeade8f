"""Instrumenting a SQLAlchemy engine through its public pool events.

Metrics: ``connect`` (with ``do_connect`` for the connect time), ``checkout``, ``checkin``,
``close``, ``close_detached``, ``detach``, ``invalidate``, ``soft_invalidate``.
Liveness, also in ``checkout``: a connection idle longer than ``validate_idle_s`` is pinged
(``dialect.do_ping``); a failed ping or an expired lifetime raises ``DisconnectionError``,
which is SQLAlchemy's documented way to make the pool discard that connection and hand out a
fresh one. After one dead connection is found, every connection opened before it is pinged at
its next checkout, however recently used: that is how the pool heals after a restart.
"""

from __future__ import annotations

import random
import time
import warnings
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool, QueuePool

from ._callstack import call_site, capture_stack
from ._errors import SessionStateWarning
from ._metrics import PoolMetrics, PoolShape
from ._pooler import session_state_use
from ._sa_pools import _MeteredMixin

_CONNECT_STARTED = "hotpath.connect_started"
_OPENED = "hotpath.opened"
_LAST_USED = "hotpath.last_used"
_EXPIRES = "hotpath.expires"
_RETIRING = "hotpath.retiring"


def pool_shape(pool: Pool) -> PoolShape:
    kind = type(pool).__name__
    if isinstance(pool, QueuePool):
        # QueuePool has no public getter for max_overflow; read (never write) the attribute.
        max_overflow = int(getattr(pool, "_max_overflow", 0))
        return PoolShape(pool.size(), max_overflow, pool.timeout(), kind)
    return PoolShape(0, 0, None, kind)


class EngineInstrumentation:
    """The listeners on one engine; ``PoolMetrics`` does the counting."""

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
        self.max_lifetime_s = max_lifetime_s
        self.lifetime_jitter = lifetime_jitter
        self.transaction_pooler = transaction_pooler
        self._suspect_before = 0.0  # connections opened before this are pinged at checkout
        # A metered pool records the checkout itself, a few frames nearer the caller.
        self._metered = isinstance(engine.pool, _MeteredMixin)
        self._warned: set[tuple[str, str]] = set()

    def install(self) -> None:
        engine = self.engine
        event.listen(engine, "do_connect", self._on_do_connect)
        event.listen(engine, "connect", self._on_connect)
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
            engine.pool.hotpath_metrics = self.metrics

    # -- connection lifecycle --------------------------------------------------------------

    def _on_do_connect(
        self, dialect: Any, record: ConnectionPoolEntry, cargs: Any, cparams: Any
    ) -> None:
        record.info[_CONNECT_STARTED] = time.perf_counter()

    def _on_connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        started = record.info.pop(_CONNECT_STARTED, None)
        connect_s = None if started is None else time.perf_counter() - started
        now = time.monotonic()
        record.info[_OPENED] = now
        record.info[_LAST_USED] = now
        if self.max_lifetime_s is not None:
            # Jitter spreads the reconnects of connections opened together (HikariCP, psycopg)
            spread = 1.0 - random.uniform(0.0, self.lifetime_jitter)
            record.info[_EXPIRES] = now + self.max_lifetime_s * spread
        self.metrics.connection_opened(id(dbapi_connection), connect_s)

    def _on_close(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        self.metrics.connection_closed(id(dbapi_connection))

    def _on_close_detached(self, dbapi_connection: Any) -> None:
        self.metrics.connection_closed(id(dbapi_connection))

    def _on_detach(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        self.metrics.connection_closed(id(dbapi_connection))
        self.metrics.checked_in(id(record.info))

    def _on_invalidate(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exception: BaseException | None
    ) -> None:
        expired = bool(record.info.pop(_RETIRING, False))
        if not expired:
            self._suspect_before = time.monotonic()
        self.metrics.invalidated(expired=expired)

    def _on_soft_invalidate(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exception: BaseException | None
    ) -> None:
        self.metrics.invalidated(expired=True)

    # -- checkout / checkin ----------------------------------------------------------------

    def _on_checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        info = record.info
        now = time.monotonic()
        if self.validate_idle_s is not None:
            idle = now - info.get(_LAST_USED, now)
            if idle > self.validate_idle_s or info.get(_OPENED, now) < self._suspect_before:
                self._validate(dbapi_connection, idle)
        expires = info.get(_EXPIRES)
        if expires is not None and now >= expires:
            info[_RETIRING] = True
            raise sa_exc.DisconnectionError("connection reached its max lifetime; replacing it")
        if not self._metered:
            self.metrics.checked_out(id(info), skip=1)

    def _validate(self, dbapi_connection: Any, idle: float) -> None:
        try:
            alive = bool(self.engine.dialect.do_ping(dbapi_connection))
        except Exception:  # any error on a trivial ping means the connection is unusable
            alive = False
        self.metrics.pinged(ok=alive)
        if not alive:
            raise sa_exc.DisconnectionError(
                f"connection idle {idle:.2f} s failed its liveness check; replacing it"
            )

    def _on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        info = record.info
        info[_LAST_USED] = time.monotonic()
        self.metrics.checked_in(id(info))

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
