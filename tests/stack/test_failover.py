"""Failover on a stack of its own: the primary dies, a replica is promoted and takes writes."""

from __future__ import annotations

import psycopg
import pytest

from hotpath.stack import LocalStack, StackError

from ..helpers import execute, scalar


def test_promote_makes_a_replica_writable() -> None:
    with LocalStack(replicas=1, redis=False) as stack:
        replica = stack.replicas[0]
        execute(stack.primary, "postgres", "CREATE TABLE orders (id int PRIMARY KEY)")
        execute(stack.primary, "postgres", "INSERT INTO orders VALUES (1)")
        stack.wait_replicas_caught_up(timeout=10)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            execute(replica, "postgres", "INSERT INTO orders VALUES (2)")

        stack.primary.kill()
        replica.promote()

        assert replica.role == "primary"
        execute(replica, "postgres", "INSERT INTO orders VALUES (2)")
        assert scalar(replica, "postgres", "SELECT array_agg(id ORDER BY id) FROM orders") == [1, 2]
        roles = {s.name: s.role for s in stack.status()}
        assert roles == {"primary": "down", "replica1": "primary"}
        with pytest.raises(StackError, match="needs a replica"):
            replica.pause_replay()
