"""Prometheus collector for a replica set: reads per node, lag, health, ejections, fallbacks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._base import ReplicaSetBase


class RoutingCollector(Collector):
    """``REGISTRY.register(RoutingCollector(replicas))``; read at scrape time, no extra work."""

    def __init__(self, replicas: ReplicaSetBase, set_name: str = "default") -> None:
        self.replicas = replicas
        self.set_name = set_name

    def collect(self) -> Iterator[Metric]:
        nodes = [asdict(node) for node in self.replicas.status()]
        yield from routing_families([(self.set_name, nodes, self.replicas.stats())])


# A replica set as exporters see it: its name, its nodes (the fields of ``NodeReport``, as a
# mapping: a set of another process arrives as JSON) and its counters (``ReplicaSet.stats()``).
RoutingRow = tuple[str, Iterable[Mapping[str, Any]], Mapping[str, int]]


def routing_families(sets: Iterable[RoutingRow]) -> list[Metric]:
    """The routing metric families of these replica sets: what :class:`RoutingCollector`
    exports for a live set and ``hotpath.metrics`` for the sets of another process."""
    labels = ["set", "node"]
    reads = CounterMetricFamily("hotpath_routing_reads", "Reads routed to a node", labels=labels)
    ejections = CounterMetricFamily(
        "hotpath_routing_ejections", "Times a node was ejected", labels=labels
    )
    healthy = GaugeMetricFamily("hotpath_routing_healthy", "1 if the node is used", labels=labels)
    lag_s = GaugeMetricFamily("hotpath_routing_lag_seconds", "Replica lag", labels=labels)
    lag_b = GaugeMetricFamily(
        "hotpath_routing_lag_bytes", "Replica lag in WAL bytes", labels=labels
    )
    in_flight = GaugeMetricFamily(
        "hotpath_routing_in_flight", "Connections in use per node", labels=labels
    )
    events = CounterMetricFamily(
        "hotpath_routing_events",
        "Fallbacks to the primary, token checks and waits, retries",
        labels=["set", "event"],
    )
    for set_name, nodes, counters in sets:
        for node in nodes:
            key = [set_name, str(node["name"])]
            reads.add_metric(key, node.get("reads") or 0)
            ejections.add_metric(key, node.get("ejections") or 0)
            healthy.add_metric(key, 1.0 if node.get("healthy") else 0.0)
            in_flight.add_metric(key, node.get("in_flight") or 0)
            if node.get("lag_s") is not None:
                lag_s.add_metric(key, node["lag_s"])
            if node.get("lag_bytes") is not None:
                lag_b.add_metric(key, node["lag_bytes"])
        for name, count in sorted(counters.items()):
            events.add_metric([set_name, name], count)
    return [reads, ejections, healthy, lag_s, lag_b, in_flight, events]
