"""The app-wide ranking: one fix found several times in one endpoint names it once."""

from __future__ import annotations

from sqlalchemy import Engine, text

from hotpath.observe import Profiler, merge_reports


def test_a_slow_query_is_one_fix_of_its_endpoint_and_of_the_app(engine: Engine) -> None:
    # A slow query with no index to suggest: its message carries the run's milliseconds, so
    # it is keyed by its statement; two requests make one fix, named once app-wide.
    profiler = Profiler(engine, slow_query_ms=5.0, modes={"slow_query": "log"})
    try:
        for seconds in (0.02, 0.04):
            with profiler.scope("GET /sleepy"), engine.connect() as conn:
                conn.execute(text("SELECT pg_sleep(:s)"), {"s": seconds}).all()
        report = merge_reports([profiler.snapshot()], profiler.settings)
    finally:
        profiler.uninstrument()
    [fix] = [f for f in report.endpoint("GET /sleepy").fixes if f.kind == "slow_query"]
    assert fix.scopes == 2
    [top] = [f for f in report.top_fixes if f.kind == "slow_query"]
    assert top.endpoint == "GET /sleepy"
    assert top.scopes == 2
