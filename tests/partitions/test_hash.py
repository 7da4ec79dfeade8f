"""Hash partitioning on real PostgreSQL: create (model, name + columns, sync and async),
inspect, and change the partition count online under a writer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import BigInteger, Engine, Index, Integer, String, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hotpath.partitions import (
    PartitionError,
    create_hash_partitioned,
    create_hash_partitioned_async,
    inspect_hash,
    inspect_hash_async,
    repartition_hash,
    repartition_hash_async,
)
from hotpath.testing import ModuleDatabase


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    amount: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(String(20))
    __table_args__ = (Index("ix_orders_note", "note"),)


@pytest.fixture
def engine(hotpath_db: ModuleDatabase) -> Iterator[Engine]:
    engine = create_engine(hotpath_db.url)
    with engine.begin() as conn:
        for name in ("orders", "orders_old", "orders_hotpath_new", "plain"):
            conn.execute(text(f"DROP TABLE IF EXISTS {name} CASCADE"))
        conn.execute(text("DROP TABLE IF EXISTS hotpath_partition_conversions"))
    yield engine
    engine.dispose()


def _fill(engine: Engine, rows: int = 2000) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO orders (id, user_id, amount, note)"
                " SELECT g, g % 97, g, 'n' || (g % 5) FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )


def _rows(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT * FROM orders ORDER BY id"))]


def test_create_from_a_model_then_inspect(engine: Engine) -> None:
    created = create_hash_partitioned(engine, Order, by="user_id", partitions=4)
    assert created == [f"orders_h4_{r}" for r in range(4)]
    assert create_hash_partitioned(engine, Order, by="user_id", partitions=4) == []
    _fill(engine)
    info = inspect_hash(engine, "orders", exact=True)
    assert (info.column, info.modulus) == ("user_id", 4)
    assert [(p.modulus, p.remainder) for p in info.partitions] == [(4, r) for r in range(4)]
    assert sum(p.rows for p in info.partitions) == 2000
    assert all(p.rows > 0 for p in info.partitions)
    with engine.connect() as conn:
        # a key lookup reads one partition
        plan = conn.execute(text("EXPLAIN SELECT * FROM orders WHERE user_id = 5")).scalars().all()
        assert sum("orders_h4_" in line for line in plan) == 1
        assert conn.execute(text("SELECT to_regclass('ix_orders_note')")).scalar() is not None


def test_create_from_name_and_columns_async(hotpath_db: ModuleDatabase, engine: Engine) -> None:
    async def go() -> tuple[list[str], int]:
        aengine = create_async_engine(hotpath_db.async_url)
        try:
            created = await create_hash_partitioned_async(
                aengine,
                "plain",
                "k",
                3,
                columns="id bigint, k bigint, PRIMARY KEY (id, k)",
            )
            info = await inspect_hash_async(aengine, "plain")
            return created, info.modulus
        finally:
            await aengine.dispose()

    created, modulus = asyncio.run(go())
    assert created == ["plain_h3_0", "plain_h3_1", "plain_h3_2"]
    assert modulus == 3


def test_create_refuses_clearly(engine: Engine) -> None:
    with pytest.raises(PartitionError, match="columns= is required"):
        create_hash_partitioned(engine, "plain", "k", 4)
    with pytest.raises(PartitionError, match="must include k"):
        create_hash_partitioned(engine, "plain", "k", 4, columns="id bigint PRIMARY KEY, k int")
    with pytest.raises(PartitionError, match="partitions=0"):
        create_hash_partitioned(engine, "plain", "k", 0, columns="k int")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE plain (k int)"))
    with pytest.raises(PartitionError, match="convert_to_partitioned"):
        create_hash_partitioned(engine, "plain", "k", 4, columns="k int")


def test_repartition_4_to_8_under_a_writer_keeps_every_row(engine: Engine) -> None:
    create_hash_partitioned(engine, Order, by="user_id", partitions=4)
    _fill(engine)
    written: list[int] = []
    stop = threading.Event()
    changed = threading.Condition()

    def writer() -> None:
        n = 10_000
        while not stop.is_set():
            n += 1
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO orders VALUES (:i, :i % 97, 0, 'w')"), {"i": n})
                conn.execute(
                    text("UPDATE orders SET amount = amount + 1 WHERE id = :i"), {"i": n % 2000 + 1}
                )
            with changed:
                written.append(n)
                changed.notify_all()

    def wait_writes(_: object) -> None:
        with changed:
            target = len(written) + 3
            assert changed.wait_for(lambda: len(written) >= target, timeout=60)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        result = repartition_hash(engine, "orders", 8, batch_rows=300, progress=wait_writes)
        wait_writes(None)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert result.old_table == "orders_old"
    assert result.replayed > 0
    info = inspect_hash(engine, "orders", exact=True)
    assert info.modulus == 8
    assert len(info.partitions) == 8
    rows = _rows(engine)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == 2000 + len(written)
    assert set(ids) == set(range(1, 2001)) | set(written)
    with engine.connect() as conn:
        updates = conn.execute(text("SELECT sum(amount) FROM orders WHERE id <= 2000")).scalar()
    # every committed UPDATE reached the new table: amounts started at id, +1 per update
    assert updates == sum(range(1, 2001)) + len(written)


def test_repartition_async_and_refusals(hotpath_db: ModuleDatabase, engine: Engine) -> None:
    create_hash_partitioned(engine, Order, by="user_id", partitions=2)
    _fill(engine, 500)
    before = _rows(engine)

    async def go() -> None:
        aengine = create_async_engine(hotpath_db.async_url)
        try:
            await repartition_hash_async(aengine, "orders", 4, batch_rows=100)
        finally:
            await aengine.dispose()

    asyncio.run(go())
    assert _rows(engine) == before
    assert inspect_hash(engine, "orders").modulus == 4
    # asked again: done already, nothing moves
    assert repartition_hash(engine, "orders", 4).resumed
    with pytest.raises(PartitionError, match=r"DROP TABLE public\.orders_old"):
        repartition_hash(engine, "orders", 8)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE orders_old"))
    assert repartition_hash(engine, "orders", 8).copied == 500
    assert _rows(engine) == before


def test_cli_repartition(engine: Engine, hotpath_db: ModuleDatabase) -> None:
    create_hash_partitioned(engine, Order, by="user_id", partitions=2)
    _fill(engine, 300)
    before = _rows(engine)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hotpath",
            "partitions",
            "repartition",
            hotpath_db.url,
            "orders",
            "--partitions",
            "3",
            "--batch-rows",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "orders has 3 hash partitions" in done.stdout
    assert _rows(engine) == before
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "hotpath",
            "partitions",
            "repartition",
            hotpath_db.url,
            "nope",
            "--partitions",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip() == "error: table 'nope' does not exist (check the name and search_path)"
    )
