"""The ladder's chooser: from observe's diagnosis (``Report.to_dict()``) to one shop fix, by the
explicit table of what each shop fix removes and the savings summed per fix."""

from __future__ import annotations

from typing import Any

import pytest

from hotpath.demo._choice import (
    BOTTLENECK_FIXES,
    EXPORT,
    PROFILE,
    REMEDIES,
    choose_fix,
    fixes_for,
)
from hotpath.demo.shop.fixes import FIX_DESCRIPTIONS
from hotpath.observe import FindingKind

LIST = "GET /categories/{category_id}/products"
ORDERS = "GET /users/{user_id}/orders"


def _fix(
    kind: str,
    endpoint: str = "GET /x",
    saving_ms: float = 100.0,
    call_site: str | None = "src/hotpath/demo/shop/queries.py:12 in f",
    sql: str | None = None,
    **evidence: Any,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "endpoint": endpoint,
        "call_site": call_site,
        "change": None,
        "message": f"{kind} here",
        "scopes": 10,
        "saving_ms": saving_ms,
        "share": 0.5,
        "evidence": evidence,
        "sql": sql,
    }


def _report(*top: dict[str, Any], endpoints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"endpoints": endpoints or [], "top_fixes": list(top), "functions": []}


# What the naive shop's diagnosis reports for each planted problem (kinds, evidence, SQL and
# call sites as observe gives them), and the fix that removes it.
PLANTED = [
    ("pool", _fix("connection_setup", LIST, call_site="src/hotpath/demo/shop/queries.py:103")),
    ("eager", _fix("n_plus_one", ORDERS, relationship="Order.items", parents=10)),
    (
        "indexes",
        _fix(
            "slow_query",
            ORDERS,
            sql="SELECT orders.id FROM orders WHERE orders.user_id = $1",
            missing_index=True,
        ),
    ),
    (
        "keyset",
        _fix(
            "slow_query",
            LIST,
            sql="SELECT products.id FROM products WHERE products.category_id = $1::INTEGER "
            "ORDER BY products.created_at DESC, products.id DESC\n LIMIT $2 OFFSET $3",
            missing_index=True,
        ),
    ),
    ("cache", _fix("repeated_read", LIST, call_site=None, hit_ratio=0.6, repeats=30)),
    ("fanout", _fix("sequential_io", PROFILE, sequential_ms=180.0, concurrent_ms=60.0)),
    (
        "offload",
        _fix(
            "blocking_call",
            f"{LIST}, {PROFILE}",
            call_site="src/hotpath/demo/shop/app.py:72 in risk_check",
            cpu_bound=False,
            own=False,
            what="`time.sleep(RISK_CHECK_S)`",
            blocker=PROFILE,
        ),
    ),
    (
        "lean",
        _fix(
            "blocking_call",
            f"{EXPORT}, {LIST}",
            call_site="src/hotpath/demo/shop/server.py:251 in entry",
            cpu_bound=True,
            own=True,
            what="response serialization",
            blocker=EXPORT,
        ),
    ),
]


@pytest.mark.parametrize(("fix", "finding"), PLANTED, ids=[fix for fix, _ in PLANTED])
def test_each_planted_finding_maps_to_its_fix(fix: str, finding: dict[str, Any]) -> None:
    assert fix in fixes_for(finding)
    # an OFFSET page is a slow read an index would speed up too: keyset once those are in
    choice = choose_fix(_report(finding), set(), indexes_left=fix != "keyset")
    assert choice.ranking[0] == (fix, finding["saving_ms"])
    assert (choice.fix, choice.kind, choice.call_site) == (
        fix,
        finding["kind"],
        finding["call_site"],
    )


