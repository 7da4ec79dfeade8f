"""One report of many processes: each worker's profiler snapshot travels as JSON, and the
merge of the latest snapshots is the report of the whole run."""

from __future__ import annotations

import orjson
from sqlalchemy import Engine, text

from hotpath.observe import Profiler, merge_reports


def _worker(engine: Engine, requests: int) -> dict[str, object]:
    """What one worker process would send: its profiler's snapshot, through JSON."""
    profiler = Profiler(engine, budget_ms=1, modes={"duplicate": "log"})
    try:
        for _ in range(requests):
            with profiler.scope("GET /dup") as scope, engine.connect() as conn:
                scope.timeline.known_text = "/dup "  # its path and query, as a middleware sets
                for _ in range(3):
                    conn.execute(text("SELECT count(*) FROM users WHERE id = 1")).all()
        return orjson.loads(orjson.dumps(profiler.snapshot()))  # type: ignore[no-any-return]
    finally:
        profiler.uninstrument()


def test_snapshots_of_two_workers_merge_into_one_report(engine: Engine) -> None:
    first, second = _worker(engine, 3), _worker(engine, 5)
    alone = merge_reports([first], Profiler().settings).endpoint("GET /dup")
    # judged as the workers were (budget_ms=1): over its budget, the endpoint gets every fix
    merged = merge_reports([first, second], Profiler(budget_ms=1).settings)
    endpoint = merged.endpoint("GET /dup")
    assert alone.count == 3
    assert endpoint.count == 8
    assert endpoint.queries_max == 3
    [fix] = [f for f in endpoint.fixes if f.kind == "duplicate"]
    assert fix.scopes == 8  # the same fix in both workers is one fix, its scopes summed
    assert fix.call_site
    assert "test_snapshot.py" in fix.call_site
    assert fix.saving_ms > next(f for f in alone.fixes if f.kind == "duplicate").saving_ms
    assert 0 < endpoint.p50_ms <= endpoint.p99_ms
    assert sum(endpoint.breakdown_ms.values()) > 0
    assert merged.top_fixes[0].kind in ("duplicate", "repeated_read")
    # the same GET again: counted within each worker (2 + 4 repeats), the counts summed
    [reads] = [f for f in endpoint.fixes if f.kind == "repeated_read"]
    assert (reads.evidence["requests"], reads.evidence["repeats"]) == (8, 6)


def test_a_snapshot_of_another_version_is_left_out(engine: Engine) -> None:
    state = _worker(engine, 1)
    foreign = {**state, "version": 999}
    assert merge_reports([foreign], Profiler().settings).scopes == []
    assert merge_reports([state, foreign], Profiler().settings).endpoint("GET /dup").count == 1


def test_the_loop_busy_share_of_several_processes_is_their_busy_time_over_their_spans(
    engine: Engine,
) -> None:
    first, second = _worker(engine, 1), _worker(engine, 1)
    assert first["loop"] == {"busy_s": 0.0, "span_s": 0.0}  # sync scopes: no loop held
    settings = Profiler().settings
    assert merge_reports([first, second], settings).loop_busy is None
    # each process's loop over its own clock: 1 s of 4 and 3 s of 4 are half of the time
    first["loop"] = {"busy_s": 1.0, "span_s": 4.0}
    second["loop"] = {"busy_s": 3.0, "span_s": 4.0}
    assert merge_reports([first, second], settings).loop_busy == 0.5
    del second["loop"]  # an older worker's snapshot has none
    assert merge_reports([first, second], settings).loop_busy == 0.25
