"""Prometheus collector for instrumented pools; reads snapshots at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._metrics import PoolMetrics

_QUANTILES = (50.0, 90.0, 99.0, 99.9)


class PoolCollector(Collector):
    """``REGISTRY.register(PoolCollector(metrics, ...))``: gauges, counters, summaries."""

    def __init__(self, *pools: PoolMetrics) -> None:
        self.pools: list[PoolMetrics] = list(pools)

    def add(self, metrics: PoolMetrics) -> None:
        self.pools.append(metrics)

    def collect(self) -> Iterator[Metric]:
        yield from _collect(self.pools)


def _collect(pools: Iterable[PoolMetrics]) -> Iterator[Metric]:
    labels = ["pool"]
    gauges = {
        "size": GaugeMetricFamily("hotpath_pool_size", "Open connections", labels=labels),
        "checked_out": GaugeMetricFamily(
            "hotpath_pool_checked_out", "Connections in use", labels=labels
        ),
        "idle": GaugeMetricFamily("hotpath_pool_idle", "Idle connections", labels=labels),
        "overflow": GaugeMetricFamily(
            "hotpath_pool_overflow", "Connections above pool_size", labels=labels
        ),
        "waiting": GaugeMetricFamily(
            "hotpath_pool_waiting", "Callers waiting for a connection", labels=labels
        ),
        "max": GaugeMetricFamily("hotpath_pool_max", "pool_size + max_overflow", labels=labels),
        "oldest": GaugeMetricFamily(
            "hotpath_pool_oldest_connection_age_seconds",
            "Age of the oldest connection",
            labels=labels,
        ),
    }
    counters = {
        name: CounterMetricFamily(f"hotpath_pool_{name}", doc, labels=labels)
        for name, doc in {
            "checkouts": "Connections handed out",
            "timeouts": "Acquires that timed out",
            "invalidations": "Connections discarded as broken",
            "expired": "Connections retired at max lifetime",
            "connects": "Connections opened",
            "pings": "Liveness checks run",
            "pings_failed": "Liveness checks that failed",
            "leaks": "Connections held past the leak threshold",
        }.items()
    }
    summaries: dict[str, Metric] = {
        kind: Metric(f"hotpath_pool_{kind}_seconds", doc, "summary")
        for kind, doc in {
            "acquire_wait": "Time to get a connection from the pool",
            "hold": "Time a connection stays checked out",
            "connect": "Time to open a new connection",
        }.items()
    }
    for metrics in pools:
        snap = metrics.snapshot(holders=False)
        key = [snap.name]
        gauges["size"].add_metric(key, snap.size)
        gauges["checked_out"].add_metric(key, snap.checked_out)
        gauges["idle"].add_metric(key, snap.idle)
        gauges["overflow"].add_metric(key, snap.overflow)
        gauges["max"].add_metric(key, snap.pool_size + snap.max_overflow)
        if snap.waiting is not None:
            gauges["waiting"].add_metric(key, snap.waiting)
        if snap.oldest_connection_age_s is not None:
            gauges["oldest"].add_metric(key, snap.oldest_connection_age_s)
        for name, counter in counters.items():
            value = getattr(snap, name)
            if value is not None:
                counter.add_metric(key, value)
        for kind, hist in metrics.histograms().items():
            summary = summaries[kind]
            name = summary.name
            for quantile in _QUANTILES:
                summary.add_sample(
                    name,
                    {"pool": snap.name, "quantile": str(quantile / 100)},
                    hist.get_value_at_percentile(quantile) / 1e6,
                )
            count = hist.get_total_count()
            summary.add_sample(f"{name}_count", {"pool": snap.name}, count)
            summary.add_sample(
                f"{name}_sum", {"pool": snap.name}, hist.get_mean_value() * count / 1e6
            )
    yield from gauges.values()
    yield from counters.values()
    yield from summaries.values()