def test_the_evidence_decides_between_fixes_of_one_kind() -> None:
    offset = PLANTED[3][1]
    # an OFFSET page: keyset pages remove it, and so would an index; an INSERT: nothing
    assert set(fixes_for(offset)) >= {"keyset", "indexes"}
    insert = _fix("slow_query", sql="INSERT INTO orders (user_id) VALUES ($1)")
    assert fixes_for(insert) == ()
    # a read slow with no index to add (its plan does not ask for one): nothing either
    busy = _fix("slow_query", sql="SELECT categories.name FROM categories WHERE id = $1")
    assert fixes_for(busy) == ()
    # blocking calls: a wait in the profile is the risk check, CPU in the export its encoder
    wait, cpu = PLANTED[6][1], PLANTED[7][1]
    assert fixes_for(wait) == ("offload",)
    assert fixes_for(cpu) == ("lean",)
    # CPU serializing another endpoint's response, a wait in another endpoint, and a block
    # the watchdog saw only in uvicorn's frame: no shop fix changes those lines
    orders_json = {**cpu, "evidence": {**cpu["evidence"], "blocker": ORDERS}}
    orders_wait = {**wait, "evidence": {**wait["evidence"], "blocker": ORDERS}}
    in_uvicorn = {
        **wait,
        "saving_ms": 500.0,
        "call_site": "src/hotpath/demo/shop/__main__.py:34 in main",
        "evidence": {**wait["evidence"], "what": "`uvicorn.run(`"},
    }
    for finding in (orders_json, orders_wait, in_uvicorn):
        assert fixes_for(finding) == ()
    # ranked first, it is passed over, and the step says why
    choice = choose_fix(_report(in_uvicorn, PLANTED[0][1]), set(), indexes_left=True)
    assert choice.fix == "pool"
    assert choice.notes == (
        "diagnosis named blocking_call at src/hotpath/demo/shop/__main__.py:34 in main: no shop "
        "fix removes it (offload: a wait on the loop in the profile (its sync risk check); "
        "lean: CPU serializing the category export)",
    )


def test_fixes_are_ranked_by_every_finding_each_removes_across_endpoints() -> None:
    # two N+1s on two endpoints together save more than the largest single finding
    report = _report(
        _fix(
            "slow_query",
            ORDERS,
            150.0,
            sql="SELECT 1 FROM order_items WHERE order_id = $1",
            missing_index=True,
        ),
        _fix("n_plus_one", ORDERS, 100.0),
        _fix("n_plus_one", LIST, 90.0),
        _fix("connection_setup", LIST, 60.0),
    )
    choice = choose_fix(report, set(), indexes_left=True)
    assert choice.fix == "eager"
    assert choice.saving_ms == pytest.approx(190.0)
    assert choice.findings == 2
    assert (choice.endpoint, choice.saving_ms) == (ORDERS, pytest.approx(190.0))
    assert choice.ranking == (("eager", 190.0), ("indexes", 150.0), ("pool", 60.0))
    # once applied, the next fix by its total decides
    assert choose_fix(report, {"eager"}, indexes_left=True).fix == "indexes"
    assert choose_fix(report, {"eager", "indexes"}, indexes_left=False).fix == "pool"


def test_an_index_is_ranked_by_every_run_of_the_statements_it_serves() -> None:
    items = "SELECT order_items.id FROM order_items WHERE $1 = order_items.order_id"
    # a loop of 10 scans (observe: one query for them saves 9 of 10, 900 ms), 300 ms of
    # which ran over the slow-query threshold: the index makes all 10 lookups (1000 ms), and
    # its slow runs are the same time, counted once
    loop = _fix("n_plus_one", ORDERS, 900.0, sql=items, count=10, missing_index=True)
    slow = _fix("slow_query", ORDERS, 300.0, sql=items, missing_index=True)
    pk = _fix("n_plus_one", ORDERS, 150.0, sql="SELECT products.id FROM products WHERE id = $1")
    choice = choose_fix(_report(loop, slow, pk), set(), indexes_left=True)
    assert choice.ranking == (("eager", 1050.0), ("indexes", pytest.approx(1000.0)))
    # scans the plan did not flag: only the loop's fix
    assert fixes_for({**loop, "evidence": {"count": 10, "missing_index": False}}) == ("eager",)
    # with an index to add elsewhere too, the index saves more than gathering the loops
    orders = _fix("slow_query", ORDERS, 200.0, sql="SELECT * FROM orders", missing_index=True)
    choice = choose_fix(_report(loop, slow, pk, orders), set(), indexes_left=True)
    assert choice.ranking[0] == ("indexes", pytest.approx(1200.0))
    assert (choice.kind, choice.findings) == ("n_plus_one", 3)


def test_cheap_lookups_that_waited_behind_scans_count_for_the_index_fix() -> None:
    # 18 lookups by primary key a request (a plan of a lookup's cost), 55 ms each: they
    # waited for the server, which the order items' scans kept busy
    lookups = _fix(
        "n_plus_one",
        ORDERS,
        850.0,
        sql="SELECT products.id FROM products WHERE products.id = $1",
        count=18,
        total_ms=990.0,
        missing_index=False,
        plan_cost=8.3,
    )
    scans = _fix("slow_query", ORDERS, 400.0, sql="SELECT 1 FROM order_items", missing_index=True)
    choice = choose_fix(_report(lookups, scans), set(), indexes_left=True)
    assert choice.ranking == (("indexes", pytest.approx(400.0 + 900.0)), ("eager", 850.0))
    # no scan to remove: nothing to credit the index with; nor for a lookup that was quick,
    # or a statement whose plan is not a lookup's
    assert choose_fix(_report(lookups), set(), True).ranking == (("eager", 850.0),)
    quick = {**lookups, "evidence": {**lookups["evidence"], "total_ms": 36.0}}
    costly = {**lookups, "evidence": {**lookups["evidence"], "plan_cost": 5000.0}}
    for other in (quick, costly):
        assert choose_fix(_report(other, scans), set(), True).ranking[0] == ("eager", 850.0)


