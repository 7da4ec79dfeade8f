"""The pure parts: LSNs, statement classification, health hysteresis, lag while idle, options."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import column, delete, insert, select, table, text, update

from hotpath.routing import (
    NoHealthyNodeError,
    RoutingConfigError,
    TokenError,
    format_lsn,
    parse_lsn,
    use_token,
)
from hotpath.routing._config import RoutingConfig
from hotpath.routing._health import NodeHealth, ProbeResult, WalHistory
from hotpath.routing._statements import is_write

items = table("items", column("id"))


def test_lsn_round_trip_and_order() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")  # numeric, not text, order
    for bad in ("", "16", "zz/1", "1/2/3"):
        with pytest.raises(TokenError, match="not a WAL position"):
            parse_lsn(bad)
    with pytest.raises(TokenError), use_token("garbage"):
        pass


@pytest.mark.parametrize(
    ("statement", "write"),
    [
        (select(items), False),
        (select(items).with_for_update(), True),
        (insert(items), True),
        (update(items), True),
        (delete(items), True),
        (text("SELECT 1"), False),
        (text("  /* c */ (select 1)"), False),
        (text("select * from t for update"), True),
        (text("SELECT 1 FOR NO KEY UPDATE"), True),
        (text("select * into t2 from t"), True),
        (text("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x"), True),
        (text("WITH x AS (SELECT 1) SELECT * FROM x"), False),
        (text("SHOW server_version"), False),
        (text("EXPLAIN SELECT 1"), False),
        (text("EXPLAIN ANALYZE DELETE FROM t"), True),
        (text("CREATE TABLE t (id int)"), True),
        (text("VACUUM t"), True),
        (None, True),
        # A data-modifying CTE runs wherever the SELECT is sent: FROM, WHERE, add_cte().
        (select(insert(items).returning(items.c.id).cte("x").c.id), True),
        (
            select(items).where(items.c.id.in_(select(delete(items).returning(items.c.id).cte()))),
            True,
        ),
        (select(items).add_cte(update(items).values(id=1).returning(items.c.id).cte("u")), True),
        (select(text("DELETE FROM t RETURNING id").columns(items.c.id).cte("t").c.id), True),
        (select(select(items.c.id).cte("r").c.id), False),
    ],
)
def test_statement_classification(statement: object, write: bool) -> None:
    assert is_write(statement) is write


def test_ejection_needs_n_bad_probes_and_readmission_m_good_ones() -> None:
    config = RoutingConfig(max_lag_s=1.0, eject_after=2, readmit_after=3)
    history, node = WalHistory(), NodeHealth("replica1", "replica")
    history.record(100, now=0.0)
    node.observe(ProbeResult(True, 100), 100, history, config, now=0.0)
    assert node.admitted  # the first good probe admits
    history.record(200, now=1.0)  # the primary moves on; the replica stays at 100
    node.observe(ProbeResult(True, 100), 200, history, config, now=2.5)
    assert node.admitted  # one bad probe is not enough (hysteresis)
    node.observe(ProbeResult(True, 100), 200, history, config, now=3.0)
    assert not node.admitted
    assert node.reason is not None
    assert node.reason.startswith("lagging 2.00s > max_lag_s=1")
    assert node.ejections == 1
    for now, admitted in ((3.1, False), (3.2, False), (3.3, True)):
        node.observe(ProbeResult(True, 200), 200, history, config, now=now)
        assert node.admitted is admitted
    assert node.reason is None


def test_idle_primary_means_no_time_lag() -> None:
    """The replay timestamp stalls while the primary is idle; WAL history does not."""
    history = WalHistory()
    history.record(500, now=0.0)
    history.record(500, now=100.0)  # idle for 100 s: no new position
    assert history.lag_seconds(500, now=100.0) == 0.0
    history.record(600, now=100.0)  # a write arrives; the replica has not replayed it
    assert history.lag_seconds(500, now=100.4) == pytest.approx(0.4)
    assert history.lag_seconds(600, now=150.0) == 0.0


def test_bad_options_name_the_fix() -> None:
    with pytest.raises(RoutingConfigError, match="policy='fastest' is not one of"):
        RoutingConfig(policy="fastest")  # type: ignore[arg-type]
    with pytest.raises(RoutingConfigError, match="max_lag_s=-1"):
        RoutingConfig(max_lag_s=-1)
    with pytest.raises(RoutingConfigError, match="eject_after=0"):
        RoutingConfig(eject_after=0)


def _router(on_all_unhealthy: str = "primary") -> Any:
    from sqlalchemy import create_engine

    from hotpath.routing._router import RouterCore

    engines = [create_engine(f"postgresql+psycopg://u@127.0.0.1:{p}/db") for p in (1, 2, 3)]
    config = RoutingConfig(max_lag_s=1.0, eject_after=1, on_all_unhealthy=on_all_unhealthy)  # type: ignore[arg-type]
    return RouterCore((engines[0], engines[0]), [(e, e) for e in engines[1:]], config)


def _probe(router: Any, index: int, lsn: int, now: float, in_recovery: bool = True) -> None:
    router.record_probe(router.nodes[index], ProbeResult(in_recovery, lsn), now)


def test_a_token_is_satisfied_per_replica_not_by_any_replica() -> None:
    """GitLab #413203: one caught-up replica must not unstick reads on another."""
    router = _router()
    _probe(router, 0, 1000, 0.0, in_recovery=False)
    _probe(router, 1, 1000, 0.0)  # replica1 replayed the token
    _probe(router, 2, 900, 0.0)  # replica2 has not (lag is still tiny: it stays admitted)
    assert [n.name for n in router.eligible()] == ["replica1", "replica2"]
    for _ in range(20):
        route = router.choose_read(1000, "read_your_writes")
        assert route.node.name == "replica1"
        assert not route.verify
    # Nobody known to have replayed a newer token: check the chosen replica on the spot.
    assert router.choose_read(2000, "read_your_writes").verify
    assert not router.choose_read(2000, "eventual").verify


