"""The diagnosis on patterns met in third-party applications (full-stack-fastapi-template,
microblog-api, an httpx/aiohttp service): each hotpath bug found there, re-expressed on this
suite's own models against real PostgreSQL and a real HTTP server on loopback.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session

from hotpath.observe import FindingKind, Profiler

from .models import Item, User

# -- full-stack-fastapi-template: ORM bulk DML inside a request ---------------------------------


def test_orm_bulk_delete_and_update_in_a_scope_are_no_listener_failure(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    # DELETE /users/{user_id} runs session.exec(delete(Item).where(...)) before
    # session.delete(user): an ORM execution that is not a SELECT has no load options
    monkeypatch.setattr("hotpath.observe._scope._failed_listeners", set())
    caplog.set_level(logging.ERROR, logger="hotpath.observe")
    profiler = Profiler(engine, modes={"n_plus_one": "log"})
    try:
        with profiler.scope("DELETE /users/{user_id}") as scope, Session(engine) as session:
            session.execute(delete(Item).where(Item.sku == "no-such-sku"))
            session.execute(update(User).where(User.id == -1).values(name="x"))
            for user in session.scalars(select(User).order_by(User.id)):
                _ = user.orders  # the N+1 after the DML is still found
            session.rollback()
    finally:
        profiler.uninstrument()
    assert [r.getMessage() for r in caplog.records if "listener failed" in r.getMessage()] == []
    n_plus_one = [f for f in scope.findings if f.kind is FindingKind.N_PLUS_ONE]
    assert len(n_plus_one) == 1
    assert "User.orders" in n_plus_one[0].message
