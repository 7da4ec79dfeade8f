"""The hotpath pytest plugin (hotpath.testing) is loaded through its pytest11 entry point.

The stacks the tests start live on tmpfs when there is room (see ``_tmpfs_stack_root``).

On a test about to time out, the asyncio tasks of every running event loop are written to
stderr first: pytest-timeout shows the threads, and a hang in an async fixture's teardown
(the loop idle in ``select``) is only explained by what its tasks await."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

_DUMP_BEFORE_S = 10.0  # before pytest-timeout's own timer fires

# Room for the stacks of a whole run on tmpfs, with a margin: `make test` (4 xdist workers)
# peaked at 3.4 GB there; one process running the heaviest data loads (doctor's advise cases
# on PostgreSQL 15 and 18, partitions) at 1.3 GB
_TMPFS_ROOM = 8 << 30


def _tmpfs_stack_root(shm: Path = Path("/dev/shm")) -> Path | None:
    """Where the test stacks go unless ``HOTPATH_STACK_ROOT`` says: on tmpfs, when it and the
    memory behind it have room. Each module's database is copied on the primary and both
    replicas, and dropped after it (hundreds of files each time): on the CI's disk (ext4,
    mounted with discard) that cost 0.8 CPU-s a module, on tmpfs 0.15 (measured)."""
    try:
        stat = os.statvfs(shm)
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    available = next(
        (
            int(line.split()[1]) << 10
            for line in meminfo.splitlines()
            if line.startswith("MemAvailable:")
        ),
        0,
    )
    if min(stat.f_bavail * stat.f_frsize, available) < _TMPFS_ROOM:
        return None
    return shm / f"hotpath-{os.geteuid()}"


def pytest_configure(config: pytest.Config) -> None:
    # before any stack starts; the processes the tests start inherit it
    if "HOTPATH_STACK_ROOT" not in os.environ:
        root = _tmpfs_stack_root()
        if root is not None:
            os.environ["HOTPATH_STACK_ROOT"] = str(root)


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
