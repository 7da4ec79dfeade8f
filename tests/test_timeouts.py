"""A deadline that never swallows a cancellation (hotpath._timeouts)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hotpath._timeouts import wait_within


async def _cancelled_as_it_is_answered(
    wait: Callable[[Awaitable[Any], float], Awaitable[Any]],
) -> str:
    """Cancel a task in the same loop step as the event it waits for is set: how it ended."""
    event = asyncio.Event()

    async def waiter() -> str:
        await wait(event.wait(), 10)
        return "carried on"

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0.01)  # waiting now
    event.set()
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


async def test_a_cancellation_arriving_with_the_answer_is_kept() -> None:
    assert await _cancelled_as_it_is_answered(wait_within) == "cancelled"
    if sys.version_info < (3, 12):
        # the unprotected path: wait_for returns the answer and the cancellation is lost
        assert await _cancelled_as_it_is_answered(asyncio.wait_for) == "carried on"


async def test_the_deadline_still_holds() -> None:
    with pytest.raises(TimeoutError):
        await wait_within(asyncio.sleep(5), 0.05)
    assert await wait_within(asyncio.sleep(0, "answer"), 5) == "answer"
