"""One daemon thread per process that looks for leaked connections in every metered pool.

A thread rather than a timer per checkout: a checkout then costs nothing extra, and the watch
works the same for threads and asyncio tasks (it only reads the holders under a lock).
"""

from __future__ import annotations

import threading
import weakref

from ._metrics import PoolMetrics, logger

_watched: weakref.WeakSet[PoolMetrics] = weakref.WeakSet()
_lock = threading.Lock()
_wakeup = threading.Event()
_thread: threading.Thread | None = None


def watch(metrics: PoolMetrics) -> None:
    """Check ``metrics`` for leaks from now on (until it is garbage-collected)."""
    global _thread
    if metrics.leak_threshold_s is None:
        return
    with _lock:
        _watched.add(metrics)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="hotpath-pool-leaks", daemon=True)
            _thread.start()
    _wakeup.set()  # a shorter threshold than before: re-plan the sleep now


def _interval() -> float:
    thresholds = [m.leak_threshold_s for m in list(_watched) if m.leak_threshold_s is not None]
    if not thresholds:
        return 1.0
    return min(1.0, max(0.05, min(thresholds) / 4))


def _run() -> None:
    while True:
        _wakeup.wait(_interval())
        _wakeup.clear()
        for metrics in list(_watched):
            try:
                metrics.check_leaks()
            except Exception:  # never let one bad pool stop the watch for the others
                logger.exception("pool %s: leak check failed", metrics.name)
