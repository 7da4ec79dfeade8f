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
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from ._balance import Balancer
from ._config import Consistency, RoutingConfig
from ._errors import NoHealthyNodeError
from ._health import NodeHealth, ProbeResult, Role, WalHistory
from ._lsn import format_lsn
from ._tokens import server_of

_REBUILD = "rebuild it (or pg_rewind it) from the primary; it gets reads once it follows it"

# Execution options of a read-only caller's connection to the primary: the transaction is
# read-only on the server, and hotpath's error hook names the caller's mistake.
READONLY_OPTION = "hotpath_readonly"
READONLY_OPTIONS = {"postgresql_readonly": True, READONLY_OPTION: True}

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
    _readonly: Any = field(default=None, repr=False)

    @property
    def readonly_engine(self) -> Any:
        """``engine`` whose connections run read-only transactions (``BEGIN READ ONLY``).

        For a read sent to the primary on behalf of a read-only caller (``connect(readonly=
        True)``, ``Session(readonly=True)``): a replica refuses writes by itself, the primary
        must be told to. Shares the engine's pool; the driver's read-only flag is reset when
        the connection goes back to it (SQLAlchemy's ``postgresql_readonly``).
        """
        if self._readonly is None:
            self._readonly = self.engine.execution_options(**READONLY_OPTIONS)
        return self._readonly

    @property
    def readonly_bind(self) -> Engine:
        """:attr:`readonly_engine` in the form a Session binds to (the sync engine)."""
        engine = self.readonly_engine
        bind: Engine = engine if isinstance(engine, Engine) else engine.sync_engine
        return bind

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
        # Whose WAL positions this set's tokens are (the configured primary's server, kept
        # across a failover: the promoted replica continues its history).
        self.server = server_of(primary[1].url)
        self.counters: Counter[str] = Counter()
        self._writer = self.nodes[0]
        self._balancer = Balancer(config.policy)
        self._lock = threading.Lock()
        self._tally_lock = threading.Lock()

    # -- writer ----------------------------------------------------------------------------

    @property
    def writer(self) -> RoutedNode:
        return self._writer

    def _elect_writer(self, now: float) -> RoutedNode | None:
        """Keep the writer while it is a reachable primary; else take a node that became one."""
        current = self._writer
        if current.health.role == "primary" and current.health.admitted:
            return None
        for node in self.nodes:
            if node is not current and node.health.role == "primary" and node.health.admitted:
                self._writer = node
                self.counters["failovers"] += 1
                # Positions and lag are measured on the new primary's timeline from now on
                # (the old primary's history may run ahead of it), and every replica serves
                # again only once it is seen to follow the new primary.
                self.history = WalHistory()
                if node.health.lsn is not None:
                    self.history.record(node.health.lsn, now)
                for other in self.nodes:
                    if other is not node:
                        other.health.start_following()
                return node
        return None

    # -- probes ----------------------------------------------------------------------------

    def record_probe(
        self, node: RoutedNode, result: ProbeResult, now: float, started: float | None = None
    ) -> RoutedNode | None:
        """Apply a probe begun at ``started`` (default ``now``) and answered at ``now``.

        Returns the new writer when this probe revealed a failover.
        """
        started = now if started is None else started
        with self._lock:
            node.health.probe_started_at = None
            writer_probe = node is self._writer and not result.in_recovery
            if writer_probe:
                self.history.record(result.lsn, now)
            elif result.in_recovery:
                self._judge_replica(node, result, now)
            before = self._ejections()
            node.health.observe(
                result, self.history.latest, self.history, self.config, now, started
            )
            elected = self._elect_writer(now)
            if node is self._writer and not result.in_recovery:
                self._judge_pending(result.lsn, started)
            self.counters["ejections"] += self._ejections() - before
            return elected

    def _ejections(self) -> int:
        return sum(n.health.ejections for n in self.nodes)

    def _judge_replica(self, node: RoutedNode, result: ProbeResult, now: float) -> None:
        """Does this replica follow the writer? By timeline when both are known, else by position.

        A replica's replayed position can never be beyond its primary's flushed position on
        the same history (only flushed WAL is streamed); a replica left on the old timeline by
        a failover to a less advanced replica is (GitLab-style tokens would all look replayed
        there). Positions are compared only in time order: the replica's read first, the
        primary's after.
        """
        health, writer = node.health, self._writer.health
        primary_timeline = writer.timeline if writer.role == "primary" else None
        timeline = result.timeline
        if timeline is not None and primary_timeline is not None and timeline != primary_timeline:
            health.mark_diverged(
                f"diverged: streams timeline {timeline}, the primary is on timeline "
                f"{primary_timeline}: {_REBUILD}"
            )
            return
        if health.following == "diverged" and (timeline is None or timeline != primary_timeline):
            return  # once diverged, only the primary's timeline seen on it lets it back in
        primary = self.history.latest
        if primary is not None and result.lsn <= primary:
            health.following, health.follow_reason, health.ahead = "follows", None, None
        else:
            health.ahead = (result.lsn, now)  # the primary's next probe decides

    def _judge_pending(self, primary: int, started: float) -> None:
        """Decide replicas seen beyond the primary's position before this primary probe began."""
        for node in self.nodes:
            health = node.health
            if node is self._writer or health.ahead is None or health.ahead[1] > started:
                continue
            replayed = health.ahead[0]
            if replayed > primary:
                health.diverge(
                    f"diverged: replayed {format_lsn(replayed)}, ahead of the primary's "
                    f"{format_lsn(primary)} (it kept the old primary's timeline): {_REBUILD}",
                    self.config,
                )
            else:
                health.following, health.follow_reason, health.ahead = "follows", None, None

    def awaiting_primary(self) -> bool:
        """A replica waits for the primary's next probe to be judged (seen beyond its last
        known position: caught up with newer writes, or on another history)."""
        return any(
            n.health.following == "unconfirmed" and n.health.ahead is not None
            for n in self.nodes
            if n is not self._writer
        )

    def cap_token(self, token: int, primary: int, flushed: int) -> int:
        """``token`` limited by ``primary``, the insert position just read on the writer, and
        cut to ``flushed``, its flushed position read with it, when beyond it.

        A token beyond the insert position was not issued by this primary: forged, or taken
        on the old timeline before a failover that lost that write. No node has such a
        position. It is cut to the flushed position: every commit the holder can have made
        on this primary is in it, and it is what replicas receive. Cut to the insert
        position, it asked for WAL nothing flushes before the next commit (a read's pruning
        in a rolled-back transaction, see ``_probe``): no replica ever had it, and every read
        with the token fell back to the primary. (Not recorded in :attr:`history`, which
        lag is measured against.)
        """
        if token <= primary:
            return token
        self.counters["tokens capped"] += 1
        return min(flushed, primary)

    def record_failure(self, node: RoutedNode, reason: str, now: float, *, at_once: bool) -> None:
        """A probe failed, or (``at_once``) a read could not reach the node."""
        with self._lock:
            node.health.probe_started_at = None
            before = node.health.ejections
            node.health.fail(reason, self.config, now, at_once=at_once)
            if node.health.ejections > before:
                self.counters["ejections"] += 1
            self._elect_writer(now)

    def probe_started(self, node: RoutedNode, now: float) -> None:
        # A probe still unanswered keeps its start: two probes of one node can overlap (a
        # hung first probe of start() and the node's monitor, or probe_now()), and the older
        # one is what says the node hangs.
        if node.health.probe_started_at is None:
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
            and n.health.following == "follows"
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
            route.node.health.note_replayed(position, time.monotonic())
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
            now, timeout = time.monotonic(), self.config.probe_timeout_s
            reachable = [
                n
                for n in self.nodes
                if n.health.role == "replica"
                and n.health.following == "follows"  # lagging is fine, another history is not
                and n is not self._writer
                and n not in exclude
                and n.health.reachable
                and not n.health.probe_hung(now, timeout)  # its last answer is out of date
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
            follows = writer or h.following == "follows"
            healthy = (
                h.admitted
                and not hung
                and follows
                and (h.role == "primary" if writer else h.role == "replica")
            )
            reason = h.reason
            if not follows and h.role == "replica" and h.follow_reason is not None:
                reason = h.follow_reason
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
