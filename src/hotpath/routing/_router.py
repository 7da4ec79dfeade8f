"""The routing brain shared by :class:`ReplicaSet` and :class:`AsyncReplicaSet` (no I/O here).

It holds each node's health, picks the writer (following a promotion seen by the probes) and
picks a replica for a read given the caller's consistency and read-your-writes token.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from ._balance import Balancer
from ._config import Consistency, RoutingConfig
from ._errors import NoHealthyNodeError
from ._health import NodeHealth, ProbeResult, Role, WalHistory
from ._lsn import format_lsn

# Ids of the routers whose reads must go to the primary in the current context.
_PRIMARY_ONLY: ContextVar[frozenset[int]] = ContextVar("hotpath_primary_only", default=frozenset())


@dataclass
class RoutedNode:
    """One server of the set: the user's engine, its sync form, its weight and its health."""

    name: str
    engine: Any  # Engine, or AsyncEngine for the async twin
    bind: Engine  # what a Session binds to (``AsyncEngine.sync_engine`` for the async twin)
    weight: float
    health: NodeHealth

    @property
    def in_flight(self) -> int:
        """Connections of this node's pool in use now (QueuePool and its async twin count them)."""
        checkedout = getattr(self.bind.pool, "checkedout", None)
        return int(checkedout()) if callable(checkedout) else 0

    @property
    def lag_key(self) -> tuple[float, int]:
        return (self.health.lag_s or 0.0, self.health.lag_bytes or 0)

    @property
    def address(self) -> str:
        url = self.bind.url
        return f"{url.host}:{url.port}/{url.database}"


@dataclass(frozen=True)
class Route:
    """Where a read goes. ``verify``: the token is not known to be replayed there; check first."""

    node: RoutedNode
    verify: bool = False
    fallback: str | None = None  # why the primary serves a read, when it does


@dataclass(frozen=True)
class NodeReport:
    """One node in :meth:`ReplicaSet.status`."""

    name: str
    address: str
    role: Role
    writer: bool
    healthy: bool
    lag_s: float | None
    lag_bytes: int | None
    replayed: str | None
    replay_paused: bool | None
    in_flight: int
    reads: int
    ejections: int
    why_ejected: str | None


