"""``gather_bounded``: run awaitables concurrently, at most ``limit`` at a time, structured.

Unlike ``asyncio.gather``, a failure cancels the rest by default (nothing keeps running
behind the caller's back), and an overall ``timeout`` cancels everything still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from .._validate import check_number
from ._deadline import deadline
from ._errors import ConcurrencyConfigError


async def gather_bounded(
    *aws: Awaitable[Any],
    limit: int = 10,
    timeout: float | None = None,
    return_exceptions: bool = False,
    cancel_on_error: bool = True,
) -> list[Any]:
    """Results in the order of ``aws``.

    - ``limit``: at most this many run at once (the others wait their turn).
    - ``timeout``: a deadline for the whole gather; on expiry everything still running is
      cancelled and ``DeadlineExceeded`` raised.
    - ``return_exceptions``: put exceptions in the result list instead of raising.
    - ``cancel_on_error``: on the first exception (when not returned), cancel the others.
    """
    check_number(
        ConcurrencyConfigError,
        "limit",
        limit,
        integer=True,
        at_least=1,
        meaning="awaitables run at once",
    )
    check_number(
        ConcurrencyConfigError,
        "timeout",
        timeout,
        above=0,
        none_means="no deadline",
        meaning="seconds for the whole gather",
    )
    semaphore = asyncio.Semaphore(limit)

    async def one(awaitable: Awaitable[Any]) -> Any:
        async with semaphore:
            return await awaitable

    tasks = [asyncio.ensure_future(one(aw)) for aw in aws]
    try:
        if timeout is None:
            return await _collect(tasks, return_exceptions, cancel_on_error)
        async with deadline(timeout, f"gather_bounded of {len(tasks)} calls"):
            return await _collect(tasks, return_exceptions, cancel_on_error)
    finally:
        await _cancel(tasks)  # no-op for finished tasks; nothing outlives the call


async def _collect(
    tasks: Sequence[asyncio.Future[Any]], return_exceptions: bool, cancel_on_error: bool
) -> list[Any]:
    if return_exceptions:
        return list(await asyncio.gather(*tasks, return_exceptions=True))
    pending: set[asyncio.Future[Any]] = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((t for t in done if not t.cancelled() and t.exception()), None)
        if failed is not None:
            if cancel_on_error:
                await _cancel(list(pending))
            error = failed.exception()
            assert error is not None
            raise error
    return [task.result() for task in tasks]


async def _cancel(tasks: Sequence[asyncio.Future[Any]]) -> None:
    running = [t for t in tasks if not t.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)
