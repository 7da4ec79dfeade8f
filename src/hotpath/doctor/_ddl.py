"""CREATE INDEX statements that run on the table they name, partitioned ones included.

``CREATE INDEX CONCURRENTLY`` fails on a partitioned table ("cannot create index on
partitioned table concurrently"). What works without blocking writes is PostgreSQL's
documented procedure: an invalid index on the parent alone (``ON ONLY``), each partition's
index built concurrently, then attached; the parent's index turns valid when every partition
has its index attached. The one-statement alternative, a plain ``CREATE INDEX`` on the parent,
holds a SHARE lock on every partition (writes wait) for the whole build.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._context import display_name

Rows = Callable[[str, Any], list[dict[str, Any]]]

PARTITIONED_NOTE = (
    "partitioned table: CREATE INDEX CONCURRENTLY fails on it, so each partition's index is "
    "built concurrently and attached (the parent's index is valid once all are attached); "
    "the one-statement alternative, CREATE INDEX ON {table}{body}; without CONCURRENTLY, "
    "holds a SHARE lock on every partition (writes wait) for the whole build"
)
_MAX_NAME = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names


def index_statements(rows: Rows, table_oid: int, body: str, columns: Sequence[str]) -> list[str]:
    """The statements that create the index ``body`` (what follows ``ON table``, e.g.
    `` (customer_id)`` or `` USING gin (attrs)``) on ``table_oid`` without blocking writes.
    ``columns`` name the index (PostgreSQL's ``table_col_idx`` style) where names are needed."""
    tree = rows(
        "SELECT p.relid::oid::int8 AS oid, p.parentrelid::oid::int8 AS parent, p.isleaf,"
        " p.level, n.nspname AS schema, c.relname, c.relkind"
        " FROM pg_partition_tree(%s::oid) p JOIN pg_class c ON c.oid = p.relid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY p.level, c.relname",
        (table_oid,),
    )
    if not tree or tree[0]["relkind"] != "p":
        root = tree[0] if tree else _relation(rows, table_oid)
        return [f"CREATE INDEX CONCURRENTLY ON {_name(root)}{body};"]
    taken = {
        (str(r["schema"]), str(r["relname"]))
        for r in rows(
            "SELECT n.nspname AS schema, c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relnamespace IN (SELECT relnamespace FROM pg_class"
            "  WHERE oid IN (SELECT relid FROM pg_partition_tree(%s::oid)))",
            (table_oid,),
        )
    }
    index_of: dict[int, str] = {}
    statements: list[str] = []
    for node in tree:
        name = _free_name(f"{node['relname']}_{'_'.join(columns)}_idx", str(node["schema"]), taken)
        index_of[int(node["oid"])] = display_name(str(node["schema"]), name)
        ident = display_name("public", name)  # CREATE INDEX names it in the table's schema
        if node["isleaf"]:
            statements.append(f"CREATE INDEX CONCURRENTLY {ident} ON {_name(node)}{body};")
        else:
            statements.append(f"CREATE INDEX {ident} ON ONLY {_name(node)}{body};")
        if node["parent"] is not None and int(node["parent"]) in index_of:
            parent = index_of[int(node["parent"])]
            statements.append(
                f"ALTER INDEX {parent} ATTACH PARTITION {index_of[int(node['oid'])]};"
            )
    return statements


def is_partitioned(rows: Rows, table_oid: int) -> bool:
    return bool(rows("SELECT 1 FROM pg_class WHERE oid = %s AND relkind = 'p'", (table_oid,)))


def _relation(rows: Rows, oid: int) -> dict[str, Any]:
    return rows(
        "SELECT n.nspname AS schema, c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        (oid,),
    )[0]


def _name(node: dict[str, Any]) -> str:
    return display_name(str(node["schema"]), str(node["relname"]))


def _free_name(wanted: str, schema: str, taken: set[tuple[str, str]]) -> str:
    """``wanted`` cut to PostgreSQL's name length, with a number when the name is in use."""
    name, number = _cut(wanted, _MAX_NAME), 0
    while (schema, name) in taken:
        number += 1
        suffix = str(number)
        name = _cut(wanted, _MAX_NAME - len(suffix)) + suffix
    taken.add((schema, name))
    return name


def _cut(name: str, limit: int) -> str:
    """``name`` within ``limit`` bytes, as the server counts a name (UTF-8), whole characters
    only: the name printed is the name the server keeps."""
    return name.encode()[:limit].decode(errors="ignore")
