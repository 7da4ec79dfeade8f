"""A small stack of the pool tests' own, for restarting the primary and for PgBouncer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hotpath.stack import LocalStack
from hotpath.stack._binaries import find_pgbouncer


@pytest.fixture(scope="session")
def own_stack() -> Iterator[LocalStack]:
    """Primary only (+ PgBouncer when installed): restarting it disturbs no other test."""
    with LocalStack(replicas=0, redis=False, pgbouncer=find_pgbouncer() is not None) as stack:
        yield stack
