"""A RUN STATE as Prometheus metric families, read at scrape time.

A RUN STATE lists pools, caches, replica sets and breakers once per worker process. The
exposition has no process label (a pid is unbounded over restarts): the items of one name
are merged across workers here, counters and gauges summed (connections open in every
worker, hits of every worker), quantiles, lags and states taken from the worst worker.
The pool, routing and breaker families are those of :class:`hotpath.pool.PoolCollector`,
:class:`hotpath.routing.RoutingCollector` and :class:`hotpath.concurrent.BreakerCollector`,
filled from the state's data instead of live objects.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import fields
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..cache._stats import Counters
from ..concurrent._breaker import BreakerState, BreakerStats, breaker_families
from ..pool._metrics import Holder, Percentiles, PoolSnapshot
from ..pool._prometheus import PoolFamilies
from ..routing._metrics import RoutingRow, routing_families

RunState = Mapping[str, Any]
Source = Callable[[], RunState]

# quantile label -> the endpoint field holding it (1 is the maximum, as in Prometheus' own
# summaries of Go's runtime)
_LATENCY = {"0.5": "p50_ms", "0.95": "p95_ms", "0.99": "p99_ms", "1": "max_ms"}
_LAYER_QUANTILES = {"0.5": "p50_ms", "0.95": "p95_ms", "0.99": "p99_ms"}
_TIMED = ("acquire_wait", "hold", "connect")
# a breaker's states from best to worst: merged across workers, the worst one shows
_STATE_RANK = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
# cache counters with a family of their own; the others go to hotpath_cache_events
_CACHE_OWN = {"l1_hits", "l2_hits", "misses", "loads", "load_seconds", "stampede_joins"}
_CACHE_EVENTS = [f.name for f in fields(Counters) if f.name not in _CACHE_OWN]


class RunStateCollector(Collector):
    """``registry.register(RunStateCollector(source))``: ``source()`` returns the RUN STATE
    to export (called once per scrape)."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        state = self.source()
        yield from _endpoint_families(state.get("report") or {})
        yield from _pool_families(state.get("pools") or [])
        yield from _cache_families(state.get("caches") or [])
        yield from routing_families(_routing_rows(state.get("routing") or []))
        yield from breaker_families(_breaker_stats(state.get("breakers") or []))
        yield from _run_families(state)


