"""Deadlines for async work: ``async with deadline(0.2):`` and ``await with_deadline(aw, 0.2)``.

On expiry the work is cancelled and :class:`DeadlineExceeded` (a ``TimeoutError``) is raised,
naming the deadline. Uses ``asyncio.timeout`` where Python has it (3.11+).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, TypeVar

from .._validate import check_number
from ._errors import ConcurrencyConfigError, DeadlineExceeded

_T = TypeVar("_T")


class deadline:
    """Cancel the block if it runs longer than ``seconds``."""

    def __init__(self, seconds: float, what: str = "the block") -> None:
        check_number(
            ConcurrencyConfigError,
            "seconds",
            seconds,
            above=0,
            meaning=f"the deadline of {what}",
        )
        self.seconds = seconds
        self.what = what
        self._timeout: Any = None
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False

    async def __aenter__(self) -> deadline:
        if hasattr(asyncio, "timeout"):
            self._timeout = asyncio.timeout(self.seconds)
            await self._timeout.__aenter__()
        else:  # Python 3.10: cancel the task ourselves
            task = asyncio.current_task()
            assert task is not None

            def expire() -> None:
                self._expired = True
                task.cancel()

            self._handle = asyncio.get_running_loop().call_later(self.seconds, expire)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._timeout is not None:
            try:
                return await self._timeout.__aexit__(exc_type, exc, tb)  # type: ignore[no-any-return]
            except TimeoutError as error:
                raise DeadlineExceeded(f"{self.what} took longer than {self.seconds:g}s") from error
        assert self._handle is not None
        self._handle.cancel()
        if self._expired and exc_type is asyncio.CancelledError:
            raise DeadlineExceeded(f"{self.what} took longer than {self.seconds:g}s") from exc
        return None


async def with_deadline(awaitable: Awaitable[_T], seconds: float, what: str = "the call") -> _T:
    """Await ``awaitable``, cancelling it after ``seconds``."""
    async with deadline(seconds, what):
        return await awaitable
