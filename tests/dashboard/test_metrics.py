"""The Prometheus exposition of a RUN STATE, and the Grafana dashboard that reads it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hotpath.metrics import RunStateCollector, exposition

from .conftest import ORDERS, REPORT, Planted

DASHBOARD = Path(__file__).parents[2] / "grafana" / "hotpath.json"
METRIC = re.compile(r"\bhotpath_[a-z0-9_]+\b")
GRID_COLUMNS = 24


@pytest.fixture(scope="module")
def state(planted: Planted) -> dict[str, Any]:
    planted.serve(3)
    return planted.state()


@pytest.fixture(scope="module")
def samples(state: dict[str, Any]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> (labels, value) of the exposition, parsed back from its text."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(exposition(state).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _value(samples: dict[str, Any], name: str, **labels: str) -> float:
    [value] = [v for found, v in samples[name] if labels.items() <= found.items()]
    return float(value)


def test_the_exposition_carries_every_signal_of_the_run(
    state: dict[str, Any], samples: dict[str, Any]
) -> None:
    orders = next(e for e in state["report"]["endpoints"] if e["name"] == ORDERS)
    assert _value(samples, "hotpath_endpoint_requests_total", endpoint=ORDERS) == orders["count"]
    assert _value(
        samples, "hotpath_endpoint_latency_ms", endpoint=ORDERS, quantile="0.95"
    ) == pytest.approx(orders["p95_ms"])
    assert _value(
        samples, "hotpath_endpoint_layer_ms", endpoint=ORDERS, layer="db"
    ) == pytest.approx(orders["breakdown_ms"]["db"])
    assert _value(samples, "hotpath_fix_saving_ms", kind="n_plus_one", endpoint=ORDERS) > 0
    assert _value(samples, "hotpath_fix_saving_ms", kind="slow_query", endpoint=REPORT) > 0
    assert (
        _value(samples, "hotpath_findings_total", kind="n_plus_one", endpoint=ORDERS)
        == (orders["count"])
    )
    pool = state["pools"][0]
    assert _value(samples, "hotpath_pool_checkouts_total", pool="app") == pool["checkouts"]
    assert _value(
        samples, "hotpath_pool_acquire_wait_seconds", pool="app", quantile="0.99"
    ) == pytest.approx(pool["acquire_wait"]["p99"] / 1000)
    cache = state["caches"][0]
    assert (
        _value(samples, "hotpath_cache_hits_total", namespace="shop", tier="l1")
        == (cache["l1_hits"])
    )
    assert _value(samples, "hotpath_cache_misses_total", namespace="shop") == cache["misses"]
    reads = sum(node["reads"] for node in state["routing"][0]["nodes"])
    assert sum(v for _, v in samples["hotpath_routing_reads_total"]) == reads > 0
    assert _value(samples, "hotpath_breaker_state", breaker="payments", state="open") == 1
    assert _value(samples, "hotpath_breaker_failures_total", breaker="payments") == 2
    assert _value(samples, "hotpath_doctor_findings", check="unused_indexes") == 1
    assert _value(samples, "hotpath_run_uninstrumented") == 1


def test_workers_are_merged_without_a_process_label(state: dict[str, Any]) -> None:
    """Two workers with the same pool, cache and breaker: one series each, summed, the
    worst state; no pid label (unbounded over restarts)."""
    second = json.loads(json.dumps(state))
    for key in ("pools", "caches", "breakers", "routing"):
        for item in second[key]:
            item["pid"] = 5678
    second["breakers"][0]["state"] = "closed"
    doubled = {
        **state,
        **{key: state[key] + second[key] for key in ("pools", "caches", "breakers", "routing")},
    }
    text = exposition(doubled).decode()
    assert "pid" not in text
    parsed = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    pool = state["pools"][0]
    assert parsed[("hotpath_pool_checkouts_total", (("pool", "app"),))] == 2 * pool["checkouts"]
    hits = parsed[("hotpath_cache_hits_total", (("namespace", "shop"), ("tier", "l1")))]
    assert hits == 2 * state["caches"][0]["l1_hits"]
    assert parsed[("hotpath_breaker_state", (("breaker", "payments"), ("state", "open")))] == 1
    assert parsed[("hotpath_breaker_failures_total", (("breaker", "payments"),))] == 4


def test_an_empty_state_exports_every_family_and_no_sample() -> None:
    families = list(RunStateCollector(lambda: {}).collect())
    assert len({f.name for f in families}) == len(families) > 40
    assert [s for f in families for s in f.samples if f.name != "hotpath_run_workers"] == [
        s for f in families for s in f.samples if f.name == "hotpath_run_uninstrumented"
    ]


# -- the Grafana dashboard --------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _uids(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "uid" and isinstance(value, str) and not value.startswith("${"):
                yield value
            else:
                yield from _uids(value)
    elif isinstance(node, list):
        for item in node:
            yield from _uids(item)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def test_dashboard_is_importable_anywhere(dashboard: dict[str, Any]) -> None:
    [source] = dashboard["__inputs"]
    assert (source["name"], source["pluginId"]) == ("DS_PROMETHEUS", "prometheus")
    uids = list(_uids(dashboard))
    assert uids == [dashboard["uid"]]
    assert len(set(uids)) == len(uids)
    assert all(len(uid) <= 40 for uid in uids)
    ids = [panel["id"] for panel in _panels(dashboard["panels"])]
    assert len(set(ids)) == len(ids)
    for panel in _panels(dashboard["panels"]):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] < grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        assert min(grid["h"], grid["y"] + 1) > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("expr"), panel["title"]


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels(dashboard["panels"]):
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def _queried(dashboard: dict[str, Any]) -> set[str]:
    exprs = [
        target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if "query" in v]
    return {name for expr in exprs for name in METRIC.findall(expr)}


def test_every_metric_the_dashboard_queries_is_exported(
    dashboard: dict[str, Any], samples: dict[str, Any]
) -> None:
    missing = sorted(_queried(dashboard) - set(samples))
    assert missing == []


def test_every_exported_family_is_on_the_dashboard(
    dashboard: dict[str, Any], state: dict[str, Any]
) -> None:
    queried = _queried(dashboard)
    unused = [
        family.name
        for family in RunStateCollector(lambda: state).collect()
        if not queried & {family.name, *(sample.name for sample in family.samples)}
    ]
    assert unused == []
