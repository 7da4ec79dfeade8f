"""The ladder's chooser: from observe's diagnosis (``Report.to_dict()``) to one shop fix."""

from __future__ import annotations

from typing import Any

from hotpath.demo._ladder import KIND_FIXES, choose_fix, fixes_for
from hotpath.demo.shop.fixes import FIX_DESCRIPTIONS
from hotpath.observe import FindingKind


def _fix(kind: str, endpoint: str = "GET /x", **evidence: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "endpoint": endpoint,
        "call_site": "shop/app.py:12",
        "change": None,
        "message": f"{kind} here",
        "scopes": 10,
        "saving_ms": 100.0,
        "share": 0.5,
        "evidence": evidence,
    }


def _report(*top: dict[str, Any], endpoints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"endpoints": endpoints or [], "top_fixes": list(top), "functions": []}


def test_the_top_fix_the_shop_can_apply_wins() -> None:
    report = _report(_fix("n_plus_one"), _fix("connection_setup"))
    choice = choose_fix(report, set(), indexes_left=True)
    assert (choice.fix, choice.kind, choice.call_site) == ("eager", "n_plus_one", "shop/app.py:12")
    # once applied, the next ranked cause decides
    assert choose_fix(report, {"eager"}, indexes_left=True).fix == "pool"


def test_a_kind_the_shop_has_no_fix_for_is_reported_and_the_next_is_tried() -> None:
    report = _report(_fix("cache_miss"), _fix("unused_eager_load"), _fix("sequential_io"))
    choice = choose_fix(report, set(), indexes_left=True)
    assert choice.fix == "fanout"
    assert choice.notes == (
        "diagnosis named cache_miss: the shop has no fix for it",
        "diagnosis named unused_eager_load: the shop has no fix for it",
    )
    # nothing left at all: no fix, the notes say why, and no exception
    nothing = choose_fix(_report(_fix("cache_miss"), _fix("made_up_kind")), set(), True)
    assert nothing.fix is None
    assert "diagnosis named made_up_kind: the shop has no fix for it" in nothing.notes


def test_blocking_calls_split_by_what_blocked() -> None:
    waiting = choose_fix(_report(_fix("blocking_call", cpu_bound=False)), set(), True)
    computing = choose_fix(_report(_fix("blocking_call", cpu_bound=True)), set(), True)
    assert (waiting.fix, computing.fix) == ("offload", "lean")


def test_database_time_takes_indexes_then_cache_then_replicas() -> None:
    slow = _report(_fix("slow_query"))
    assert choose_fix(slow, set(), indexes_left=True).fix == "indexes"
    assert choose_fix(slow, set(), indexes_left=False).fix == "cache"
    assert choose_fix(slow, {"indexes", "cache"}, indexes_left=False).fix == "replicas"
    assert choose_fix(slow, {"indexes", "cache", "replicas"}, False).fix is None
    # the plan's evidence points at the index only
    missing = _report(_fix("slow_query", missing_index=True))
    assert choose_fix(missing, set(), indexes_left=True).fix == "indexes"
    assert choose_fix(missing, {"indexes"}, indexes_left=False).fix is None


def test_without_a_ranked_fix_the_endpoints_bottlenecks_decide_by_total_time() -> None:
    endpoints = [
        {"name": "GET /small", "total_ms": 10.0, "bottleneck": "slow_query", "breakdown_ms": {}},
        {"name": "GET /export", "total_ms": 90.0, "bottleneck": "cpu", "breakdown_ms": {}},
        {"name": "GET /fine", "total_ms": 500.0, "bottleneck": "none", "breakdown_ms": {}},
    ]
    choice = choose_fix(_report(endpoints=endpoints), set(), indexes_left=False)
    assert (choice.fix, choice.kind, choice.endpoint) == ("lean", "cpu", "GET /export")
    assert choose_fix(_report(endpoints=endpoints), {"lean"}, False).fix == "cache"


def test_the_table_names_only_fixes_the_shop_has_and_kinds_observe_reports() -> None:
    kinds = {kind.value for kind in FindingKind}
    assert set(KIND_FIXES) <= kinds
    for kind in kinds:
        for evidence in ({}, {"cpu_bound": True}, {"missing_index": True}):
            assert set(fixes_for(kind, evidence)) <= set(FIX_DESCRIPTIONS)
