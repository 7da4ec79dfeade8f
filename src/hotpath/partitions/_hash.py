"""Hash partitioning: create a table ``PARTITION BY HASH (key)`` with N partitions, inspect it,
and (through :mod:`._convert`) change N online.

Partitions are named ``<table>_h<modulus>_<remainder>``. Creating runs in one transaction:
the table and its partitions appear together or not at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable

from .._validate import check_number
from ._convert import _check_name, _layout_of, _quote, _resolve
from ._maintain import PartitionError

_HASH_BOUND = re.compile(r"modulus (\d+), remainder (\d+)", re.IGNORECASE)
_MAX_HASH_PARTITIONS = 1000


@dataclass(frozen=True)
class HashPartition:
    name: str
    modulus: int
    remainder: int
    rows: int  # exact with ``exact=True``, else the planner's estimate (pg_class.reltuples)


@dataclass(frozen=True)
class HashPartitionedTable:
    name: str
    column: str
    partitions: tuple[HashPartition, ...]

    @property
    def modulus(self) -> int:
        """The largest modulus (partitions of a smaller one each cover several remainders)."""
        return max((p.modulus for p in self.partitions), default=0)

    @property
    def skew(self) -> float:
        """Rows of the fullest partition over the mean (1.0 is even)."""
        rows = [p.rows for p in self.partitions]
        mean = sum(rows) / len(rows) if rows else 0
        return max(rows) / mean if mean else 1.0


def _table_source(
    conn: Connection, table: str | Table | Any, columns: str | None
) -> tuple[str, str, Table | None]:
    """(name, CREATE TABLE statement without its PARTITION BY, the Table if one was given)."""
    if isinstance(table, str):
        if columns is None or not columns.strip():
            raise PartitionError(
                f"columns= is required to create {table!r} from a name: give the column "
                "definitions, e.g. 'id bigint, user_id bigint, PRIMARY KEY (id, user_id)'"
            )
        return table, f"CREATE TABLE {_quote(conn, table)} ({columns})", None
    found = getattr(table, "__table__", table)
    if not isinstance(found, Table):
        raise PartitionError(f"{table!r} is not a table name, a SQLAlchemy Table or a mapped class")
    if columns is not None:
        raise PartitionError("columns= is only for a table given by name: the Table has them")
    if found.dialect_options["postgresql"].get("partition_by"):
        raise PartitionError(
            f"{found.name} already sets postgresql_partition_by: drop it, hotpath adds the "
            "HASH clause"
        )
    return found.name, str(CreateTable(found).compile(dialect=conn.dialect)).strip(), found


def _create(
    conn: Connection, table: str | Table | Any, by: str, partitions: int, columns: str | None
) -> list[str]:
    check_number(
        PartitionError,
        "partitions",
        partitions,
        integer=True,
        at_least=1,
        below=_MAX_HASH_PARTITIONS + 1,
    )
    name, create, model = _table_source(conn, table, columns)
    conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"hotpath.partitions:{name}"}
    )
    exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": _quote(conn, name)}).scalar()
    if exists is not None:
        oid, _, _, relkind = _resolve(conn, _quote(conn, name))
        layout = _layout_of(conn, oid)
        if layout is not None and layout[:2] == ("h", by) and layout[2] == partitions:
            return []  # created already, as asked
        if relkind == "r":
            raise PartitionError(
                f"{name} exists and is not partitioned: convert it online with "
                f"convert_to_partitioned(engine, {name!r}, by={by!r}, "
                f"hash_partitions={partitions})"
            )
        raise PartitionError(
            f"{name} exists with another layout ({layout}): change the count with "
            f"repartition_hash(engine, {name!r}, {partitions})"
        )
    try:
        with conn.begin_nested():
            conn.execute(text(f"{create} PARTITION BY HASH ({_quote(conn, by)})"))
    except Exception as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise PartitionError(
            f"cannot create {name} partitioned by hash of {by}: {reason} (a primary key or "
            f"unique constraint must include {by})"
        ) from None
    created = []
    for remainder in range(partitions):
        child = _check_name(f"{name}_h{partitions}_{remainder}")
        conn.execute(
            text(
                f"CREATE TABLE {_quote(conn, child)} PARTITION OF {_quote(conn, name)}"
                f" FOR VALUES WITH (MODULUS {partitions}, REMAINDER {remainder})"
            )
        )
        created.append(child)
    if model is not None:
        for index in model.indexes:
            conn.execute(CreateIndex(index))
    return created


def _inspect(conn: Connection, table: str, exact: bool) -> HashPartitionedTable:
    oid, _, name, _ = _resolve(conn, table)
    layout = _layout_of(conn, oid)
    if layout is None or layout[0] != "h":
        raise PartitionError(
            f"{name} is not partitioned by hash: create one with create_hash_partitioned, or "
            f"convert it with convert_to_partitioned(..., hash_partitions=N)"
        )
    counts: dict[str, int] = {}
    if exact:
        counts = {
            str(r[0]): int(r[1])
            for r in conn.execute(
                text(
                    "SELECT tableoid::regclass::text, count(*)"
                    f" FROM {_quote(conn, name)} GROUP BY 1"
                )
            )
        }
    partitions = []
    for child, bound, estimate, qualified in conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), greatest(c.reltuples, 0),"
            " c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = :oid"
        ),
        {"oid": oid},
    ):
        match = _HASH_BOUND.search(bound or "")
        if match is None:
            continue
        rows = counts.get(str(qualified), 0) if exact else int(estimate)
        partitions.append(HashPartition(str(child), int(match.group(1)), int(match.group(2)), rows))
    partitions.sort(key=lambda p: (p.modulus, p.remainder))
    return HashPartitionedTable(name, layout[1], tuple(partitions))


def create_hash_partitioned(
    engine: Engine,
    table: str | Table | Any,
    by: str,
    partitions: int,
    *,
    columns: str | None = None,
) -> list[str]:
    """Create ``table`` partitioned by hash of ``by`` into ``partitions`` partitions; returns
    the partitions created ([] when it exists already as asked). ``table`` is a name (with
    ``columns``, the SQL column definitions), a SQLAlchemy ``Table`` or a mapped class."""
    with engine.begin() as conn:
        return _create(conn, table, by, partitions, columns)


def inspect_hash(engine: Engine, table: str, *, exact: bool = False) -> HashPartitionedTable:
    """The hash partitions of ``table``: modulus, remainder and rows of each (``exact=True``
    counts them, one scan; otherwise the planner's estimates)."""
    with engine.connect() as conn:
        return _inspect(conn, table, exact)


async def create_hash_partitioned_async(
    engine: AsyncEngine,
    table: str | Table | Any,
    by: str,
    partitions: int,
    *,
    columns: str | None = None,
) -> list[str]:
    async with engine.begin() as conn:
        return await conn.run_sync(_create, table, by, partitions, columns)


async def inspect_hash_async(
    engine: AsyncEngine, table: str, *, exact: bool = False
) -> HashPartitionedTable:
    async with engine.connect() as conn:
        return await conn.run_sync(_inspect, table, exact)


__all__ = [
    "HashPartition",
    "HashPartitionedTable",
    "create_hash_partitioned",
    "create_hash_partitioned_async",
    "inspect_hash",
    "inspect_hash_async",
]
