"""Bulk inserts: rows/s of COPY against the usual ways, in one run, same rows, same table.

Contenders: ORM ``session.add_all`` + flush; Core ``insert().values(...)`` with 1,000 rows per
statement; Core ``execute(insert(t), rows)`` (SQLAlchemy's insertmanyvalues); psycopg's
``cursor.executemany``; ``hotpath.bulk.copy_rows`` (COPY). 1,000,000 rows each (50,000 with
``--quick``), the table truncated between contenders. The issue's target: COPY ≥ 10x the ORM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Engine, Numeric, String, create_engine, insert, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from hotpath.bulk import copy_rows
from hotpath.stack import LocalStack

from ._harness import Series, report, time_once

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
COLUMNS = ["id", "at", "amount", "note"]


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "bench_rows"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    note: Mapped[str] = mapped_column(String(40))


def _rows(n: int) -> Iterator[tuple[Any, ...]]:
    for i in range(1, n + 1):
        yield (i, START + timedelta(seconds=i), Decimal(i % 100_000) / 100, f"row number {i}")


def _dicts(n: int) -> list[dict[str, Any]]:
    return [dict(zip(COLUMNS, row, strict=True)) for row in _rows(n)]


def _orm(engine: Engine, n: int) -> None:
    with Session(engine) as session:
        session.add_all(Row(**d) for d in _dicts(n))
        session.commit()


def _values(engine: Engine, n: int) -> None:
    rows = _dicts(n)
    with engine.begin() as conn:
        for i in range(0, n, 1000):
            conn.execute(insert(Row).values(rows[i : i + 1000]))


def _insertmanyvalues(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Row), _dicts(n))


def _psycopg_executemany(engine: Engine, n: int) -> None:
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO bench_rows (id, at, amount, note) VALUES (%s, %s, %s, %s)",
                list(_rows(n)),
            )
        raw.commit()
    finally:
        raw.close()


def _copy(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        copy_rows(conn, Row, _rows(n), COLUMNS)


CONTENDERS: dict[str, Callable[[Engine, int], None]] = {
    "ORM add_all": _orm,
    "insert().values (1,000 a statement)": _values,
    "executemany (insertmanyvalues)": _insertmanyvalues,
    "psycopg executemany": _psycopg_executemany,
    "hotpath copy_rows (COPY)": _copy,
}


def run(quick: bool) -> str:
    rows, rounds = (50_000, 3) if quick else (1_000_000, 1)
    series = {name: Series(name) for name in CONTENDERS}
    with LocalStack(replicas=0, redis=False) as stack:
        engine = create_engine(stack.primary.url)
        Base.metadata.create_all(engine)
        for _ in range(rounds):
            for name, contender in CONTENDERS.items():
                with engine.begin() as conn:
                    conn.execute(text("TRUNCATE bench_rows"))
                series[name].samples.append(time_once(lambda c=contender: c(engine, rows)))  # type: ignore[misc]
                with engine.connect() as conn:
                    assert conn.execute(text("SELECT count(*) FROM bench_rows")).scalar() == rows
        engine.dispose()
    for s in series.values():
        s.note = f"{rows / s.median:,.0f} rows/s"
    return (
        f"{rows:,} rows\n\n"
        + report(f"insert {rows:,} rows", list(series.values()), baseline="ORM add_all", unit="s")
        + "\n"
    )
