"""hotpath.concurrent: parallel async calls with limits and deadlines, circuit breakers and
retries for the external dependencies of a request.

- :func:`gather_bounded` — run awaitables concurrently, at most ``limit`` at a time; a failure
  or the overall ``timeout`` cancels the rest.
- :class:`deadline` / :func:`with_deadline` — cancel work that outlives its time budget.
- :class:`CircuitBreaker` — fail fast (or fall back) while a dependency keeps failing.
- :func:`retry` — exponential backoff with full jitter, for idempotent calls only.
"""

from ._breaker import BreakerCollector, BreakerState, BreakerStats, CircuitBreaker
from ._deadline import deadline, with_deadline
from ._errors import (
    CircuitOpenError,
    ConcurrencyConfigError,
    ConcurrentError,
    DeadlineExceeded,
)
from ._gather import gather_bounded
from ._retry import backoff_delays, retry

__all__ = [
    "BreakerCollector",
    "BreakerState",
    "BreakerStats",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConcurrencyConfigError",
    "ConcurrentError",
    "DeadlineExceeded",
    "backoff_delays",
    "deadline",
    "gather_bounded",
    "retry",
    "with_deadline",
]
