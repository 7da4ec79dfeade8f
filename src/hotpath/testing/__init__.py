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
- ``hotpath_redis`` (module): the URL of that flushed Redis database alone, for modules that
  use no PostgreSQL database (creating one costs every replica a copy of it).
- ``hotpath_profiler`` (function): a ``hotpath.observe.Profiler`` on every engine, with a
  scope around the test; with ``--hotpath-n-plus-one=raise`` (or the ini option
  ``hotpath_n_plus_one``) an N+1 in the test fails it, with the call site and the fix.
- ``@pytest.mark.max_queries(n)``: fail the test if it runs more than ``n`` queries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import pytest

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ..observe import Profiler, Scope
    from ..stack import LocalStack
    from ._database import ModuleDatabase
    from ._endpoints import ExternalStack, ServerStack

__all__ = ["ExternalStack", "ModuleDatabase", "ServerStack"]

# Imported on first use: this module loads in every pytest run of any project that has
# hotpath installed, so it must not pull in drivers and clients up front.
__getattr__ = lazy_exports(
    __name__,
    {
        "ModuleDatabase": "._database",
        "ExternalStack": "._endpoints",
        "ServerStack": "._endpoints",
    },
)

_N_PLUS_ONE_MODES = ("raise", "warn", "log", "off")
_TEST_SCOPE: pytest.StashKey[Scope] = pytest.StashKey()
_TEST_PROFILER: pytest.StashKey[Profiler] = pytest.StashKey()

_module_counter = iter(range(1, 1_000_000))


@pytest.fixture(scope="session")
def hotpath_stack() -> Iterator[ServerStack]:
    """Primary + 2 streaming replicas + Redis for the whole test session."""
    from ._endpoints import ExternalStack  # noqa: PLC0415

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
    from ._endpoints import REDIS_CLUSTER_ENV  # noqa: PLC0415

    configured = os.environ.get(REDIS_CLUSTER_ENV)
    if configured:
        yield configured
        return
    from ..stack import LocalStack  # noqa: PLC0415

    with LocalStack(replicas=0, redis=False, redis_cluster=True, postgres=False) as stack:
        yield stack.redis_cluster_url


@pytest.fixture(scope="module")
def _hotpath_redis_db() -> int:
    """This module's Redis database number: ``hotpath_db`` and ``hotpath_redis`` agree on it."""
    return module_redis_db(next(_module_counter))


@pytest.fixture(scope="module")
def hotpath_db(
    hotpath_stack: ServerStack, request: pytest.FixtureRequest, _hotpath_redis_db: int
) -> Iterator[ModuleDatabase]:
    """A fresh database for this test module (on the primary and every replica)."""
    from ._database import fresh_database  # noqa: PLC0415

    with fresh_database(hotpath_stack, request.module.__name__, _hotpath_redis_db) as db:
        yield db


@pytest.fixture(scope="module")
def hotpath_redis(hotpath_stack: ServerStack, _hotpath_redis_db: int) -> str:
    """The URL of this module's flushed Redis database (no PostgreSQL database is created)."""
    from ._database import flushed_redis_url  # noqa: PLC0415

    return flushed_redis_url(hotpath_stack, _hotpath_redis_db)


_REDIS_DATABASES = 16


def module_redis_db(module_number: int, environ: Mapping[str, str] = os.environ) -> int:
    """The Redis database of the ``module_number``-th module using ``hotpath_db``.

    Under pytest-xdist each worker process has its own local stack, but external servers
    (``HOTPATH_TEST_*``) are shared by every worker: each worker then takes its own slice of
    the 16 databases, so one worker's flush never empties another's.
    """
    worker = environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and 1 < workers <= _REDIS_DATABASES:
        per_worker = _REDIS_DATABASES // workers
        return int(worker[2:]) * per_worker + module_number % per_worker
    return module_number % _REDIS_DATABASES


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hotpath")
    group.addoption(
        "--hotpath-n-plus-one",
        choices=_N_PLUS_ONE_MODES,
        default=None,
        help="what an N+1 in a test using hotpath_profiler does (default: the ini option "
        "hotpath_n_plus_one, else warn)",
    )
    parser.addini("hotpath_n_plus_one", "default for --hotpath-n-plus-one", default="warn")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "max_queries(n): fail the test if it runs more than n SQL queries"
    )


@pytest.fixture
def hotpath_profiler(request: pytest.FixtureRequest) -> Iterator[Profiler]:
    """A profiler on every engine with a scope around this test (see the module doc)."""
    from ..observe import Profiler  # noqa: PLC0415

    mode = request.config.getoption("--hotpath-n-plus-one") or request.config.getini(
        "hotpath_n_plus_one"
    )
    profiler = Profiler(modes={"n_plus_one": mode}).instrument()
    # The scope opens in pytest_runtest_call: queries of fixtures set up after this one are
    # not the test's.
    request.node.stash[_TEST_PROFILER] = profiler
    try:
        yield profiler
    finally:
        scope = request.node.stash.get(_TEST_SCOPE, None)
        if scope is not None and not scope.closed:  # the call hook did not get to judge it
            scope.__exit__(RuntimeError, None, None)
        profiler.uninstrument()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    marker = item.get_closest_marker("max_queries")
    profiler = item.stash.get(_TEST_PROFILER, None)
    if marker is None and profiler is None:
        return (yield)
    if profiler is not None:
        opened = profiler.scope(item.nodeid)
        opened.__enter__()
        item.stash[_TEST_SCOPE] = opened
    budget = None
    if marker is not None:
        from ..observe import assert_max_queries  # noqa: PLC0415

        budget = assert_max_queries(int(marker.args[0]), name=f"{item.nodeid} max_queries")
        budget.__enter__()
    failed = True
    try:
        result = yield
        failed = False
    finally:
        if budget is not None:
            budget.__exit__(*((RuntimeError, None, None) if failed else (None, None, None)))
        scope = item.stash.get(_TEST_SCOPE, None)
        if scope is not None and not scope.closed:
            scope.__exit__(*((RuntimeError, None, None) if failed else (None, None, None)))
    return result
