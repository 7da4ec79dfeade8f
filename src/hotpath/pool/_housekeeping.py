"""One daemon thread per process for every instrumented pool: leak checks, histogram folding,
liveness sweeps (connections past their lifetime).

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
    """Look after ``metrics`` from now on (until it is garbage-collected)."""
    global _thread
    with _lock:
        _watched.add(metrics)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="hotpath-pool", daemon=True)
            _thread.start()
    _wakeup.set()  # a shorter leak threshold than before: re-plan the sleep now


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
                metrics.fold()
                metrics.check_leaks()
                sweep = metrics.sweep() if metrics.sweep is not None else None
                if sweep is not None:
                    sweep()
            except Exception:  # never let one bad pool stop the watch for the others
                logger.exception("pool %s: housekeeping failed", metrics.name)
