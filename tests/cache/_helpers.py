"""Helpers shared by the cache tests."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import redis

# Other processes' L1 copies go when the invalidation message lands (the coherence window,
# measured in test_coherence): a few ms, give it up to this.
PROPAGATION_S = 2.0


def wait_until(check: Callable[[], bool], timeout: float = PROPAGATION_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


async def await_until(check: Callable[[], Awaitable[bool]], timeout: float = PROPAGATION_S) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def commands(raw: redis.Redis) -> Counter[str]:
    """Calls per command so far (commands run by scripts included), without PING and INFO: the
    listeners' health checks and this measurement itself."""
    stats = raw.info("commandstats")
    return Counter(
        {k[8:]: v["calls"] for k, v in stats.items() if k not in ("cmdstat_ping", "cmdstat_info")}
    )
