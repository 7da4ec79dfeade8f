"""The checks of the options a plan, ``instrument_pool`` and the psycopg pools share."""

from __future__ import annotations

from .._validate import check_number
from ._errors import PoolConfigError


def check_validate_idle_s(validate_idle_s: float | None) -> None:
    check_number(
        PoolConfigError,
        "validate_idle_s",
        validate_idle_s,
        at_least=0,
        none_means="never ping",
        meaning="seconds idle before a checkout pings the connection",
    )


def check_liveness_options(
    leak_threshold_s: float | None,
    validate_idle_s: float | None,
    max_lifetime_s: float | None,
    lifetime_jitter: float,
) -> None:
    """The options a plan and ``instrument_pool`` share (one set of rules for both)."""
    check_number(
        PoolConfigError,
        "leak_threshold_s",
        leak_threshold_s,
        above=0,
        none_means="no leak reports",
        meaning="seconds a connection may stay checked out before it is reported",
    )
    check_validate_idle_s(validate_idle_s)
    check_number(
        PoolConfigError,
        "max_lifetime_s",
        max_lifetime_s,
        above=0,
        none_means="unlimited",
        meaning="seconds before a connection is replaced",
    )
    check_number(
        PoolConfigError,
        "lifetime_jitter",
        lifetime_jitter,
        at_least=0,
        below=1,
        meaning="the fraction of max_lifetime_s taken off at random, e.g. 0.05",
    )
