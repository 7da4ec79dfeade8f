"""``ObserveSettings``: every option of a profiler in one frozen, validated object.

The detectors, the EXPLAIN step and the roll-ups read it; nothing re-spells the options.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ._errors import ObserveConfigError
from ._records import MODES, FindingKind, Mode

ExplainMode = Literal["off", "plan", "analyze"]

DEFAULT_MODES: dict[FindingKind, Mode] = {
    **dict.fromkeys(FindingKind, "log"),
    FindingKind.N_PLUS_ONE: "warn",
}


def parse_modes(
    modes: Mapping[str, Mode] | None, base: Mapping[FindingKind, Mode] | None = None
) -> dict[FindingKind, Mode]:
    parsed = dict(base if base is not None else DEFAULT_MODES)
    for key, mode in (modes or {}).items():
        try:
            kind = FindingKind(key)
        except ValueError:
            known = ", ".join(k.value for k in FindingKind)
            raise ObserveConfigError(f"unknown detector {key!r}: use one of {known}") from None
        if mode not in MODES:
            raise ObserveConfigError(f"mode {mode!r} for {key}: use one of {', '.join(MODES)}")
        parsed[kind] = mode
    return parsed


@dataclass(frozen=True)
class ObserveSettings:
    """What a :class:`Profiler` records and judges. Build it with keywords (the same ones
    ``Profiler(...)`` takes); a value it cannot take raises :class:`ObserveConfigError`."""

    # the database detectors
    slow_query_ms: float = 100.0
    explain: ExplainMode = "off"
    explain_timeout_ms: float = 2000.0
    explain_interval_s: float = 300.0
    explain_per_minute: int = 10
    n_plus_one_threshold: int = 2
    shape_threshold: int = 5
    max_rows: int = 1000
    # parameter values and SQL literals are shown only when this is on (secrets live there)
    capture_params: bool = False
    modes: Mapping[FindingKind, Mode] = field(default_factory=lambda: dict(DEFAULT_MODES))
    keep_queries: int = 1000
    # distinct scope names rolled up (histograms each): past this, new names (raw paths of
    # a URL scan, say) share one row
    max_names: int = 1000
    # the diagnosis: an endpoint meeting its p95 budget has bottleneck "none"
    budget_ms: float = 100.0
    budgets: Mapping[str, float] = field(default_factory=dict)
    # a step of the event loop longer than this blocked every request in flight
    blocking_ms: float = 20.0
    # sequential I/O: operations shorter than this are not worth running concurrently, and
    # a finding needs this much saving and this share of the request
    sequential_min_ms: float = 5.0
    sequential_saving_ms: float = 5.0
    sequential_saving_share: float = 0.10
    http_n_plus_one_threshold: int = 5
    # one dependency taking this share of a request is its bottleneck
    dependency_share: float = 0.5
    # connecting / waiting for a connection taking this share of a request
    connect_share: float = 0.05
    pool_wait_share: float = 0.1
    # a cache with a hit ratio under this after this many lookups costs more than it saves
    cache_min_hit_ratio: float = 0.5
    cache_min_lookups: int = 100

    def __post_init__(self) -> None:
        if self.explain not in ("off", "plan", "analyze"):
            raise ObserveConfigError(f"explain={self.explain!r}: use 'off', 'plan' or 'analyze'")
        positive = {
            "slow_query_ms": self.slow_query_ms,
            "explain_timeout_ms": self.explain_timeout_ms,
            "budget_ms": self.budget_ms,
            "blocking_ms": self.blocking_ms,
        }
        non_negative = {
            "explain_interval_s": self.explain_interval_s,
            "sequential_min_ms": self.sequential_min_ms,
            "sequential_saving_ms": self.sequential_saving_ms,
        }
        shares = {
            "sequential_saving_share": self.sequential_saving_share,
            "dependency_share": self.dependency_share,
            "connect_share": self.connect_share,
            "pool_wait_share": self.pool_wait_share,
            "cache_min_hit_ratio": self.cache_min_hit_ratio,
        }
        for name, value in positive.items():
            _number(name, value, "a positive number of milliseconds", lambda v: v > 0)
        for name, value in non_negative.items():
            _number(name, value, "zero or a positive number", lambda v: v >= 0)
        for name, value in shares.items():
            _number(name, value, "a share between 0 and 1", lambda v: 0 <= v <= 1)
        counts = {
            "explain_per_minute": (self.explain_per_minute, 0),
            "max_rows": (self.max_rows, 1),
            "keep_queries": (self.keep_queries, 0),
            "max_names": (self.max_names, 1),
            "cache_min_lookups": (self.cache_min_lookups, 1),
        }
        for name, (value, least) in counts.items():
            _count(name, value, least)
        for name in ("n_plus_one_threshold", "shape_threshold", "http_n_plus_one_threshold"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
                raise ObserveConfigError(
                    f"{name}={getattr(self, name)!r}: use a whole number of at least 2 "
                    "(one load is not a loop)"
                )
        for endpoint, budget in self.budgets.items():
            _number(f"budgets[{endpoint!r}]", budget, "a positive number of ms", lambda v: v > 0)
        # keys may be FindingKind or their names; kinds not named keep their default mode
        named = {getattr(kind, "value", kind): mode for kind, mode in self.modes.items()}
        object.__setattr__(self, "modes", parse_modes(named))

    def budget_for(self, name: str) -> float:
        return self.budgets.get(name, self.budget_ms)


def _number(name: str, value: object, expected: str, ok: Callable[[float], bool]) -> None:
    valid = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and ok(value)
    )
    if not valid:
        raise ObserveConfigError(f"{name}={value!r}: use {expected}")


def _count(name: str, value: object, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ObserveConfigError(f"{name}={value!r}: use a whole number of at least {least}")
