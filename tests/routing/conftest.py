"""Engines on this module's database: a primary, the session stack's two replicas, a counter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, create_engine, text

from hotpath.testing import ModuleDatabase, ServerStack


@dataclass
class Engines:
    primary: Engine
    replicas: list[Engine]


@pytest.fixture(scope="module")
def engines(hotpath_stack: ServerStack, hotpath_db: ModuleDatabase) -> Iterator[Engines]:
    primary = create_engine(hotpath_db.url, pool_size=10)
    with primary.begin() as conn:
        conn.execute(text("CREATE TABLE counters (id int PRIMARY KEY, value int NOT NULL)"))
        conn.execute(text("INSERT INTO counters VALUES (1, 0), (2, 0)"))
    hotpath_stack.wait_replicas_caught_up(timeout=30)
    replicas = [create_engine(url, pool_size=10) for url in hotpath_db.replica_urls]
    yield Engines(primary, replicas)
    for engine in [primary, *replicas]:
        engine.dispose()


@pytest.fixture
def resume_all(hotpath_stack: ServerStack) -> Iterator[None]:
    """Whatever a test paused, replay runs again afterwards and replicas catch up."""
    yield
    for replica in hotpath_stack.replicas:
        if replica.is_replay_paused():
            replica.resume_replay()
    hotpath_stack.wait_replicas_caught_up(timeout=30)
