"""Engines on this module's fresh database, with the shop schema seeded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from hotpath.testing import ModuleDatabase

from .models import Base, seed_rows


@pytest.fixture(scope="module")
def engine(hotpath_db: ModuleDatabase) -> Iterator[Engine]:
    engine = create_engine(hotpath_db.url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(seed_rows())
        session.commit()
    yield engine
    engine.dispose()


@pytest.fixture
async def async_engine(engine: Engine, hotpath_db: ModuleDatabase) -> AsyncIterator[AsyncEngine]:
    async_engine = create_async_engine(hotpath_db.async_url)
    yield async_engine
    await async_engine.dispose()
