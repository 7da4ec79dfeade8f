"""hotpath.testing: the pytest plugin (entry point ``pytest11``) with fixtures on real servers.

Fixtures:

- ``hotpath_stack`` (session): a PostgreSQL primary + 2 streaming replicas + Redis, started by
  :class:`hotpath.stack.LocalStack`; or existing servers when ``HOTPATH_TEST_PRIMARY_URL``,
  ``HOTPATH_TEST_REPLICA_URLS`` (comma-separated) and ``HOTPATH_TEST_REDIS_URL`` are set.
- ``hotpath_local_stack`` (session): the same stack when it is local (process control:
  stop/start/kill/pause); skips the test when the servers are external.
- ``redis_cluster_stack`` (session, started only when asked for): a 3-master Redis Cluster;
  ``HOTPATH_TEST_REDIS_CLUSTER_URL`` points it at an existing cluster.
- ``hotpath_db`` (module): a fresh, empty database for the test module on that stack (visible
  on every replica) and a flushed Redis database; dropped after the module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from ._database import ModuleDatabase
from ._endpoints import REDIS_CLUSTER_ENV, ExternalStack, ServerStack

if TYPE_CHECKING:
    from ..stack import LocalStack

__all__ = ["ExternalStack", "ModuleDatabase", "ServerStack"]

_module_counter = iter(range(1, 1_000_000))


@pytest.fixture(scope="session")
def hotpath_stack() -> Iterator[ServerStack]:
    """Primary + 2 streaming replicas + Redis for the whole test session."""
    external = ExternalStack.from_env()
    if external is not None:
        yield external
        return
    from ..stack import LocalStack  # noqa: PLC0415 - keep plugin import cheap for other projects

    with LocalStack(replicas=2, redis=True) as stack:
        yield stack


@pytest.fixture(scope="session")
def hotpath_local_stack(hotpath_stack: ServerStack) -> LocalStack:
    """``hotpath_stack`` when hotpath runs it (needed to stop, kill or pause servers)."""
    from ..stack import LocalStack  # noqa: PLC0415

    if not isinstance(hotpath_stack, LocalStack):
        pytest.skip("needs process control of the servers; HOTPATH_TEST_* points at external ones")
    return hotpath_stack


@pytest.fixture(scope="session")
def redis_cluster_stack() -> Iterator[str]:
    """The seed URL of a 3-master Redis Cluster (for ``RedisCluster.from_url``)."""
    configured = os.environ.get(REDIS_CLUSTER_ENV)
    if configured:
        yield configured
        return
    from ..stack import LocalStack  # noqa: PLC0415

    with LocalStack(replicas=0, redis=False, redis_cluster=True, postgres=False) as stack:
        yield stack.redis_cluster_url


@pytest.fixture(scope="module")
def hotpath_db(
    hotpath_stack: ServerStack, request: pytest.FixtureRequest
) -> Iterator[ModuleDatabase]:
    """A fresh database for this test module (on the primary and every replica)."""
    from ._database import fresh_database  # noqa: PLC0415

    with fresh_database(hotpath_stack, request.module.__name__, next(_module_counter)) as db:
        yield db
