"""Real streaming replication on the session stack: visibility, lag, faults."""

from __future__ import annotations

import psycopg
import pytest

from hotpath.stack import LocalStack, PostgresServer, StackError
from hotpath.testing import ModuleDatabase, ServerStack

from ..helpers import alive, execute, scalar


@pytest.fixture(scope="module")
def items(hotpath_stack: ServerStack, hotpath_db: ModuleDatabase) -> str:
    execute(
        hotpath_stack.primary,
        hotpath_db.name,
        "CREATE TABLE items (id serial PRIMARY KEY, note text NOT NULL)",
    )
    hotpath_stack.wait_replicas_caught_up(timeout=10)
    return "items"


def _count(server: PostgresServer, db: ModuleDatabase, note: str) -> int:
    return int(scalar(server, db.name, "SELECT count(*) FROM items WHERE note = %s", [note]))


def test_replicas_stream_from_the_primary(hotpath_stack: ServerStack) -> None:
    with hotpath_stack.primary.connect() as conn:
        rows = conn.execute(
            "SELECT application_name, state FROM pg_stat_replication ORDER BY 1"
        ).fetchall()
    assert dict(rows) == {r.name: "streaming" for r in hotpath_stack.replicas}
    assert all(r.role == "replica" for r in hotpath_stack.replicas)
    assert hotpath_stack.primary.role == "primary"


def test_write_on_primary_is_visible_on_each_replica(
    hotpath_stack: ServerStack, hotpath_db: ModuleDatabase, items: str
) -> None:
    execute(hotpath_stack.primary, hotpath_db.name, "INSERT INTO items (note) VALUES ('hello')")
    hotpath_stack.wait_replicas_caught_up(timeout=10)
    for replica in hotpath_db.replicas:
        assert _count(replica, hotpath_db, "hello") == 1
    # replicas are hot standbys: they serve reads and refuse writes
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        execute(hotpath_db.replicas[0], hotpath_db.name, "INSERT INTO items (note) VALUES ('x')")


def test_pause_replay_makes_a_replica_lag_until_resumed(
    hotpath_stack: ServerStack, hotpath_db: ModuleDatabase, items: str
) -> None:
    lagging, other = hotpath_stack.replicas[0], hotpath_stack.replicas[1]
    lagging.pause_replay()
    try:
        assert lagging.is_replay_paused()
        for i in range(1, 6):
            execute(
                hotpath_stack.primary, hotpath_db.name, "INSERT INTO items (note) VALUES ('paused')"
            )
            primary_lsn = hotpath_stack.primary.current_lsn()
            # the paused replica's replayed position stays behind while writes continue...
            assert not lagging.has_replayed(primary_lsn)
            assert _count(lagging, hotpath_db, "paused") == 0
            status = lagging.status(primary_lsn)
            assert status.replay_paused is True
            assert status.lag_bytes is not None
            assert status.lag_bytes > 0
            # ...while the other replica keeps up: the pause is per replica
            hotpath_stack.wait_replicas_caught_up(timeout=10, replicas=[other])
            assert _count(other, hotpath_db, "paused") == i
        with pytest.raises(StackError, match="replay paused"):
            hotpath_stack.wait_replicas_caught_up(timeout=0.3)
    finally:
        lagging.resume_replay()
    hotpath_stack.wait_replicas_caught_up(timeout=10)
    assert _count(lagging, hotpath_db, "paused") == 5
    assert lagging.status(hotpath_stack.primary.current_lsn()).lag_bytes == 0


def test_killed_replica_starts_again_and_catches_up(
    hotpath_local_stack: LocalStack, hotpath_db: ModuleDatabase, items: str
) -> None:
    replica = hotpath_local_stack.replicas[1]
    postmaster = replica.pid
    assert postmaster is not None
    assert postmaster in hotpath_local_stack.processes()
    replica.kill()
    assert replica.pid is None
    assert alive([postmaster]) == []
    with pytest.raises(psycopg.OperationalError):
        replica.connect()
    execute(
        hotpath_local_stack.primary,
        hotpath_db.name,
        "INSERT INTO items (note) VALUES ('while-down')",
    )
    replica.start()
    hotpath_local_stack.wait_replicas_caught_up(timeout=15)
    assert _count(replica, hotpath_db, "while-down") == 1


def test_killed_primary_recovers_committed_writes(
    hotpath_local_stack: LocalStack, hotpath_db: ModuleDatabase, items: str
) -> None:
    primary = hotpath_local_stack.primary
    execute(primary, hotpath_db.name, "INSERT INTO items (note) VALUES ('before-crash')")
    primary.kill()  # SIGKILL: no shutdown checkpoint, crash recovery on start
    with pytest.raises(psycopg.OperationalError):
        primary.connect()
    primary.start()
    assert _count(primary, hotpath_db, "before-crash") == 1
    execute(primary, hotpath_db.name, "INSERT INTO items (note) VALUES ('after-crash')")
    hotpath_local_stack.wait_replicas_caught_up(timeout=20)  # replicas reconnect on their own
    for replica in hotpath_local_stack.replicas:
        assert _count(replica, hotpath_db, "after-crash") == 1
