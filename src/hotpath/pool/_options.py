"""The options of a plan (:class:`PlanOptions`, one validated frozen object), and the checks
of the options a plan, ``instrument_pool`` and the psycopg pools share."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, TypedDict

from .._validate import check_number, with_keywords
from ._errors import PoolConfigError

PoolerMode = Literal["transaction", "session"]


class PlanKeywords(TypedDict, total=False):
    """The keyword options of ``PoolPlan.for_app(...)`` and ``PoolPlan.from_settings(...)``:
    each is a field of :class:`PlanOptions`, where its default and meaning are written once."""

    pgbouncer: PoolerMode | None
    server_cores: int | None
    effective_spindles: int
    headroom: int
    timeout_s: float
    validate_idle_s: float | None
    max_lifetime_s: float | None
    lifetime_jitter: float
    leak_threshold_s: float | None
    keepalives: bool


@dataclass(frozen=True)
class PlanOptions:
    """How a plan sizes and guards its pools, beyond the workload and the servers' budgets:
    validated once, into one frozen object that the plan passes on as is (a
    :class:`~hotpath.pool.PoolPlan` carries these fields too).

    ``pgbouncer``: the URLs point at a pooler in that mode (left out, ``for_app`` assumes one in
    transaction mode when the server answers on another port than dialled). ``server_cores``
    and ``effective_spindles``: HikariCP's useful-active estimate (``for_app`` reads the cores
    of this machine when the server is on loopback). ``headroom``: connections left free on
    each server. ``timeout_s``: how long a request waits for a connection. Liveness:
    ``validate_idle_s`` (ping only connections idle longer; None: never), ``max_lifetime_s``
    (replace older connections; None: never) less up to ``lifetime_jitter`` of it at random,
    ``leak_threshold_s`` (report connections checked out longer; None: never) and TCP
    ``keepalives``.
    """

    pgbouncer: PoolerMode | None = None
    server_cores: int | None = None
    effective_spindles: int = 0
    headroom: int = 5
    timeout_s: float = 5.0
    validate_idle_s: float | None = 0.5
    max_lifetime_s: float | None = 1800.0
    lifetime_jitter: float = 0.05
    leak_threshold_s: float | None = 30.0
    keepalives: bool = True

    def __post_init__(self) -> None:
        if self.pgbouncer not in {None, "transaction", "session"}:
            raise PoolConfigError(
                f"pgbouncer={self.pgbouncer!r}: use 'transaction', 'session', or leave it out"
            )
        check_number(
            PoolConfigError,
            "timeout_s",
            self.timeout_s,
            above=0,
            meaning="seconds a request waits for a connection before failing",
        )
        check_count("headroom", self.headroom)
        check_count("effective_spindles", self.effective_spindles)
        check_number(
            PoolConfigError,
            "server_cores",
            self.server_cores,
            integer=True,
            at_least=1,
            none_means="unknown",
            meaning="CPU cores of the database server",
        )
        check_liveness_options(
            self.leak_threshold_s, self.validate_idle_s, self.max_lifetime_s, self.lifetime_jitter
        )

    @classmethod
    def build(cls, options: PlanOptions | None, keywords: PlanKeywords) -> PlanOptions:
        """``options`` (or the defaults) with the ``keywords`` on top, validated once."""
        return with_keywords(cls, options, keywords, PoolConfigError, "a pool plan")

    def items(self) -> dict[str, Any]:
        """The options by name (what a plan is built with)."""
        return {f.name: getattr(self, f.name) for f in fields(PlanOptions)}


def check_count(name: str, value: object, none_means: str | None = None) -> None:
    check_number(PoolConfigError, name, value, integer=True, at_least=0, none_means=none_means)


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
