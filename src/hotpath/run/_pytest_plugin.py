"""pytest under ``hotpath run``: one scope per test (its call, not its fixtures' set-up),
named by the test's node id. Loaded through ``PYTEST_PLUGINS``, which the bootstrap sets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import _agent


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _agent.start()  # no-op when the bootstrap started it already
    agent = _agent.current()
    if agent is None:
        return (yield)
    with agent.test_scope(item.nodeid):
        return (yield)