def test_a_forged_token_is_cut_to_what_replicas_can_reach() -> None:
    router = _router()
    # issued by this primary (at or below its insert position): never touched
    assert router.cap_token(950, primary=1000, flushed=900) == 950
    assert router.counters["tokens capped"] == 0
    # beyond it: cut to the flushed position, which replicas receive. Cut to the insert
    # position it asked for WAL that nothing flushes until the next commit (a read's pruning
    # in a rolled-back transaction): every read with it fell back to the primary.
    assert router.cap_token(10**12, primary=1000, flushed=900) == 900
    assert router.counters["tokens capped"] == 1


def test_all_unhealthy_policies_and_writer_election() -> None:
    for policy, expected in (("primary", "primary"), ("least_lagged", "replica2")):
        router = _router(policy)
        _probe(router, 0, 100, 0.0, in_recovery=False)
        _probe(router, 0, 500, 1.0, in_recovery=False)
        _probe(router, 1, 100, 5.0)  # 4 s behind
        _probe(router, 2, 400, 5.0)  # also 4 s behind in time, fewer bytes
        assert router.eligible() == []
        route = router.choose_read(None, "eventual")
        assert route.node.name == expected
    router = _router("error")
    _probe(router, 0, 100, 0.0, in_recovery=False)
    _probe(router, 0, 500, 1.0, in_recovery=False)
    _probe(router, 1, 100, 5.0)
    _probe(router, 2, 100, 5.0)
    with pytest.raises(NoHealthyNodeError, match="replica1: lagging"):
        router.choose_read(None, "eventual")
    # The primary dies and replica1 is promoted: writes follow, replica1 serves no reads.
    router.record_failure(router.nodes[0], "probe failed: refused", 6.0, at_once=False)
    _probe(router, 1, 600, 6.1, in_recovery=False)
    assert router.writer.name == "replica1"
    assert router.counters["failovers"] == 1
    assert all(n.name != "replica1" for n in router.eligible())


