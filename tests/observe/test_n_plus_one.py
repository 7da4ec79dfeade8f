"""N+1 detection on real PostgreSQL: true positives with the fix, true negatives."""

from __future__ import annotations

import asyncio
import threading
import warnings
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, joinedload, selectinload

from hotpath.observe import Finding, FindingKind, NPlusOneError, Profiler, _statements

from .models import ITEMS_PER_ORDER, ORDERS_PER_USER, USERS, Item, Order, User

HERE = Path(__file__).name


@pytest.fixture
def profiler(engine: Engine) -> Profiler:
    profiler = Profiler(engine, modes={"n_plus_one": "log", "duplicate": "log"})
    yield profiler
    profiler.uninstrument()


def n_plus_ones(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.kind is FindingKind.N_PLUS_ONE]


def line_of(marker: str) -> int:
    source = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if marker in line and "line_of" not in line)


def test_lazy_collection_in_a_loop(profiler: Profiler, engine: Engine) -> None:
    with profiler.scope("users") as scope, Session(engine) as session:
        for user in session.scalars(select(User)):
            assert len(user.orders) == ORDERS_PER_USER  # marker:collection-loop
    [finding] = n_plus_ones(scope.findings)
    assert finding.details["relationship"] == "User.orders"
    assert finding.count == USERS
    assert finding.fix == ".options(selectinload(User.orders))  # on the select() of User"
    assert finding.call_site is not None
    assert (Path(finding.call_site.filename).name, finding.call_site.lineno) == (
        HERE,
        line_of("marker:collection-loop"),
    )
    assert "FROM orders" in (finding.sql or "")
    assert scope.query_count == 1 + USERS


def test_many_to_one_in_a_loop(profiler: Profiler, engine: Engine) -> None:
    with profiler.scope("orders") as scope, Session(engine) as session:
        names = {order.user.name for order in session.scalars(select(Order))}
    assert len(names) == USERS
    [finding] = n_plus_ones(scope.findings)
    assert finding.details["relationship"] == "Order.user"
    assert finding.fix is not None
    assert finding.fix.startswith(".options(joinedload(Order.user))")
    assert finding.count == USERS  # one query per distinct user; repeats come from the identity map


def test_nested_loops_get_the_nested_chain(profiler: Profiler, engine: Engine) -> None:
    with profiler.scope("nested") as scope, Session(engine) as session:
        for user in session.scalars(select(User)):
            for order in user.orders:
                assert len(order.items) == ITEMS_PER_ORDER
    fixes = {f.details["relationship"]: f.fix for f in n_plus_ones(scope.findings)}
    assert fixes["Order.items"] is not None
    assert "selectinload(User.orders).selectinload(Order.items)" in fixes["Order.items"]
    assert "selectinload(User.orders)" in (fixes["User.orders"] or "")


def test_the_fix_really_removes_the_n_plus_one(profiler: Profiler, engine: Engine) -> None:
    query = select(User).options(selectinload(User.orders).selectinload(Order.items))
    with profiler.scope("fixed") as scope, Session(engine) as session:
        for user in session.scalars(query):
            for order in user.orders:
                assert len(order.items) == ITEMS_PER_ORDER
    assert n_plus_ones(scope.findings) == []
    assert scope.query_count == 3  # users, their orders, their items: one query per level


def test_joinedload_many_to_one_is_not_an_n_plus_one(profiler: Profiler, engine: Engine) -> None:
    with profiler.scope("joined") as scope, Session(engine) as session:
        orders = session.scalars(select(Order).options(joinedload(Order.user))).all()
        assert {o.user.name for o in orders}
    assert n_plus_ones(scope.findings) == []
    assert scope.query_count == 1


def test_single_lazy_loads_are_not_an_n_plus_one(profiler: Profiler, engine: Engine) -> None:
    with profiler.scope("detail") as scope, Session(engine) as session:
        first = session.get(User, 1)
        assert first is not None
        assert len(first.orders) == ORDERS_PER_USER
        second = session.get(User, 2)  # an unrelated single load, from another query
        assert second is not None
        assert len(second.orders) == ORDERS_PER_USER
    assert n_plus_ones(scope.findings) == []
    assert scope.query_count == 4


