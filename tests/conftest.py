"""The hotpath pytest plugin (hotpath.testing) is loaded through its pytest11 entry point.

On a test about to time out, the asyncio tasks of every running event loop are written to
stderr first: pytest-timeout shows the threads, and a hang in an async fixture's teardown
(the loop idle in ``select``) is only explained by what its tasks await."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from typing import Any

import pytest

pytest_plugins = ["pytester"]

_DUMP_BEFORE_S = 10.0  # before pytest-timeout's own timer fires


def _dump_asyncio_tasks(nodeid: str) -> None:
    out = sys.__stderr__
    if out is None:
        return
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]
    for loop in loops:
        if not loop.is_running():
            continue
        print(f"\n=== {nodeid}: about to time out; tasks of {loop!r} ===", file=out)
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError:  # the set changed while read from this thread: try once more
            tasks = list(asyncio.all_tasks(loop))
        for task in tasks:
            print(f"--- {task!r}", file=out)
            task.print_stack(limit=25, file=out)
    out.flush()


@pytest.hookimpl
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    timeout = getattr(settings, "timeout", None)
    if timeout and timeout > 2 * _DUMP_BEFORE_S:
        timer = threading.Timer(timeout - _DUMP_BEFORE_S, _dump_asyncio_tasks, [item.nodeid])
        timer.daemon = True
        timer.start()
        item.stash[_TIMER] = timer
    # None: pytest-timeout's own timer is set as usual


@pytest.hookimpl
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    timer = item.stash.get(_TIMER, None)
    if timer is not None:
        timer.cancel()


_TIMER = pytest.StashKey[threading.Timer]()
