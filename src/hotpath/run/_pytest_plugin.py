"""pytest under ``hotpath run``: one scope per test (its call, not its fixtures' set-up),
named by the test's node id. Loaded through ``PYTEST_PLUGINS``, which the bootstrap sets."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import pytest
import wrapt

from . import _agent

# The modules of hotpath whose classes the agent wraps as they are imported (caches, replica
# sets, breakers, instrument_pool). hotpath is a pytest plugin, so pytest imports its modules
# through its assertion rewriter, which sits before wrapt's import finder: their post-import
# hooks would never fire, and a cache made at a test module's import would go unreported.
HOOKED_HOTPATH_MODULES = (
    "hotpath.pool._instrument",
    "hotpath.cache._sync",
    "hotpath.cache._async",
    "hotpath.routing._base",
    "hotpath.concurrent._breaker",
)


def pytest_configure(config: pytest.Config) -> None:
    """Start the agent before collection imports the test modules, with hotpath's own hooks
    fired: objects made at import time are registered too."""
    _agent.start()
    if _agent.current() is None:
        return
    for name in HOOKED_HOTPATH_MODULES:
        with contextlib.suppress(ImportError):
            # fires the hooks still waiting for this module (each runs once: wrapt pops them)
            wrapt.notify_module_loaded(importlib.import_module(name))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _agent.start()  # no-op when the bootstrap started it already
    agent = _agent.current()
    if agent is None:
        return (yield)
    with agent.test_scope(item.nodeid):
        return (yield)
