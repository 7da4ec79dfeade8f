"""One daemon thread per process for every instrumented pool: leak checks, histogram folding,
liveness sweeps (connections past their lifetime).

A thread rather than a timer per checkout: a checkout then costs nothing extra, and the watch
works the same for threads and asyncio tasks (it only reads the holders under a lock).
"""

from __future__ import annotations

import os
import threading
import weakref

from ._metrics import PoolMetrics, logger

_watched: weakref.WeakSet[PoolMetrics] = weakref.WeakSet()
_lock = threading.Lock()
_wakeup = threading.Event()
_thread: threading.Thread | None = None


def watch(metrics: PoolMetrics) -> None:
    """Look after ``metrics`` from now on (until it is garbage-collected)."""
    with _lock:
        _watched.add(metrics)
        _ensure_thread()
    _wakeup.set()  # a shorter leak threshold than before: re-plan the sleep now


def _ensure_thread() -> None:
    global _thread
    if _thread is None or not _thread.is_alive():
        _thread = threading.Thread(target=_run, name="hotpath-pool", daemon=True)
        _thread.start()


def _after_fork_in_child() -> None:
    """Threads do not survive fork(): a child (gunicorn --preload, multiprocessing) that
    inherited instrumented pools gets fresh locks and a housekeeping thread of its own."""
    global _lock, _wakeup, _thread
    _lock = threading.Lock()
    _wakeup = threading.Event()
    _thread = None
    watched = list(_watched)
    for metrics in watched:
        metrics.after_fork()
    if watched:
        _ensure_thread()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _snapshot() -> list[PoolMetrics]:
    """The pools watched now. Taken under the lock: ``watch()`` adds from other threads, and
    a set that grows while it is iterated raises (that killed the thread on a busy machine)."""
    with _lock:
        return list(_watched)


def _interval() -> float:
    thresholds = [m.leak_threshold_s for m in _snapshot() if m.leak_threshold_s is not None]
    if not thresholds:
        return 1.0
    return min(1.0, max(0.05, min(thresholds) / 4))


def _run() -> None:
    while True:
        _wakeup.wait(_interval())
        _wakeup.clear()
        for metrics in _snapshot():
            try:
                metrics.fold()
                metrics.check_leaks()
                sweep = metrics.sweep() if metrics.sweep is not None else None
                if sweep is not None:
                    sweep()
            except Exception:  # never let one bad pool stop the watch for the others
                logger.exception("pool %s: housekeeping failed", metrics.name)
