"""Prometheus collector for a replica set: reads per node, lag, health, ejections, fallbacks."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._base import ReplicaSetBase


class RoutingCollector(Collector):
    """``REGISTRY.register(RoutingCollector(replicas))``; read at scrape time, no extra work."""

    def __init__(self, replicas: ReplicaSetBase, set_name: str = "default") -> None:
        self.replicas = replicas
        self.set_name = set_name

    def collect(self) -> Iterator[Metric]:
        labels = ["set", "node"]
        reads = CounterMetricFamily(
            "hotpath_routing_reads", "Reads routed to a node", labels=labels
        )
        ejections = CounterMetricFamily(
            "hotpath_routing_ejections", "Times a node was ejected", labels=labels
        )
        healthy = GaugeMetricFamily(
            "hotpath_routing_healthy", "1 if the node is used", labels=labels
        )
        lag_s = GaugeMetricFamily("hotpath_routing_lag_seconds", "Replica lag", labels=labels)
        lag_b = GaugeMetricFamily(
            "hotpath_routing_lag_bytes", "Replica lag in WAL bytes", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "hotpath_routing_in_flight", "Connections in use per node", labels=labels
        )
        for node in self.replicas.status():
            key = [self.set_name, node.name]
            reads.add_metric(key, node.reads)
            ejections.add_metric(key, node.ejections)
            healthy.add_metric(key, 1.0 if node.healthy else 0.0)
            in_flight.add_metric(key, node.in_flight)
            if node.lag_s is not None:
                lag_s.add_metric(key, node.lag_s)
            if node.lag_bytes is not None:
                lag_b.add_metric(key, node.lag_bytes)
        events = CounterMetricFamily(
            "hotpath_routing_events",
            "Fallbacks to the primary, token checks and waits, retries",
            labels=["set", "event"],
        )
        for name, count in sorted(self.replicas.stats().items()):
            events.add_metric([self.set_name, name], count)
        yield from (reads, ejections, healthy, lag_s, lag_b, in_flight, events)
