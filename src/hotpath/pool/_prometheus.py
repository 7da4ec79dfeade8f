"""Prometheus collector for instrumented pools; reads snapshots at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._metrics import PoolMetrics, PoolSnapshot

_QUANTILES = (50.0, 90.0, 99.0, 99.9)


class PoolCollector(Collector):
    """``REGISTRY.register(PoolCollector(metrics, ...))``: gauges, counters, summaries."""

    def __init__(self, *pools: PoolMetrics) -> None:
        self.pools: list[PoolMetrics] = list(pools)

    def add(self, metrics: PoolMetrics) -> None:
        self.pools.append(metrics)

    def collect(self) -> Iterator[Metric]:
        yield from _collect(self.pools)


class PoolFamilies:
    """The pool metric families, filled one pool at a time: from live :class:`PoolMetrics`
    (:class:`PoolCollector`) or from snapshots another process wrote (``hotpath.metrics``),
    so both expose the same names, labels and help."""

    def __init__(self) -> None:
        labels = ["pool"]
        self.gauges = {
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
        self.counters = {
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
        self.summaries: dict[str, Metric] = {
            kind: Metric(f"hotpath_pool_{kind}_seconds", doc, "summary")
            for kind, doc in {
                "acquire_wait": "Time to get a connection from the pool",
                "hold": "Time a connection stays checked out",
                "connect": "Time to open a new connection",
            }.items()
        }

    def add_snapshot(self, snap: PoolSnapshot) -> None:
        """The gauges and counters of one pool."""
        key = [snap.name]
        self.gauges["size"].add_metric(key, snap.size)
        self.gauges["checked_out"].add_metric(key, snap.checked_out)
        self.gauges["idle"].add_metric(key, snap.idle)
        self.gauges["overflow"].add_metric(key, snap.overflow)
        self.gauges["max"].add_metric(key, snap.pool_size + snap.max_overflow)
        if snap.waiting is not None:
            self.gauges["waiting"].add_metric(key, snap.waiting)
        if snap.oldest_connection_age_s is not None:
            self.gauges["oldest"].add_metric(key, snap.oldest_connection_age_s)
        for name, counter in self.counters.items():
            value = getattr(snap, name)
            if value is not None:
                counter.add_metric(key, value)

    def add_timing(
        self,
        pool: str,
        kind: str,
        quantiles: Iterable[tuple[float, float]],
        count: int,
        total_s: float | None,
    ) -> None:
        """One summary of one pool: ``(quantile, seconds)`` pairs, the count and, when known,
        the sum (a snapshot's percentiles carry no sum)."""
        summary = self.summaries[kind]
        name = summary.name
        for quantile, seconds in quantiles:
            summary.add_sample(name, {"pool": pool, "quantile": str(quantile)}, seconds)
        summary.add_sample(f"{name}_count", {"pool": pool}, count)
        if total_s is not None:
            summary.add_sample(f"{name}_sum", {"pool": pool}, total_s)

    def families(self) -> Iterator[Metric]:
        yield from self.gauges.values()
        yield from self.counters.values()
        yield from self.summaries.values()


def _collect(pools: Iterable[PoolMetrics]) -> Iterator[Metric]:
    families = PoolFamilies()
    for metrics in pools:
        snap = metrics.snapshot(holders=False)
        families.add_snapshot(snap)
        for kind, hist in metrics.histograms().items():
            count = hist.get_total_count()
            families.add_timing(
                snap.name,
                kind,
                [(q / 100, hist.get_value_at_percentile(q) / 1e6) for q in _QUANTILES],
                count,
                hist.get_mean_value() * count / 1e6,
            )
    yield from families.families()