def test_session_get_in_a_loop_is_a_shape_n_plus_one(engine: Engine) -> None:
    profiler = Profiler(engine, shape_threshold=3, modes={"n_plus_one": "log"})
    try:
        with profiler.scope("get-loop") as scope, Session(engine) as session:
            for user_id in range(1, USERS + 1):
                session.get(Order, user_id * 100)  # marker:get-loop
        [finding] = n_plus_ones(scope.findings)
        assert finding.count == USERS
        assert finding.call_site is not None
        assert finding.call_site.lineno == line_of("marker:get-loop")
        assert "orders.id IN (...)" in (finding.fix or "")
    finally:
        profiler.uninstrument()


def test_raise_mode_fails_with_call_site_and_fix(engine: Engine) -> None:
    profiler = Profiler(engine, modes={"n_plus_one": "raise"})
    try:
        with pytest.raises(NPlusOneError) as raised, profiler.scope("raise"), Session(engine) as s:
            for user in s.scalars(select(User)):
                _ = user.orders
        message = str(raised.value)
        assert "User.orders" in message
        assert f"{HERE}:" in message
        assert "selectinload(User.orders)" in message
    finally:
        profiler.uninstrument()


def test_warn_mode_warns_and_off_mode_is_silent(engine: Engine) -> None:
    for mode, expect in (("warn", 1), ("off", 0)):
        profiler = Profiler(engine, modes={"n_plus_one": mode})  # type: ignore[dict-item]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with profiler.scope(mode) as scope, Session(engine) as session:
                    for user in session.scalars(select(User)):
                        _ = user.orders
            assert len(n_plus_ones(scope.findings)) == expect
            assert len([w for w in caught if "User.orders" in str(w.message)]) == expect
        finally:
            profiler.uninstrument()


def test_allow_block_and_ignore_comment_suppress(profiler: Profiler, engine: Engine) -> None:
    with profiler.scope("allowed") as scope, Session(engine) as s, profiler.allow("n_plus_one"):
        for user in s.scalars(select(User)):
            _ = user.orders
    assert n_plus_ones(scope.findings) == []
    with profiler.scope("ignored") as scope, Session(engine) as session:
        for user in session.scalars(select(User)):
            _ = user.orders  # hotpath: ignore[n_plus_one]
    assert n_plus_ones(scope.findings) == []
    with profiler.scope("not ignored") as scope, Session(engine) as session:
        for user in session.scalars(select(User)):
            _ = user.orders  # hotpath: ignore[duplicate]
    assert len(n_plus_ones(scope.findings)) == 1  # an ignore for another kind does not count