def test_a_cache_is_ranked_by_the_database_time_of_the_reads_that_repeat() -> None:
    # the profile's calls one after another: gathering them saves the overlap (60 ms a
    # request here); its reads that repeat save their whole database time (the hit ratio
    # times every read's): the larger wins, whichever kind observe ranked first
    overlap = _fix("sequential_io", PROFILE, 300.0)
    repeats = _fix("repeated_read", PROFILE, 420.0, call_site=None, hit_ratio=0.7)
    assert choose_fix(_report(overlap, repeats), set(), True).fix == "cache"
    fewer = {**repeats, "saving_ms": 120.0}
    assert choose_fix(_report(overlap, fewer), set(), True).fix == "fanout"


def test_freeing_a_busy_event_loop_is_credited_the_wait_observe_measured() -> None:
    risk = {**PLANTED[6][1], "saving_ms": 300.0}  # the blocked requests' wait
    repeats = _fix("repeated_read", LIST, 600.0, call_site=None, hit_ratio=0.3)
    # under a closed load that wait already holds the queueing for a busy loop: how busy
    # the loop was does not scale it (it did once, and ranked offload above eager loads
    # that gained 1.8x where offload gained 1.05x)
    for busy in (None, 0.1, 0.75, 1.0):
        report = {**_report(risk, repeats), "loop_busy": busy}
        assert choose_fix(report, set(), True).ranking == (("cache", 600.0), ("offload", 300.0))


def test_slow_reads_take_the_advisors_indexes_then_the_endpoints_bottleneck_decides() -> None:
    slow = _report(
        _fix("slow_query", sql="SELECT * FROM orders WHERE user_id = $1", missing_index=True),
        endpoints=[{"name": "GET /x", "total_ms": 10.0, "bottleneck": "slow_query"}],
    )
    assert choose_fix(slow, set(), indexes_left=True).fix == "indexes"
    # no index left: the slow read has no finding's fix; its endpoint's bottleneck, the
    # database, takes the cache, then replicas
    choice = choose_fix(slow, set(), indexes_left=False)
    assert (choice.fix, choice.kind) == ("cache", "slow_query")
    assert choose_fix(slow, {"cache"}, indexes_left=False).fix == "replicas"
    assert choose_fix(slow, {"cache", "replicas"}, False).fix is None


def test_an_unknown_or_malformed_diagnosis_is_reported_not_crashed_on() -> None:
    report = _report(_fix("cache_miss"), _fix("made_up_kind"), _fix("sequential_io", saving_ms=5))
    choice = choose_fix(report, set(), indexes_left=True)
    assert choice.fix == "fanout"
    assert choice.notes == (
        "diagnosis named cache_miss: the shop has no fix for it",
        "diagnosis named made_up_kind: the shop has no fix for it",
    )
    nothing = choose_fix(_report(_fix("made_up_kind")), set(), True)
    assert nothing.fix is None
    assert nothing.notes == ("diagnosis named made_up_kind: the shop has no fix for it",)
    # odd shapes: no ranked fixes, entries that are not objects, missing or bad fields
    for odd in (
        {},
        {"top_fixes": None, "endpoints": None},
        {"top_fixes": ["n_plus_one", 3, None]},
        {"top_fixes": [{"kind": "n_plus_one", "saving_ms": "lots", "evidence": "?"}]},
        {"top_fixes": [{}], "endpoints": [{"name": "GET /a", "bottleneck": "made_up"}]},
    ):
        found = choose_fix(odd, set(), indexes_left=True)
        assert found.fix in (None, "eager")


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
    assert set(REMEDIES) <= kinds
    named = {remedy.fix for remedies in REMEDIES.values() for remedy in remedies}
    named |= {fix for fixes in BOTTLENECK_FIXES.values() for fix in fixes}
    assert named == set(FIX_DESCRIPTIONS)  # every fix is reachable, and no other
