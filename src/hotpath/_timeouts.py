"""One awaitable under a deadline, without losing a cancellation.

Before Python 3.12, ``asyncio.wait_for`` returns the inner result when a cancellation of the
waiting task arrives in the same loop step as that result: the cancellation is lost and the
caller carries on (a probe loop that never stops, a cancelled request that keeps waiting).
``asyncio.timeout`` (3.11+) counts cancellations per task and re-raises one that came from
outside. Python 3.10 has only ``wait_for``, with that caveat.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_within(awaitable: Awaitable[T], timeout: float) -> T:
    """``await awaitable``, cancelled after ``timeout`` seconds (raises ``TimeoutError``)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await awaitable
    return await asyncio.wait_for(awaitable, timeout)  # pragma: no cover - Python 3.10
