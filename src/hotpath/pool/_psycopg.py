"""psycopg_pool pools that meter every acquire and hold, and validate only idle connections:
what the sync and async metered pools share (the pools themselves are in
``_psycopg_async.py``, the one source, and ``_psycopg_sync.py``, generated from it).

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

from time import perf_counter
from typing import Any

from . import _housekeeping
from ._metrics import CheckoutState, PoolMetrics, PoolShape
from ._options import check_validate_idle_s

_INF = float("inf")


class _Metering:
    """State and logic shared by the sync and async metered pools."""

    hotpath_metrics: PoolMetrics
    _hotpath_hot: CheckoutState  # hotpath_metrics.hot: what getconn/putconn write
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
        self._hotpath_hot = self.hotpath_metrics.hot
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
