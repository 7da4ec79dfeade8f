"""Statements that are not ORM SELECTs, run through a Session (``text()``, ORM
insert/update/delete), are recorded like any other, and observe's ORM listener has nothing to
follow in them: it never fails on them (SQLAlchemy has no load options for them and raises
when they are read)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from hotpath.observe import Profiler
from hotpath.observe import _scope as scope_module

from .models import User


@pytest.fixture(autouse=True)
def listener_bugs_logged_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # a listener's bug is logged once per process: start from none logged
    monkeypatch.setattr(scope_module, "_failed_listeners", set())


def _listener_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "hotpath.observe" and r.levelno >= logging.ERROR
    ]


def test_text_and_orm_dml_through_a_session(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    profiler = Profiler(engine)
    try:
        with profiler.scope("sync") as scope, Session(engine) as session:
            assert session.execute(text("SELECT count(*) FROM users")).scalar_one() > 0
            session.execute(update(User).where(User.id == -1).values(name="nobody"))
            session.rollback()
    finally:
        profiler.uninstrument()
    assert _listener_errors(caplog) == []
    assert scope.query_count == 2
    assert scope.findings == []


async def test_text_and_orm_dml_through_an_async_session(
    async_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    profiler = Profiler(async_engine)
    try:
        async with profiler.scope("async") as scope, AsyncSession(async_engine) as session:
            found = await session.execute(text("SELECT count(*) FROM users"))
            assert found.scalar_one() > 0
            await session.execute(update(User).where(User.id == -1).values(name="nobody"))
            await session.rollback()
    finally:
        profiler.uninstrument()
    assert _listener_errors(caplog) == []
    assert scope.query_count == 2
    assert scope.findings == []