def exposition(state: RunState) -> bytes:
    """The Prometheus text exposition of ``state``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunStateCollector(lambda: state))
    return generate_latest(registry)


def _endpoint_families(report: Mapping[str, Any]) -> Iterator[Metric]:
    endpoint = ["endpoint"]
    requests = CounterMetricFamily(
        "hotpath_endpoint_requests", "Requests (scopes) seen per endpoint", labels=endpoint
    )
    time_ms = CounterMetricFamily(
        "hotpath_endpoint_time_ms",
        "Wall time spent in the endpoint, all requests together (its rank)",
        labels=endpoint,
    )
    latency = GaugeMetricFamily(
        "hotpath_endpoint_latency_ms",
        "Request latency since the run started (quantile 1 is the maximum)",
        labels=[*endpoint, "quantile"],
    )
    layer_ms = GaugeMetricFamily(
        "hotpath_endpoint_layer_ms",
        "Mean time per request in each layer (they add up to the mean latency)",
        labels=[*endpoint, "layer"],
    )
    layer_latency = GaugeMetricFamily(
        "hotpath_endpoint_layer_latency_ms",
        "Time per request in one layer, by quantile",
        labels=[*endpoint, "layer", "quantile"],
    )
    queries = GaugeMetricFamily(
        "hotpath_endpoint_queries",
        "Queries per request (quantile 0.5: the median; 1: the most)",
        labels=[*endpoint, "quantile"],
    )
    budget = GaugeMetricFamily(
        "hotpath_endpoint_budget_ms", "The endpoint's p95 latency budget", labels=endpoint
    )
    bottleneck = GaugeMetricFamily(
        "hotpath_endpoint_bottleneck",
        "1 for the class of problem that costs the endpoint most time",
        labels=[*endpoint, "bottleneck"],
    )
    saving = GaugeMetricFamily(
        "hotpath_fix_saving_ms",
        "Time the fixes of one kind would save in one endpoint over the run",
        labels=["kind", "endpoint"],
    )
    found = CounterMetricFamily(
        "hotpath_findings",
        "Requests in which a finding of this kind was made",
        labels=["kind", "endpoint"],
    )
    for stats in report.get("endpoints", []):
        name = str(stats["name"])
        requests.add_metric([name], stats["count"])
        time_ms.add_metric([name], stats.get("total_ms", 0.0))
        for quantile, key in _LATENCY.items():
            latency.add_metric([name, quantile], stats[key])
        for layer, ms in stats.get("breakdown_ms", {}).items():
            layer_ms.add_metric([name, layer], ms)
        for layer, percentiles in stats.get("layers", {}).items():
            for quantile, key in _LAYER_QUANTILES.items():
                layer_latency.add_metric([name, layer, quantile], percentiles[key])
        queries.add_metric([name, "0.5"], stats.get("queries_p50", 0))
        queries.add_metric([name, "1"], stats.get("queries_max", 0))
        budget.add_metric([name], stats.get("budget_ms", 0.0))
        bottleneck.add_metric([name, str(stats.get("bottleneck", "none"))], 1.0)
        savings: dict[str, float] = defaultdict(float)
        scopes: dict[str, int] = defaultdict(int)
        for fix in stats.get("fixes", []):
            savings[fix["kind"]] += fix["saving_ms"]
            scopes[fix["kind"]] += fix["scopes"]
        for kind, ms in sorted(savings.items()):
            saving.add_metric([kind, name], ms)
            found.add_metric([kind, name], scopes[kind])
    yield from (requests, time_ms, latency, layer_ms, layer_latency, queries, budget, bottleneck)
    yield from (saving, found)


def _percentiles(items: list[Mapping[str, Any]], key: str) -> Percentiles | None:
    present = [item[key] for item in items if item.get(key)]
    if not present:
        return None
    return Percentiles(
        max(p["p50"] for p in present),
        max(p["p99"] for p in present),
        max(p["max"] for p in present),
        sum(p["count"] for p in present),
    )


def _optional_sum(items: list[Mapping[str, Any]], key: str) -> int | None:
    values = [item[key] for item in items if item.get(key) is not None]
    return sum(values) if values else None


def merge_pools(items: Iterable[Mapping[str, Any]]) -> list[PoolSnapshot]:
    """One :class:`PoolSnapshot` per pool name out of every worker's (``dataclasses.asdict``)
    snapshots: connections and counters summed, percentiles the worst worker's."""
    by_name: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for item in items:
        by_name[str(item["name"])].append(item)
    merged = []
    for name, group in sorted(by_name.items()):
        summed = {
            key: sum(item.get(key) or 0 for item in group)
            for key in (
                "size",
                "checked_out",
                "idle",
                "overflow",
                "pool_size",
                "max_overflow",
                "checkouts",
                "invalidations",
                "expired",
                "connects",
                "pings",
                "pings_failed",
                "leaks",
            )
        }
        ages = [
            item["oldest_connection_age_s"]
            for item in group
            if item.get("oldest_connection_age_s") is not None
        ]
        empty = Percentiles(0.0, 0.0, 0.0, 0)
        merged.append(
            PoolSnapshot(
                name=name,
                kind=str(group[0].get("kind", "")),
                waiting=_optional_sum(group, "waiting"),
                timeouts=_optional_sum(group, "timeouts"),
                acquire_wait=_percentiles(group, "acquire_wait"),
                hold=_percentiles(group, "hold") or empty,
                connect=_percentiles(group, "connect") or empty,
                oldest_connection_age_s=max(ages) if ages else None,
                holders=tuple(
                    Holder(**holder) for item in group for holder in item.get("holders", ())
                ),
                **summed,
            )
        )
    return merged


