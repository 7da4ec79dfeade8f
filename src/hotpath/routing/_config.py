"""Validated options of a replica set and of routed sessions, shared by the sync and async twins."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, get_args

from .._validate import with_keywords
from ._errors import RoutingConfigError

Policy = Literal["least_in_flight", "round_robin", "random"]
AllUnhealthy = Literal["primary", "least_lagged", "error"]
Consistency = Literal["read_your_writes", "eventual", "strong"]
TokenMode = Literal["fast", "wait"]


class RoutingOptions(TypedDict, total=False):
    """The keyword options of ``ReplicaSet(...)`` and ``AsyncReplicaSet(...)``: each is a
    field of :class:`RoutingConfig`, where its default and its meaning are written once."""

    max_lag_s: float
    max_lag_bytes: int | None
    policy: Policy
    weights: Sequence[float] | None
    probe_interval_s: float
    probe_timeout_s: float
    eject_after: int
    readmit_after: int
    on_all_unhealthy: AllUnhealthy


@dataclass(frozen=True)
class RoutingConfig:
    """How a replica set probes, ejects and balances: one validated object, built once by the
    set (``ReplicaSet(primary, replicas, config=..., **options)``) and passed through as is.

    Every node is probed every ``probe_interval_s`` (jittered ±20%) with ``probe_timeout_s``
    timeouts. A replica is ejected after ``eject_after`` bad probes (error, or lag over
    ``max_lag_s`` / ``max_lag_bytes``) and readmitted after ``readmit_after`` good ones.
    ``policy`` balances reads (``weights``: one share per replica, for ``"round_robin"`` and
    ``"random"``). ``on_all_unhealthy``: ``"primary"`` (reads fall back to the primary),
    ``"least_lagged"`` (the least lagged reachable replica) or ``"error"``.
    """

    max_lag_s: float = 1.0
    max_lag_bytes: int | None = None
    policy: Policy = "least_in_flight"
    weights: Sequence[float] | None = None
    probe_interval_s: float = 0.5
    probe_timeout_s: float = 1.0
    eject_after: int = 2
    readmit_after: int = 2
    on_all_unhealthy: AllUnhealthy = "primary"

    def __post_init__(self) -> None:
        _positive("max_lag_s", self.max_lag_s)
        if self.max_lag_bytes is not None and (
            not isinstance(self.max_lag_bytes, int) or self.max_lag_bytes < 0
        ):
            raise RoutingConfigError(
                f"max_lag_bytes={self.max_lag_bytes!r}: give a whole number of bytes >= 0, or None"
            )
        _choice("policy", self.policy, Policy)
        _choice("on_all_unhealthy", self.on_all_unhealthy, AllUnhealthy)
        _positive("probe_interval_s", self.probe_interval_s)
        _positive("probe_timeout_s", self.probe_timeout_s)
        for name in ("eject_after", "readmit_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RoutingConfigError(f"{name}={value!r}: give a whole number of probes >= 1")
        if self.weights is not None:  # a tuple: the config stays frozen and hashable
            object.__setattr__(self, "weights", tuple(self.weights))

    @classmethod
    def build(
        cls, replica_count: int, config: RoutingConfig | None, options: RoutingOptions
    ) -> RoutingConfig:
        """``config`` (or the defaults) with the keyword ``options`` on top, validated once,
        with ``weights`` checked against the number of replicas."""
        built = with_keywords(cls, config, options, RoutingConfigError, "a replica set")
        weights = built.weights
        if weights is not None and (
            len(weights) != replica_count
            or not all(isinstance(w, (int, float)) and w > 0 and math.isfinite(w) for w in weights)
        ):
            raise RoutingConfigError(
                f"weights={list(weights)!r}: give one positive number per replica "
                f"({replica_count}), or leave weights out for equal shares"
            )
        return built


@dataclass(frozen=True)
class SessionOptions:
    """How a routed session reads: consistency, and what to do about an unreplayed token."""

    consistency: Consistency = "read_your_writes"
    mode: TokenMode = "fast"
    wait_timeout_s: float = 0.5

    def __post_init__(self) -> None:
        _choice("consistency", self.consistency, Consistency)
        _choice("mode", self.mode, TokenMode)
        _positive("wait_timeout_s", self.wait_timeout_s)


def _positive(name: str, value: object) -> None:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise RoutingConfigError(f"{name}={value!r}: give a positive number of seconds")


def _choice(name: str, value: object, options: object) -> None:
    allowed = get_args(options)
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise RoutingConfigError(f"{name}={value!r} is not one of {listed}: pick one of those")