async def test_async_lazy_loads_via_awaitable_attrs(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    profiler = Profiler(async_engine, modes={"n_plus_one": "log"})
    try:
        async with profiler.scope("async") as scope, AsyncSession(async_engine) as session:
            for user in (await session.scalars(select(User))).all():
                orders = await user.awaitable_attrs.orders  # marker:awaitable
                assert len(orders) == ORDERS_PER_USER
        [finding] = n_plus_ones(scope.findings)
        assert finding.details["relationship"] == "User.orders"
        assert finding.call_site is not None
        assert (Path(finding.call_site.filename).name, finding.call_site.lineno) == (
            HERE,
            line_of("marker:awaitable"),
        )
        async with profiler.scope("async fixed") as scope, AsyncSession(async_engine) as session:
            users = (await session.scalars(select(User).options(selectinload(User.orders)))).all()
            assert all(len(u.orders) == ORDERS_PER_USER for u in users)
        assert n_plus_ones(scope.findings) == []
    finally:
        profiler.uninstrument()


async def test_scopes_are_isolated_across_concurrent_tasks(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    profiler = Profiler(async_engine, modes={"n_plus_one": "off"})

    async def work(name: str, queries: int) -> int:
        async with profiler.scope(name) as scope, AsyncSession(async_engine) as session:
            for i in range(queries):
                await session.execute(select(Item).where(Item.id == i))
                await asyncio.sleep(0.001)  # interleave with the other task
        return scope.query_count

    try:
        counts = await asyncio.gather(work("a", 3), work("b", 7))
        assert counts == [3, 7]
    finally:
        profiler.uninstrument()


def test_scopes_are_isolated_across_threads_and_nothing_is_recorded_outside(
    profiler: Profiler, engine: Engine
) -> None:
    counts: dict[str, int] = {}

    def work(name: str, queries: int) -> None:
        with profiler.scope(name) as scope, Session(engine) as session:
            for i in range(queries):
                session.execute(select(Item).where(Item.id == i)).all()
        counts[name] = scope.query_count

    with profiler.scope("main") as main:
        threads = [threading.Thread(target=work, args=(n, q)) for n, q in (("t1", 2), ("t2", 5))]
        unscoped = threading.Thread(target=work_outside_any_scope, args=(engine,))
        for t in [*threads, unscoped]:
            t.start()
        for t in [*threads, unscoped]:
            t.join()
    assert counts == {"t1": 2, "t2": 5}
    assert main.query_count == 0  # threads do not inherit the scope; unscoped work is not recorded


def work_outside_any_scope(engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(select(User)).all()


def test_instrument_is_idempotent_and_uninstrument_removes_every_listener(engine: Engine) -> None:
    profiler = Profiler(engine)
    profiler.instrument(engine)
    assert _statements.is_watched(engine, profiler._statement)
    with profiler.scope("once") as scope, Session(engine) as session:
        session.execute(select(User)).all()
    assert scope.query_count == 1  # listening twice would count it twice
    collections = [(a, fn) for a, fn in profiler._watched.values() if fn is not None]
    assert {a.key for a, _ in collections} == {"orders", "items"}
    assert all(event.contains(a, "init_collection", fn) for a, fn in collections)
    profiler.uninstrument()
    assert not _statements.is_watched(engine, profiler._statement)
    handler = _statements._HANDLERS["do_execute"]
    assert not event.contains(engine, "do_execute", handler)  # its last one
    assert not any(event.contains(a, "init_collection", fn) for a, fn in collections)
    with profiler.scope("after") as scope, Session(engine) as session:
        session.execute(select(User)).all()
    assert scope.query_count == 0


@pytest.mark.parametrize("loader", [selectinload, joinedload], ids=["selectin", "joined"])
def test_unused_eager_load_is_reported_and_used_one_is_not(
    profiler: Profiler, engine: Engine, loader: object
) -> None:
    query = select(User).options(loader(User.orders))  # type: ignore[operator]
    with profiler.scope("unused") as scope, Session(engine) as session:
        users = session.scalars(query).unique().all()  # marker:eager-query
        assert [u.name for u in users]  # the users are used, their orders never are
    [unused] = [f for f in scope.findings if f.kind is FindingKind.UNUSED_EAGER_LOAD]
    assert unused.details["relationship"] == "User.orders"
    assert unused.count == USERS
    assert unused.call_site is not None
    assert unused.call_site.lineno == line_of("marker:eager-query")
    with profiler.scope("used") as scope, Session(engine) as session:
        users = session.scalars(query).unique().all()
        assert sum(len(u.orders) for u in users) == USERS * ORDERS_PER_USER
    assert [f for f in scope.findings if f.kind is FindingKind.UNUSED_EAGER_LOAD] == []
    # a lazily loaded collection is read by definition: never "unused"
    with profiler.scope("lazy") as scope, Session(engine) as session:
        for user in session.scalars(select(User)):
            _ = user.orders
    assert [f for f in scope.findings if f.kind is FindingKind.UNUSED_EAGER_LOAD] == []


def test_once_an_eager_collection_is_read_the_rest_go_unwatched(
    profiler: Profiler, engine: Engine
) -> None:
    query = select(User).options(selectinload(User.orders)).order_by(User.id)
    with profiler.scope("read one") as scope, Session(engine) as session:
        first, *others = session.scalars(query).all()
        watched = {type(u.__dict__["orders"]) for u in others}
        assert len(first.orders) == ORDERS_PER_USER  # one read: the relationship is used
        assert type(first.__dict__["orders"]).__name__ == "InstrumentedList"  # class restored
        assert {t.__name__ for t in watched} == {"TrackedInstrumentedList"}
        session.expunge_all()
        again = session.scalars(query).all()  # the same relationship, loaded again
        assert {type(u.__dict__["orders"]).__name__ for u in again} == {"InstrumentedList"}
    assert [f for f in scope.findings if f.kind is FindingKind.UNUSED_EAGER_LOAD] == []


def test_repeated_eager_loads_are_not_a_shape_n_plus_one_nor_duplicates(
    profiler: Profiler, engine: Engine
) -> None:
    # yield_per runs the selectin load once per batch, from one call site, with other parents
    # each time; that is the fix of an N+1, not one
    query = select(User).options(selectinload(User.orders)).execution_options(yield_per=1)
    with profiler.scope("batches") as scope, Session(engine) as session:
        orders = sum(len(user.orders) for user in session.scalars(query))
    assert orders == USERS * ORDERS_PER_USER
    assert scope.query_count == 1 + USERS
    assert sum(q.relationship_load for q in scope.queries) == USERS
    assert scope.findings == []
