"""Retries with exponential backoff and full jitter, for idempotent calls only.

Retrying a non-idempotent call (a payment, an order) can do it twice: ``retry`` refuses to
wrap anything not declared ``idempotent=True``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .._validate import check_number
from ._errors import CircuitOpenError, ConcurrencyConfigError

_F = TypeVar("_F", bound=Callable[..., Any])


def backoff_delays(
    attempts: int, base_delay: float, max_delay: float, rng: random.Random | None = None
) -> list[float]:
    """The sleeps between ``attempts`` tries: full jitter over a doubling cap."""
    rng = rng or random.Random()
    return [rng.uniform(0, min(max_delay, base_delay * 2**n)) for n in range(attempts - 1)]


def retry(
    *,
    idempotent: bool,
    attempts: int = 3,
    base_delay: float = 0.05,
    max_delay: float = 2.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> Callable[[_F], _F]:
    """Decorate a sync or async function to retry it on ``retry_on`` errors."""
    if not idempotent:
        raise ConcurrencyConfigError(
            "retry(idempotent=False): retrying a call that is not idempotent can repeat its "
            "effect; make the call idempotent (e.g. an idempotency key) and say idempotent=True"
        )
    check_number(
        ConcurrencyConfigError,
        "attempts",
        attempts,
        integer=True,
        at_least=1,
        meaning="tries in all, the first included",
    )
    check_number(
        ConcurrencyConfigError,
        "base_delay",
        base_delay,
        at_least=0,
        meaning="seconds of the first backoff cap",
    )
    check_number(
        ConcurrencyConfigError,
        "max_delay",
        max_delay,
        at_least=0,
        meaning="seconds the backoff cap never exceeds",
    )

    def retriable(error: BaseException) -> bool:
        # an open circuit means "do not call now": retrying it only burns the attempts
        return isinstance(error, retry_on) and not isinstance(error, CircuitOpenError)

    def decorate(fn: _F) -> _F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_retried(*args: Any, **kwargs: Any) -> Any:
                for delay in [*backoff_delays(attempts, base_delay, max_delay), None]:
                    try:
                        return await fn(*args, **kwargs)
                    except BaseException as error:
                        if delay is None or not retriable(error):
                            raise
                    await asyncio.sleep(delay)
                raise AssertionError("unreachable")

            return async_retried  # type: ignore[return-value]

        @functools.wraps(fn)
        def retried(*args: Any, **kwargs: Any) -> Any:
            for delay in [*backoff_delays(attempts, base_delay, max_delay), None]:
                try:
                    return fn(*args, **kwargs)
                except BaseException as error:
                    if delay is None or not retriable(error):
                        raise
                time.sleep(delay)
            raise AssertionError("unreachable")

        return retried  # type: ignore[return-value]

    return decorate
