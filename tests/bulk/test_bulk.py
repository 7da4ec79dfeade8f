"""COPY bulk writes on real PostgreSQL: exact round trips, bad rows, upserts, async."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    ARRAY,
    CheckConstraint,
    Date,
    DateTime,
    Engine,
    Integer,
    Numeric,
    String,
    create_engine,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hotpath.bulk import BulkError, BulkRowError, copy_rows, copy_rows_async, upsert_rows
from hotpath.testing import ModuleDatabase


class Base(DeclarativeBase):
    pass


class Reading(Base):
    __tablename__ = "readings"
    id: Mapped[int] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 4))
    attrs: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    tags: Mapped[list[int] | None] = mapped_column(ARRAY(Integer), nullable=True)
    note: Mapped[str | None] = mapped_column(String(30), nullable=True)


class Stock(Base):
    __tablename__ = "stock"
    __table_args__ = (CheckConstraint("qty >= 0", name="stock_qty_not_negative"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(20), unique=True)
    qty: Mapped[int] = mapped_column(Integer)


COLUMNS = ["id", "day", "at", "amount", "attrs", "tags", "note"]
START = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)


def rows(n: int, offset: int = 0) -> Iterator[tuple[Any, ...]]:
    for i in range(offset + 1, offset + n + 1):
        yield (
            i,
            date(2026, 1, 1) + timedelta(days=i % 300),
            START + timedelta(seconds=i),
            Decimal(i) / 7 if i % 5 else Decimal("0.0001"),
            {"k": i, "nested": [1, "two", None]} if i % 3 else None,
            [i, i + 1] if i % 4 else None,
            None if i % 6 == 0 else f"note {i}",
        )


@pytest.fixture
def engine(hotpath_db: ModuleDatabase) -> Iterator[Engine]:
    engine = create_engine(hotpath_db.url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _stored(engine: Engine) -> list[tuple[Any, ...]]:
    with Session(engine) as session:
        return [
            (r.id, r.day, r.at, r.amount, r.attrs, r.tags, r.note)
            for r in session.scalars(select(Reading).order_by(Reading.id))
        ]


def test_copy_round_trips_every_type_exactly_from_a_generator(engine: Engine) -> None:
    with Session(engine) as session:
        assert copy_rows(session, Reading, rows(5_000), COLUMNS) == 5_000
        session.commit()
    stored = _stored(engine)
    expected = [
        (i, d, a, amount.quantize(Decimal("0.0001")), j, t, n)
        for i, d, a, amount, j, t, n in rows(5_000)
    ]
    assert stored == expected  # dates, tz timestamps to the µs, decimals, JSON, arrays, NULLs


def test_a_bad_row_names_its_index_and_column_and_nothing_is_written(engine: Engine) -> None:
    bad = list(rows(100))
    bad[57] = (*bad[57][:3], "not a number", *bad[57][4:])
    with Session(engine) as session:
        with pytest.raises(BulkRowError) as error:
            copy_rows(session, Reading, bad, COLUMNS)
        session.rollback()
    assert (error.value.index, error.value.column) == (57, "amount")
    assert "not a number" not in str(error.value)  # the value is not echoed
    assert _stored(engine) == []  # all or nothing
    refused = list(rows(50))
    refused[30] = (refused[30][0], None, *refused[30][2:])  # NOT NULL: only the server knows
    with Session(engine) as session:
        with pytest.raises(BulkRowError) as error:
            copy_rows(session, Reading, refused, COLUMNS)
        session.rollback()
    assert (error.value.index, error.value.column) == (30, "day")
    assert _stored(engine) == []
    with Session(engine) as session, pytest.raises(BulkError, match="no column nope"):
        copy_rows(session, Reading, [], ["nope"])


def test_upsert_inserts_new_rows_and_updates_existing_ones(engine: Engine) -> None:
    with Session(engine) as session:
        copy_rows(session, Reading, rows(10), COLUMNS)
        session.commit()
    changed = [(i, d, a, Decimal(999), j, t, "updated") for i, d, a, _, j, t, _ in rows(5, 5)]
    with Session(engine) as session:
        assert upsert_rows(session, Reading, changed + list(rows(5, 10)), ["id"], COLUMNS) == 10
        session.commit()
    stored = {r[0]: r for r in _stored(engine)}
    assert len(stored) == 15
    assert stored[3][6] == "note 3"  # untouched
    assert (stored[6][3], stored[6][6]) == (Decimal(999), "updated")  # updated
    assert stored[14][6] == "note 14"  # inserted
    with engine.connect() as conn:  # the staging table is gone
        assert (
            conn.execute(
                text("SELECT count(*) FROM pg_class WHERE relname LIKE 'hotpath_stage_%'")
            ).scalar()
            == 0
        )


async def test_async_copy_with_asyncpg(engine: Engine, hotpath_db: ModuleDatabase) -> None:
    async_engine = create_async_engine(hotpath_db.async_url)
    try:
        async with AsyncSession(async_engine) as session:
            assert await copy_rows_async(session, Reading, rows(2_000), COLUMNS) == 2_000
            await session.commit()
    finally:
        await async_engine.dispose()
    assert len(_stored(engine)) == 2_000
    assert _stored(engine)[10][2] == START + timedelta(seconds=11)


async def test_async_bad_rows_name_their_index_and_column(
    engine: Engine, hotpath_db: ModuleDatabase
) -> None:
    async_engine = create_async_engine(hotpath_db.async_url)
    unencodable = list(rows(60_000))
    unencodable[54_321] = (*unencodable[54_321][:3], "not a number", *unencodable[54_321][4:])
    refused = list(rows(60_000))
    refused[54_321] = (refused[54_321][0], None, *refused[54_321][2:])  # NOT NULL: the server
    try:
        for bad, column in ((unencodable, "amount"), (refused, "day")):
            async with AsyncSession(async_engine) as session:
                with pytest.raises(BulkRowError) as error:
                    await copy_rows_async(session, Reading, bad, COLUMNS)
                # the transaction is still usable: the failed COPY was a savepoint's
                assert (await session.execute(text("SELECT count(*) FROM readings"))).scalar() == 0
            assert (error.value.index, error.value.column) == (54_321, column)
            assert "not a number" not in str(error.value)
            assert "refused" in str(error.value)
        async with async_engine.connect() as conn:  # outside a transaction: no savepoint
            with pytest.raises(BulkRowError) as error:
                await copy_rows_async(conn, Reading, unencodable[:54_322], COLUMNS)
        assert (error.value.index, error.value.column) == (54_321, "amount")
    finally:
        await async_engine.dispose()
    assert _stored(engine) == []


def _stock(n: int) -> list[tuple[int, str, int]]:
    return [(i, f"sku-{i}", i) for i in range(n)]


@pytest.mark.faults
def test_upsert_refusals_name_the_row_and_the_constraint_not_the_values(engine: Engine) -> None:
    with Session(engine) as session:
        copy_rows(session, Stock, [(1000, "taken-sku", 1)])
        session.commit()
    checked = _stock(20)
    checked[7] = (7, "sku-7", -123456)  # the target's CHECK
    repeated = _stock(20)
    repeated[13] = (3, "sku-other", 1)  # the key of row 3 again
    clashing = _stock(20)
    clashing[12] = (12, "taken-sku", 1)  # a unique column other than the key
    cases = [
        (checked, 7, None, "stock_qty_not_negative"),
        (repeated, 13, "id", None),
        (clashing, 12, None, "stock_sku_key"),
    ]
    for bad, index, column, constraint in cases:
        with Session(engine) as session:
            with pytest.raises(BulkRowError) as error:
                upsert_rows(session, Stock, bad, ["id"])
            session.rollback()
        found = error.value
        assert (found.index, found.column, found.constraint) == (index, column, constraint)
        assert "-123456" not in str(found)
        assert "taken-sku" not in str(found)
        assert "sku-" not in str(found)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM stock")).scalar() == 1


class _Broken(ValueError):
    pass


def _failing_rows(good: int) -> Iterator[tuple[Any, ...]]:
    yield from rows(good)
    raise _Broken("the caller's own bug")


async def _failing_rows_async(good: int) -> AsyncIterator[tuple[Any, ...]]:
    for row in rows(good):
        yield row
    raise _Broken("the caller's own bug")


@pytest.mark.faults
async def test_an_error_of_the_rows_themselves_propagates_as_itself(
    engine: Engine, hotpath_db: ModuleDatabase
) -> None:
    with Session(engine) as session:
        with pytest.raises(_Broken, match="the caller's own bug"):
            copy_rows(session, Reading, _failing_rows(10), COLUMNS)
        session.rollback()
    with Session(engine) as session:
        with pytest.raises(_Broken, match="the caller's own bug"):
            upsert_rows(session, Reading, _failing_rows(10), ["id"], COLUMNS)
        session.rollback()
    async_engine = create_async_engine(hotpath_db.async_url)
    try:
        for source in (_failing_rows(10), _failing_rows_async(10)):
            async with AsyncSession(async_engine) as session:
                with pytest.raises(_Broken, match="the caller's own bug"):
                    await copy_rows_async(session, Reading, source, COLUMNS)
    finally:
        await async_engine.dispose()
    assert _stored(engine) == []