def _pool_families(items: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
    families = PoolFamilies()
    for snap in merge_pools(items):
        families.add_snapshot(snap)
        for kind in _TIMED:
            timing: Percentiles | None = getattr(snap, kind)
            if timing is None:
                continue
            quantiles = [(0.5, timing.p50 / 1e3), (0.99, timing.p99 / 1e3)]
            # a snapshot's percentiles carry no sum: the summary has quantiles and a count
            families.add_timing(snap.name, kind, quantiles, timing.count, None)
    yield from families.families()


def _cache_families(items: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
    namespace = ["namespace"]
    hits = CounterMetricFamily(
        "hotpath_cache_hits",
        "Lookups answered by a tier (l1: in process, l2: Redis)",
        labels=[*namespace, "tier"],
    )
    misses = CounterMetricFamily(
        "hotpath_cache_misses", "Lookups no tier could answer", labels=namespace
    )
    loads = CounterMetricFamily("hotpath_cache_loads", "Loader calls", labels=namespace)
    load_seconds = CounterMetricFamily(
        "hotpath_cache_load_seconds", "Time spent in loader calls", labels=namespace
    )
    joins = CounterMetricFamily(
        "hotpath_cache_stampede_joins",
        "Callers that shared another caller's load instead of loading again",
        labels=namespace,
    )
    events = CounterMetricFamily(
        "hotpath_cache_events",
        "Other cache events: stale values served, lease waits, Redis errors, invalidations...",
        labels=[*namespace, "event"],
    )
    ratio = GaugeMetricFamily(
        "hotpath_cache_hit_ratio", "Hits over lookups since start", labels=namespace
    )
    l1_entries = GaugeMetricFamily(
        "hotpath_cache_l1_entries", "Entries in the in-process tier", labels=namespace
    )
    circuit = GaugeMetricFamily(
        "hotpath_cache_circuit",
        "1 for the state of the cache's circuit to Redis",
        labels=[*namespace, "state"],
    )
    by_name: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for item in items:
        by_name[str(item.get("namespace", ""))].append(item)
    for name, group in sorted(by_name.items()):

        def total(key: str, group: list[Mapping[str, Any]] = group) -> float:
            return float(sum(item.get(key) or 0 for item in group))

        hits.add_metric([name, "l1"], total("l1_hits"))
        hits.add_metric([name, "l2"], total("l2_hits"))
        misses.add_metric([name], total("misses"))
        loads.add_metric([name], total("loads"))
        load_seconds.add_metric([name], total("load_seconds"))
        joins.add_metric([name], total("stampede_joins"))
        for event in _CACHE_EVENTS:
            events.add_metric([name, event], total(event))
        lookups = total("l1_hits") + total("l2_hits") + total("misses")
        ratio.add_metric([name], (total("l1_hits") + total("l2_hits")) / lookups if lookups else 0)
        l1_entries.add_metric([name], total("l1_size"))
        states = [
            BreakerState(item["circuit"])
            for item in group
            if item.get("circuit") in BreakerState._value2member_map_
        ]
        if states:  # "n/a" without a Redis tier: no circuit
            worst = max(states, key=_STATE_RANK.__getitem__)
            for candidate in BreakerState:
                circuit.add_metric([name, candidate.value], float(candidate is worst))
    yield from (hits, misses, loads, load_seconds, joins, events, ratio, l1_entries, circuit)


def _routing_rows(items: Iterable[Mapping[str, Any]]) -> list[RoutingRow]:
    """One row per replica-set name: reads, ejections and in-flight connections summed over
    the workers, lag the largest, a node healthy only if every worker uses it."""
    nodes: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    counters: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for item in items:
        set_name = str(item.get("name", "default"))
        for node in item.get("nodes", []):
            seen = nodes[set_name].get(node["name"])
            if seen is None:
                nodes[set_name][node["name"]] = dict(node)
                continue
            for key in ("reads", "ejections", "in_flight"):
                seen[key] = (seen.get(key) or 0) + (node.get(key) or 0)
            seen["healthy"] = bool(seen.get("healthy")) and bool(node.get("healthy"))
            for key in ("lag_s", "lag_bytes"):
                values = [v for v in (seen.get(key), node.get(key)) if v is not None]
                seen[key] = max(values) if values else None
        for name, count in (item.get("stats") or {}).items():
            counters[set_name][name] += count
    return [
        (set_name, list(nodes[set_name].values()), counters[set_name])
        for set_name in sorted(set(nodes) | set(counters))
    ]


def _breaker_stats(items: Iterable[Mapping[str, Any]]) -> list[BreakerStats]:
    by_name: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for item in items:
        by_name[str(item["name"])].append(item)
    merged = []
    for name, group in sorted(by_name.items()):
        states = [BreakerState(item.get("state", "closed")) for item in group]

        def total(key: str, group: list[Mapping[str, Any]] = group) -> int:
            return int(sum(item.get(key) or 0 for item in group))

        merged.append(
            BreakerStats(
                name,
                max(states, key=_STATE_RANK.__getitem__),
                max(item.get("consecutive_failures") or 0 for item in group),
                total("successes"),
                total("failures"),
                total("rejected"),
                total("opened"),
            )
        )
    return merged


def _run_families(state: RunState) -> Iterator[Metric]:
    workers = GaugeMetricFamily(
        "hotpath_run_workers", "Worker processes reporting to the run", labels=["alive"]
    )
    alive = sum(1 for worker in state.get("workers", []) if worker.get("alive", True))
    workers.add_metric(["true"], alive)
    workers.add_metric(["false"], len(state.get("workers", [])) - alive)
    uninstrumented = GaugeMetricFamily(
        "hotpath_run_uninstrumented", "Things hotpath could not instrument (see the report)"
    )
    uninstrumented.add_metric([], len(state.get("uninstrumented", [])))
    doctor = GaugeMetricFamily(
        "hotpath_doctor_findings",
        "Findings of doctor's checks on the app's database, by check and severity",
        labels=["check", "severity"],
    )
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for finding in state.get("doctor") or []:
        counts[(str(finding["check"]), str(finding["severity"]))] += 1
    for (check, severity), count in sorted(counts.items()):
        doctor.add_metric([check, severity], count)
    yield from (workers, uninstrumented, doctor)
