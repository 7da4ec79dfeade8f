"""Checks of the numbers a cache is configured with, run once where they enter (constructors,
``set``/``get_or_set``): NaN slips through every comparison and infinity overflows later, far
from the call that passed it, so both are refused here with the option's name and a fix."""

from __future__ import annotations

import math

from ._errors import CacheConfigError

# Redis takes expiries in milliseconds as 64-bit integers; a century is far inside that and
# longer than any cache entry should live.
MAX_SECONDS = 100 * 365 * 86400.0


def seconds(value: object, option: str, *, zero: bool = False, example: str = "30") -> float:
    """``value`` as a finite duration > 0 (>= 0 with ``zero``), at most a century."""
    lowest = ">= 0" if zero else "> 0"
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
        and value <= MAX_SECONDS
    ):
        return float(value)
    raise CacheConfigError(
        f"{option} must be a finite number of seconds {lowest} (at most {MAX_SECONDS:.0f}), "
        f"got {value!r}; e.g. {option}={example}"
    )


def ttl(value: float | None) -> None:
    """A per-call ``ttl`` (None: the cache's default)."""
    if value is not None:
        seconds(value, "ttl", example="60")


def count(value: object, option: str, *, example: str) -> int:
    """``value`` as an int >= 1."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise CacheConfigError(
        f"{option} must be an integer >= 1, got {value!r}; e.g. {option}={example}"
    )


def number(value: object, option: str, *, low: float, high: float, example: str) -> float:
    """``value`` as a finite number in [low, high)."""
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value < high
    ):
        return float(value)
    span = f"in [{low:g}, {high:g})" if math.isfinite(high) else f">= {low:g}"
    raise CacheConfigError(
        f"{option} must be a finite number {span}, got {value!r}; e.g. {option}={example}"
    )