def test_sync_and_async_sets_and_makers_refuse_each_other() -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    from hotpath.routing import (
        AsyncReplicaSet,
        ReplicaSet,
        async_routed_sessionmaker,
        routed_sessionmaker,
    )

    sync_engine = create_engine("postgresql+psycopg://u@127.0.0.1:1/db")
    async_engine = create_async_engine("postgresql+asyncpg://u@127.0.0.1:1/db")
    with pytest.raises(RoutingConfigError, match="use AsyncReplicaSet"):
        ReplicaSet(async_engine, [], start=False)  # type: ignore[arg-type]
    with pytest.raises(RoutingConfigError, match="takes AsyncEngines"):
        AsyncReplicaSet(sync_engine, [])  # type: ignore[arg-type]
    replicas = AsyncReplicaSet(async_engine, [])
    with pytest.raises(RoutingConfigError, match="use async_routed_sessionmaker"):
        routed_sessionmaker(replicas)  # type: ignore[arg-type]
    with pytest.raises(RoutingConfigError, match="weights=\\[1\\]: give one positive number"):
        ReplicaSet(sync_engine, [], weights=[1], start=False)
    with pytest.raises(RoutingConfigError, match="consistency='causal' is not one of"):
        async_routed_sessionmaker(replicas, consistency="causal")  # type: ignore[arg-type]


def test_least_lagged_fallback_never_picks_a_hung_replica() -> None:
    router = _router("least_lagged")
    _probe(router, 0, 100, 0.0, in_recovery=False)
    _probe(router, 0, 500, 1.0, in_recovery=False)
    _probe(router, 1, 100, 5.0)  # 4 s behind: ejected
    _probe(router, 2, 400, 5.0)  # ejected too, but the less lagged one
    router.probe_started(router.nodes[2], time.monotonic() - 10.0)  # and now hung
    assert router.choose_read(None, "eventual").node.name == "replica1"


def test_a_replica_on_another_timeline_gets_no_reads_until_it_follows() -> None:
    router = _router()
    router.record_probe(router.nodes[0], ProbeResult(False, 1000, timeline=2), 0.0)
    router.record_probe(router.nodes[1], ProbeResult(True, 900, timeline=1), 0.1)
    router.record_probe(router.nodes[2], ProbeResult(True, 900, timeline=2), 0.1)
    assert [n.name for n in router.eligible()] == ["replica2"]
    assert "timeline 1" in (router.status()[1].why_ejected or "")
    for now in (0.2, 0.3, 0.4):  # streaming the primary's timeline: back after readmit_after
        router.record_probe(router.nodes[1], ProbeResult(True, 950, timeline=2), now)
    assert [n.name for n in router.eligible()] == ["replica1", "replica2"]


def test_a_position_read_before_a_probe_does_not_outlive_it() -> None:
    """_health.py keep_newer: an older on-the-spot position must not mask a replica going back."""
    node = NodeHealth("replica1", "replica")
    config, history = RoutingConfig(), WalHistory()
    node.observe(ProbeResult(True, 500), 500, history, config, now=1.0, started=1.0)
    node.note_replayed(900, seen_at=2.0)  # a check on the spot
    node.observe(ProbeResult(True, 600), 600, history, config, now=2.5, started=1.5)
    assert node.lsn == 900  # read after that probe began: newer
    node.observe(ProbeResult(True, 300), 600, history, config, now=3.5, started=3.0)
    assert node.lsn == 300  # rebuilt / another history: the probe's answer wins


def test_wsgi_middleware_closes_the_response_iterable() -> None:
    from hotpath.routing import WSGITokenMiddleware

    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Any:
            yield b"ok"

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("content-type", "text/plain")])
        return Body()

    body = WSGITokenMiddleware(app)({}, lambda status, headers, *exc: None)
    assert list(body) == [b"ok"]
    assert closed == [True]
