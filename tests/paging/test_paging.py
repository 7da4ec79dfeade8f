"""Keyset pagination on real PostgreSQL: the same rows as OFFSET, exactly once, any order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import DateTime, Engine, Integer, String, create_engine, nulls_last, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hotpath.paging import (
    InvalidCursor,
    PagingError,
    iter_keyset,
    iter_keyset_async,
    keyset_page,
    keyset_page_async,
)
from hotpath.testing import ModuleDatabase

ROWS = 523


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    score: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(20))


@pytest.fixture(scope="module")
def engine(hotpath_db: ModuleDatabase) -> Iterator[Engine]:
    engine = create_engine(hotpath_db.url)
    Base.metadata.create_all(engine)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with Session(engine) as session:
        session.add_all(
            Item(
                id=i,
                created_at=start + timedelta(minutes=i // 3),  # ties on created_at
                score=None if i % 7 == 0 else i % 10,
                name=f"item{i}",
            )
            for i in range(1, ROWS + 1)
        )
        session.commit()
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX items_newest ON items (created_at DESC, id DESC)"))
        conn.execute(text("ANALYZE items"))
    yield engine
    engine.dispose()


def _all_pages(session: Session, order_by: list[Any], limit: int) -> list[int]:
    ids, cursor, pages = [], None, 0
    while True:
        page = keyset_page(session, select(Item), order_by, after=cursor, limit=limit)
        ids += [item.id for item in page.items]
        pages += 1
        if not page.has_more:
            return ids
        cursor = page.next_cursor
        assert pages < ROWS  # no endless loop


def _reference(engine: Engine, order_sql: str) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text(f"SELECT id FROM items ORDER BY {order_sql}"))]


@pytest.mark.parametrize(
    ("order_by", "order_sql"),
    [
        ([Item.created_at.desc(), Item.id.desc()], "created_at DESC, id DESC"),
        ([Item.created_at, Item.id], "created_at, id"),
        ([Item.score, Item.id.desc()], "score ASC, id DESC"),  # NULLs last, mixed directions
        ([Item.score.desc(), Item.id], "score DESC, id ASC"),  # NULLs first
    ],
    ids=["newest", "oldest", "score-nulls-last-mixed", "score-desc-nulls-first"],
)
def test_pages_cover_every_row_once_in_the_same_order_as_sql(
    engine: Engine, order_by: list[Any], order_sql: str
) -> None:
    with Session(engine) as session:
        assert _all_pages(session, order_by, limit=20) == _reference(engine, order_sql)


def test_keyset_reads_one_page_where_offset_reads_everything_before_it(engine: Engine) -> None:
    order = [Item.created_at.desc(), Item.id.desc()]
    with Session(engine) as session:
        cursor = None
        for _ in range(20):  # walk to page 21
            cursor = keyset_page(session, select(Item), order, after=cursor, limit=20).next_cursor
    newest = "ORDER BY created_at DESC, id DESC"
    explain = "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM items"
    with engine.connect() as conn:
        deep = conn.execute(text(f"SELECT created_at, id FROM items {newest} OFFSET 400")).first()
        assert deep is not None
        # what keyset_page runs for page 21 (a row comparison), and OFFSET for the same page
        plan = conn.execute(
            text(f"{explain} WHERE (created_at, id) < (:c, :i) {newest} LIMIT 21"),
            {"c": deep[0], "i": deep[1]},
        ).scalar()
        offset = conn.execute(text(f"{explain} {newest} OFFSET 400 LIMIT 21")).scalar()
    assert cursor is not None

    def rows_scanned(node: dict[str, Any]) -> int:
        """Rows the plan's scan produced (the most any node handled)."""
        own = int(node.get("Actual Rows", 0) * node.get("Actual Loops", 1))
        return max([own, *(rows_scanned(child) for child in node.get("Plans", []))])

    assert rows_scanned(plan[0]["Plan"]) <= 2 * 21  # an index range: about one page
    assert rows_scanned(offset[0]["Plan"]) >= 421  # OFFSET reads everything before the page


def test_cursors_are_opaque_and_tamper_evident(engine: Engine) -> None:
    order = [Item.created_at.desc(), Item.id.desc()]
    with Session(engine) as session:
        page = keyset_page(session, select(Item), order, limit=5)
        assert page.next_cursor is not None
        body, mac = page.next_cursor.split(".")
        forged = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
        with pytest.raises(InvalidCursor, match="altered"):
            keyset_page(session, select(Item), order, after=forged)
        with pytest.raises(InvalidCursor, match="another sort order"):
            keyset_page(session, select(Item), [Item.id], after=page.next_cursor)
        with pytest.raises(InvalidCursor, match="altered or signed with another secret"):
            keyset_page(session, select(Item), order, after=page.next_cursor, secret=b"other")
        with pytest.raises(InvalidCursor, match="cursor"):
            keyset_page(session, select(Item), order, after="garbage")
        with pytest.raises(PagingError, match="NULLS FIRST/LAST"):
            keyset_page(session, select(Item), [nulls_last(Item.score)], limit=5)
    assert "item" not in page.next_cursor  # opaque: no plain values inside


def test_core_rows_page_too(engine: Engine) -> None:
    with Session(engine) as session:
        page = keyset_page(session, select(Item.id, Item.name), [Item.id], limit=3)
        assert [tuple(row) for row in page.items] == [(1, "item1"), (2, "item2"), (3, "item3")]
        after = keyset_page(
            session, select(Item.id, Item.name), [Item.id], after=page.next_cursor, limit=3
        )
        assert [row.id for row in after.items] == [4, 5, 6]


def test_iter_keyset_covers_all_rows_in_constant_memory(engine: Engine) -> None:
    seen: list[int] = []
    with Session(engine) as session:
        for chunk in iter_keyset(
            session, select(Item).where(Item.score.is_not(None)), Item.id, chunk_size=50
        ):
            assert len(chunk) <= 50
            assert len(session.identity_map) <= 50  # earlier chunks were let go
            seen += [item.id for item in chunk]
    assert seen == [i for i in range(1, ROWS + 1) if i % 7]


async def test_async_twins(engine: Engine, hotpath_db: ModuleDatabase) -> None:
    async_engine = create_async_engine(hotpath_db.async_url)
    order = [Item.created_at.desc(), Item.id.desc()]
    try:
        async with AsyncSession(async_engine) as session:
            ids, cursor = [], None
            while True:
                page = await keyset_page_async(session, select(Item), order, after=cursor, limit=50)
                ids += [item.id for item in page.items]
                if not page.has_more:
                    break
                cursor = page.next_cursor
            assert ids == _reference(engine, "created_at DESC, id DESC")
            chunks = [len(c) async for c in iter_keyset_async(session, select(Item), Item.id, 100)]
            assert sum(chunks) == ROWS
            assert max(chunks) == 100
    finally:
        await async_engine.dispose()
