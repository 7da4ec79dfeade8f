"""The pure parts: LSNs, statement classification, health hysteresis, lag while idle, options."""

from __future__ import annotations

import pytest
from sqlalchemy import column, delete, insert, select, table, text, update

from hotpath.routing import RoutingConfigError, TokenError, format_lsn, parse_lsn, use_token
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
