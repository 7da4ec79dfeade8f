"""The dashboard's JSON and who may read it: /api/state, loopback, tokens."""

from __future__ import annotations

from .conftest import HEALTH, ORDERS, REPORT, Planted


def test_smoke(planted: Planted) -> None:
    planted.serve(3)
    state = planted.state()
    names = {e["name"] for e in state["report"]["endpoints"]}
    assert {ORDERS, REPORT, HEALTH} <= names
    import json
    open("/tmp/dash_state.json", "w").write(json.dumps(state, indent=1))
