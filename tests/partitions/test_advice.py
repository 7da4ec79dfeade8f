"""doctor's partition_candidates: the evidence (size, growth, time filters, retention
deletes) and a command that, run as given, partitions the table."""

from __future__ import annotations

import shlex
import subprocess
import sys

from hotpath.doctor import Thresholds, diagnose
from hotpath.testing import ModuleDatabase
from tests.doctor.conftest import connect, flush_stats

SMALL = Thresholds(partition_min_rows=20_000)


def test_candidate_evidence_and_the_command_that_converts_it(hotpath_db: ModuleDatabase) -> None:
    url = hotpath_db.url
    with connect(url) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_reset()")  # the counters begin now, whatever the server
        for name in ("logs", "profiles"):
            conn.execute(
                f"CREATE TABLE {name} (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL,"
                " msg text)"
            )
            conn.execute(
                f"INSERT INTO {name} (created_at, msg) SELECT now() - g * interval '1 min', 'm'"
                " FROM generate_series(1, 30000) g"
            )
            conn.execute(f"ANALYZE {name}")
        conn.execute("UPDATE profiles SET msg = 'x'")  # updated in place: not append-mostly
        conn.execute("SELECT pg_stat_statements_reset()")
        for _ in range(4):
            conn.execute("SELECT count(*) FROM logs WHERE created_at > now() - interval '1 day'")
            conn.execute(
                "SELECT count(*) FROM profiles WHERE created_at > now() - interval '1 day'"
            )
        conn.execute("SELECT msg FROM logs WHERE id = 5")  # a statement not filtering by time
        conn.execute("DELETE FROM logs WHERE created_at < now() - interval '20 days'")
        flush_stats(conn)
    [finding] = diagnose(url, ["partition_candidates"], thresholds=SMALL).findings
    assert finding.target == "logs"
    evidence = finding.evidence
    assert int(evidence["bytes"] or 0) > 1_000_000
    # the counters began minutes ago: the inserts are counted, no daily rate is made up
    assert evidence["inserts_since_stats_reset"] == 30_000
    assert evidence["inserts_per_day"] is None
    assert "too short for a daily rate" in finding.message
    assert evidence["filter_calls"] == 4
    assert evidence["filter_share"] == round(4 / 6, 4)
    assert evidence["retention_delete_calls"] == 1
    assert int(evidence["retention_deleted_rows"] or 0) > 1000
    assert "retention DELETEs by created_at" in finding.message
    fix = finding.fix or ""
    # the primary key (id) lacks created_at: the command says how to extend it
    assert fix.startswith(
        "hotpath partitions convert $DATABASE_URL logs --by created_at --interval month"
        " --extend-primary-key"
    )
    command = shlex.split(fix.split("#")[0].replace("$DATABASE_URL", url))
    done = subprocess.run(
        [sys.executable, "-m", "hotpath", *command[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with connect(url) as conn:
        kind = conn.execute("SELECT relkind::text FROM pg_class WHERE oid = 'logs'::regclass")
        assert kind.fetchone() == ("p",)