class RouterCore:
    """Node health, writer discovery and replica choice for one replica set."""

    def __init__(
        self,
        primary: tuple[Any, Engine],
        replicas: Sequence[tuple[Any, Engine]],
        config: RoutingConfig,
    ) -> None:
        self.config = config
        weights = config.weights or (1.0,) * len(replicas)
        self.nodes: list[RoutedNode] = [
            RoutedNode("primary", primary[0], primary[1], 1.0, NodeHealth("primary", "primary"))
        ] + [
            RoutedNode(f"replica{i}", engine, bind, weight, NodeHealth(f"replica{i}", "replica"))
            for i, ((engine, bind), weight) in enumerate(zip(replicas, weights, strict=True), 1)
        ]
        self.history = WalHistory()
        self.counters: Counter[str] = Counter()
        self._writer = self.nodes[0]
        self._balancer = Balancer(config.policy)
        self._lock = threading.Lock()
        self._tally_lock = threading.Lock()

    # -- writer ----------------------------------------------------------------------------

    @property
    def writer(self) -> RoutedNode:
        return self._writer

    def _elect_writer(self) -> RoutedNode | None:
        """Keep the writer while it is a reachable primary; else take a node that became one."""
        current = self._writer
        if current.health.role == "primary" and current.health.admitted:
            return None
        for node in self.nodes:
            if node is not current and node.health.role == "primary" and node.health.admitted:
                self._writer = node
                self.counters["failovers"] += 1
                return node
        return None

    # -- probes ----------------------------------------------------------------------------

    def record_probe(self, node: RoutedNode, result: ProbeResult, now: float) -> RoutedNode | None:
        """Apply a probe; returns the new writer when this probe revealed a failover."""
        with self._lock:
            node.health.probe_started_at = None
            if not result.in_recovery and (
                node is self._writer or self._writer.health.role != "primary"
            ):
                self.history.record(result.lsn, now)
            before = node.health.ejections
            node.health.observe(result, self.history.latest, self.history, self.config, now)
            elected = self._elect_writer()
            if node.health.ejections > before:
                self.counters["ejections"] += 1
            return elected

    def record_failure(self, node: RoutedNode, reason: str, now: float, *, at_once: bool) -> None:
        """A probe failed, or (``at_once``) a read could not reach the node."""
        with self._lock:
            node.health.probe_started_at = None
            before = node.health.ejections
            node.health.fail(reason, self.config, now, at_once=at_once)
            if node.health.ejections > before:
                self.counters["ejections"] += 1
            self._elect_writer()

    def probe_started(self, node: RoutedNode, now: float) -> None:
        node.health.probe_started_at = now

    # -- reads -----------------------------------------------------------------------------

    @contextmanager
    def primary_only(self) -> Iterator[None]:
        reset = _PRIMARY_ONLY.set(_PRIMARY_ONLY.get() | {id(self)})
        try:
            yield
        finally:
            _PRIMARY_ONLY.reset(reset)

    def forced_primary(self) -> bool:
        forced = _PRIMARY_ONLY.get()
        return bool(forced) and id(self) in forced

    def eligible(self, exclude: Sequence[RoutedNode] = ()) -> list[RoutedNode]:
        now = time.monotonic()
        timeout = self.config.probe_timeout_s
        return [
            n
            for n in self.nodes
            if n.health.role == "replica"
            and n.health.admitted
            and n is not self._writer
            and n not in exclude
            and not n.health.probe_hung(now, timeout)
        ]

    def choose_read(
        self,
        token: int | None,
        consistency: Consistency,
        exclude: Sequence[RoutedNode] = (),
    ) -> Route:
        """The node for a read (see :class:`Route`); counts the read against it."""
        route = self._choose(token, consistency, exclude)
        if not route.verify:
            self.count_read(route)
        return route

    def count_read(self, route: Route) -> None:
        self.tally(route.node)
        if route.fallback is not None:
            self.counters[f"fallback: {route.fallback}"] += 1

    def settle(self, route: Route, position: int | None, token: int) -> Route:
        """Finish a ``verify`` route with the replayed ``position`` seen on the spot."""
        if position is not None:
            route.node.health.note_replayed(position)
        if position is not None and position >= token:
            verified = Route(route.node)
            self.count_read(verified)
            return verified
        return self.to_primary("token not replayed")

    def tally(self, node: RoutedNode) -> None:
        """Count one read on ``node`` (under a lock: threads must not lose counts)."""
        with self._tally_lock:
            node.health.reads += 1

    def to_primary(self, reason: str) -> Route:
        route = Route(self._writer, fallback=reason)
        self.count_read(route)
        return route

    def _choose(
        self, token: int | None, consistency: Consistency, exclude: Sequence[RoutedNode]
    ) -> Route:
        if consistency == "strong" or self.forced_primary():
            return Route(self._writer)
        eligible = self.eligible(exclude)
        needs_token = consistency == "read_your_writes" and token is not None
        if not eligible:
            return self._all_unhealthy(needs_token, exclude)
        if not needs_token:
            return Route(eligible[self._balancer.pick(eligible)])
        assert token is not None
        caught_up = [n for n in eligible if n.health.lsn is not None and n.health.lsn >= token]
        if caught_up:
            return Route(caught_up[self._balancer.pick(caught_up)])
        # Not known yet: the last probe predates the write. Check this replica on the spot.
        return Route(eligible[self._balancer.pick(eligible)], verify=True)

    def _all_unhealthy(self, needs_token: bool, exclude: Sequence[RoutedNode]) -> Route:
        policy = self.config.on_all_unhealthy
        if policy == "least_lagged":
            reachable = [
                n
                for n in self.nodes
                if n.health.role == "replica"
                and n is not self._writer
                and n not in exclude
                and n.health.reachable
                and n.health.lag_s is not None
            ]
            if reachable:
                best = min(reachable, key=lambda n: n.lag_key)
                return Route(best, verify=needs_token, fallback=None)
        if policy == "error":
            raise NoHealthyNodeError(
                "no replica may serve this read ("
                + "; ".join(f"{n.name}: {n.health.reason or 'excluded'}" for n in self.nodes[1:])
                + ") and on_all_unhealthy='error': use on_all_unhealthy='primary' to fall back"
                " to the primary, or fix the replicas"
            )
        return Route(self._writer, fallback="no healthy replica")

    # -- reporting -------------------------------------------------------------------------

    def status(self) -> list[NodeReport]:
        now = time.monotonic()
        reports = []
        for n in self.nodes:
            h = n.health
            hung = h.probe_hung(now, self.config.probe_timeout_s)
            writer = n is self._writer
            healthy = (
                h.admitted and not hung and (h.role == "primary" if writer else h.role == "replica")
            )
            reason = h.reason
            if hung:
                reason = f"probe unanswered for {now - (h.probe_started_at or now):.1f}s"
            elif h.admitted and not writer and h.role == "primary":
                reason = "not in recovery (promoted or detached): not used for reads"
            reports.append(
                NodeReport(
                    name=n.name,
                    address=n.address,
                    role=h.role,
                    writer=writer,
                    healthy=healthy,
                    lag_s=h.lag_s,
                    lag_bytes=h.lag_bytes,
                    replayed=None if h.lsn is None else format_lsn(h.lsn),
                    replay_paused=h.replay_paused,
                    in_flight=n.in_flight,
                    reads=h.reads,
                    ejections=h.ejections,
                    why_ejected=None if healthy else reason,
                )
            )
        return reports
