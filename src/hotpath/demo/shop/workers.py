"""How the shop's worker processes answer the runner as one server.

Under uvicorn with N workers every process has its own profiler, cache counters, pools and CPU
time, and a call to ``/__hotpath/...`` reaches one of them, chosen by the kernel. So no runner
endpoint answers from its own process alone: the worker that takes the call posts a COMMAND
(``stats``, ``cpu`` or ``reset``) with a new generation in the server's shared directory; every
worker follows that file (:func:`follow_commands`), applies a reset, and writes its WORKER STATE
(``worker-PID.json``, the file ``hotpath run``'s workers write, read and merged by the same code:
:mod:`hotpath.run._state`) stamped with the generation; the answering worker waits for N states
of that generation (:meth:`SharedState.gather`) and merges them. One process goes the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..._errors import HotpathError
from ...run._state import read_workers

logger = logging.getLogger(__name__)

COMMAND_FILE = "command.json"
LOCK_FILE = "command.lock"
# how often a worker looks for a new command: one stat() of a file, while the runner waits for
# N answers (never during a measured request: the runner's calls are outside the load)
POLL_S = 0.01
GATHER_TIMEOUT_S = 30.0


class CommandKind(str, enum.Enum):
    STATS = "stats"  # every count, observe's snapshot included
    CPU = "cpu"  # CPU time only: what a benchmark reads around its load, kept cheap
    RESET = "reset"  # start every count again, then answer as STATS


class WorkersMissing(HotpathError):
    """Fewer workers answered a command than the server runs."""


@dataclass(frozen=True)
class SharedState:
    """The directory every worker of one server writes into, and how many workers there are."""

    directory: Path
    workers: int

    def post(self, kind: CommandKind) -> int:
        """Post a command to every worker; its generation (one above the last one posted)."""
        with (self.directory / LOCK_FILE).open("a") as lock:
            # two runner calls answered by two workers at once still get two generations
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.command()
            generation = (current[0] if current else 0) + 1
            _write_atomically(
                self.directory / COMMAND_FILE,
                orjson.dumps({"generation": generation, "kind": kind.value}),
            )
        return generation

    def command(self) -> tuple[int, CommandKind] | None:
        """The last command posted (generation, kind), None before the first."""
        try:
            raw = orjson.loads((self.directory / COMMAND_FILE).read_bytes())
        except FileNotFoundError:
            return None
        return int(raw["generation"]), CommandKind(raw["kind"])

    def write(self, state: dict[str, Any]) -> None:
        _write_atomically(self.directory / f"worker-{state['pid']}.json", orjson.dumps(state))

    def answered(self, generation: int) -> list[dict[str, Any]]:
        """The states written for ``generation`` or later (a worker uvicorn restarted leaves
        its predecessor's file behind, at an older generation)."""
        return [s for s in read_workers(self.directory) if s.get("generation", -1) >= generation]

    async def gather(
        self, kind: CommandKind, timeout: float = GATHER_TIMEOUT_S
    ) -> list[dict[str, Any]]:
        """Post ``kind`` and return every worker's answer to it."""
        generation = self.post(kind)
        deadline = time.monotonic() + timeout
        while len(states := self.answered(generation)) < self.workers:
            if time.monotonic() > deadline:
                raise WorkersMissing(
                    f"{len(states)} of the server's {self.workers} workers answered the "
                    f"{kind.value} command {generation} within {timeout:.0f}s: a worker died "
                    f"or its event loop is blocked (see the server's log)"
                )
            await asyncio.sleep(POLL_S)
        return states


async def follow_commands(
    shared: SharedState,
    reset: Callable[[], None],
    state: Callable[[CommandKind], dict[str, Any]],
) -> None:
    """Run for the worker's lifetime (on its event loop, so a reset never races a request's
    counting): answer every command posted after it started, and once at start, so that the
    runner knows it is up."""
    current = shared.command()
    seen = current[0] if current else 0
    shared.write({**state(CommandKind.CPU), "generation": seen})
    # os.replace gives every command file a new inode: two commands posted within one tick
    # of the file system's clock are still two changes
    last_change: tuple[int, int] | None = None
    while True:
        await asyncio.sleep(POLL_S)
        with contextlib.suppress(FileNotFoundError):
            status = (shared.directory / COMMAND_FILE).stat()
            changed = (status.st_ino, status.st_mtime_ns)
            if changed == last_change:
                continue
            last_change = changed
            command = shared.command()
            if command is None or command[0] <= seen:
                continue
            seen, kind = command
            try:
                if kind is CommandKind.RESET:
                    reset()
                answer = CommandKind.STATS if kind is CommandKind.RESET else kind
                shared.write({**state(answer), "generation": seen})
            except Exception:
                # this worker keeps following: the runner's call times out naming the count
                # of workers that answered, and the traceback is in the server's log
                logger.exception("worker %d could not answer command %d", os.getpid(), seen)


def _write_atomically(path: Path, data: bytes) -> None:
    # readers see the old file or the new one, never half of it
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
