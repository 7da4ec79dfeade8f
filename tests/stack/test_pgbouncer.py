"""PgBouncer in front of the primary, when a pgbouncer binary is on this machine."""

from __future__ import annotations

import psycopg
import pytest

from hotpath.stack import LocalStack
from hotpath.stack._binaries import find_pgbouncer

pytestmark = pytest.mark.skipif(
    find_pgbouncer() is None,
    reason="no pgbouncer binary (make system-deps, or apt-get install pgbouncer)",
)


def test_pgbouncer_pools_transactions_to_the_primary() -> None:
    with LocalStack(replicas=0, redis=False, pgbouncer=True) as stack:
        bouncer = stack.pgbouncer
        dsn = bouncer.dsn_for("postgres")
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
            port = conn.execute("SELECT inet_server_port()").fetchone()
        assert port == (stack.primary.port,)  # the query ran on the primary, through pgbouncer
        with psycopg.connect(bouncer.dsn_for("pgbouncer"), autocommit=True) as admin:
            pools = admin.execute("SHOW POOLS").fetchall()
            columns = [c.name for c in admin.execute("SHOW POOLS").description or []]
        rows = [dict(zip(columns, row, strict=True)) for row in pools]
        assert any(r["database"] == "postgres" and r["pool_mode"] == "transaction" for r in rows)
        assert stack.env_exports()["HOTPATH_PGBOUNCER_URL"] == bouncer.url
