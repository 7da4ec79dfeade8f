"""Statements that are not ORM selects, run through a Session inside a scope."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session

from hotpath.observe import Profiler

from .models import User


def test_text_and_bulk_statements_through_a_session_are_recorded_quietly(
    engine: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a listener's failure is logged once per process: start from none logged
    monkeypatch.setattr("hotpath.observe._scope._failed_listeners", set())
    profiler = Profiler(engine, modes={"n_plus_one": "log"})
    try:
        with (
            caplog.at_level(logging.ERROR, "hotpath.observe"),
            profiler.scope("GET /count") as scope,
            Session(engine) as session,
        ):
            session.execute(text("SELECT count(*) FROM users")).scalar_one()
            session.execute(update(User).where(User.id == -1).values(name="x"))
            session.rollback()
    finally:
        profiler.uninstrument()
    assert scope.query_count == 2
    assert [r.getMessage() for r in caplog.records] == []  # no listener failed
