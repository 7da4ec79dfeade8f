"""OFFSET against keyset: the time to fetch page 1, 100, 1,000 and 10,000 (20 rows a page).

A table of 1,000,000 rows (200,000 with ``--quick``) with an index on
(created_at DESC, id DESC), read newest first through the ORM, both ways, in one run. Keyset
pages start from the cursor of the previous page (as a "next" link would give).
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import BigInteger, DateTime, Engine, String, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hotpath.paging import encode_cursor, keyset_page
from hotpath.paging._keyset import key_columns, sort_key
from hotpath.stack import LocalStack

from ._harness import Series, report, time_once

PAGE = 20


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "bench_events"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(20))


ORDER = (Event.created_at.desc(), Event.id.desc())


def _load(engine: Engine, rows: int) -> None:
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO bench_events SELECT g, timestamptz '2026-01-01' + g * interval '1s',"
                " 'kind' || (g % 7) FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )
        conn.execute(
            text("CREATE INDEX bench_events_newest ON bench_events (created_at DESC, id DESC)")
        )
        conn.execute(text("ANALYZE bench_events"))


def _cursor_before(session: Session, page: int) -> str | None:
    if page == 1:
        return None
    last = session.execute(
        select(Event.created_at, Event.id).order_by(*ORDER).offset((page - 1) * PAGE - 1).limit(1)
    ).one()
    return encode_cursor(list(last), sort_key(key_columns(ORDER)))


def _by_offset(session: Session, page: int) -> list[Any]:
    query = select(Event).order_by(*ORDER).offset((page - 1) * PAGE).limit(PAGE)
    return list(session.scalars(query).all())


def _by_keyset(session: Session, cursor: str | None) -> list[Any]:
    return keyset_page(session, select(Event), ORDER, after=cursor, limit=PAGE).items


def run(quick: bool) -> str:
    rows, rounds = (200_000, 15) if quick else (1_000_000, 40)
    pages = [p for p in (1, 100, 1_000, 10_000) if p * PAGE <= rows]
    sections = []
    with LocalStack(replicas=0, redis=False) as stack:
        engine = create_engine(stack.primary.url)
        _load(engine, rows)
        with Session(engine) as session:
            for page in pages:
                cursor = _cursor_before(session, page)
                assert _by_offset(session, page) == _by_keyset(session, cursor)  # same page
                offset, keyset = Series("OFFSET"), Series("keyset")
                for _ in range(rounds):
                    offset.samples.append(time_once(partial(_by_offset, session, page)))
                    keyset.samples.append(time_once(partial(_by_keyset, session, cursor)))
                    session.expunge_all()
                table = report(
                    f"page {page:,} of {rows:,} rows", [offset, keyset], baseline="OFFSET"
                )
                sections.append(f"### page {page:,}\n\n{table}")
        engine.dispose()
    return f"{rows:,} rows, {PAGE} per page, {rounds} rounds\n\n" + "\n\n".join(sections) + "\n"
