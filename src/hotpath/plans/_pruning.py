"""Partition pruning: a plan that scans every partition of a partitioned table although the
statement filters on its partition key (a function or cast on the key, a value of another
type) gets a ``partition_not_pruned`` flag with the rewrite that prunes.

The plan alone does not say which relations are partitions of what: the caller asks the
server with :func:`partitions_sql` for the plan's relations and passes the answer
(:func:`partitions_from_rows`) to :func:`~hotpath.plans.analyze_plan`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import orjson
from pglast import parser

ParamStyle = Literal["named", "pyformat"]

_CONDITION_KEYS = ("Filter", "Index Cond", "Recheck Cond", "TID Cond")
_COMPARISONS = frozenset(("=", "<", ">", "<=", ">=", "<>", "!="))
# nodes that hide a column from the pruning logic: it compares the bare key only
_WRAPPERS = frozenset(("FuncCall", "TypeCast", "CoalesceExpr", "CaseExpr", "MinMaxExpr"))

# (relation as the plan names it, its parent, the parent's partitions, strategy, key columns)
_PARTITIONS_SQL = (
    "SELECT name, p.oid::regclass::text AS parent,"
    " (SELECT count(*) FROM pg_inherits c WHERE c.inhparent = p.oid) AS partitions,"
    " pt.partstrat::text AS strategy,"
    " ARRAY(SELECT a.attname::text FROM unnest(pt.partattrs) WITH ORDINALITY AS k(attnum, ord)"
    "  JOIN pg_attribute a ON a.attrelid = p.oid AND a.attnum = k.attnum ORDER BY k.ord)"
    "  AS keys"
    " FROM unnest({names}) AS name"
    " JOIN pg_inherits i ON i.inhrelid = to_regclass(name)"
    " JOIN pg_class p ON p.oid = i.inhparent"
    " JOIN pg_partitioned_table pt ON pt.partrelid = p.oid"
)


def partitions_sql(paramstyle: ParamStyle) -> str:
    """A query whose rows say which of the given relations (parameter ``names``, a list of
    names as :func:`~hotpath.plans.plan_relations` returns them) are partitions, of what."""
    names = "CAST(:names AS text[])" if paramstyle == "named" else "%(names)s::text[]"
    return _PARTITIONS_SQL.format(names=names)


@dataclass(frozen=True)
class PartitionOf:
    """A relation of the plan is a partition of ``parent``, which has ``partitions`` of them,
    partitioned by ``strategy`` (``r`` range, ``l`` list, ``h`` hash) on ``keys``."""

    parent: str
    partitions: int
    strategy: str
    keys: tuple[str, ...]


def partitions_from_rows(rows: Iterable[Any]) -> dict[str, PartitionOf]:
    """The rows of :func:`partitions_sql` (tuples or mappings) as a lookup by relation."""
    found = {}
    for row in rows:
        name, parent, partitions, strategy, keys = (
            (row["name"], row["parent"], row["partitions"], row["strategy"], row["keys"])
            if isinstance(row, Mapping)
            else tuple(row)
        )
        found[str(name)] = PartitionOf(
            str(parent), int(partitions), str(strategy), tuple(str(k) for k in keys or ())
        )
    return found


def _descendants(node: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        if child.get("Node Type") not in ("Append", "Merge Append"):
            yield from _descendants(child)


def unpruned_partitions(
    node: Mapping[str, Any],
    partitions: Mapping[str, PartitionOf],
    name_of: Any,
) -> list[tuple[PartitionOf, int, tuple[str, ...], str]]:
    """For an Append/Merge Append ``node``: the partitioned tables all of whose partitions it
    scans while a scan condition names the partition key, as (table, partitions scanned,
    key columns named, the condition)."""
    if node.get("Node Type") not in ("Append", "Merge Append"):
        return []
    if node.get("Subplans Removed"):
        return []  # pruned when the executor started (parameters, stable functions)
    scanned: dict[str, set[str]] = {}
    conditions: dict[str, list[str]] = {}
    for child in node.get("Plans", []):
        for inner in _descendants(child):
            relation = name_of(inner)
            info = partitions.get(relation) if relation else None
            if info is None:
                continue
            scanned.setdefault(info.parent, set()).add(relation)
            conditions.setdefault(info.parent, []).extend(
                str(inner[key]) for key in _CONDITION_KEYS if inner.get(key)
            )
    found = []
    for parent, relations in scanned.items():
        info = next(partitions[r] for r in relations)
        if info.partitions < 2 or len(relations) < info.partitions:
            continue
        for condition in dict.fromkeys(conditions[parent]):
            wrapped = wrapped_columns(condition)
            named = tuple(k for k in info.keys if k in wrapped)
            if named:
                found.append((info, len(relations), named, condition))
                break
    return found


@lru_cache(maxsize=4096)
def wrapped_columns(expression: str) -> frozenset[str]:
    """Columns of a plan condition that appear inside a function call, a cast or arithmetic
    (``date_trunc('day', at)``, ``(at)::date``, ``(id)::numeric``, ``id + 0``): the planner
    prunes only on the bare partition key, so such a condition scans every partition. A bare
    key compared with a parameter or a stable expression still prunes (at executor start)."""
    try:
        tree = orjson.loads(parser.parse_sql_json(f"SELECT 1 WHERE {expression}"))
    except Exception:  # pglast's ParseError or anything else: unknown, so no claim
        return frozenset()
    found: set[str] = set()
    stack: list[tuple[Any, bool]] = [(tree, False)]
    while stack:
        node, inside = stack.pop()
        if isinstance(node, list):
            stack.extend((item, inside) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        for kind, body in node.items():
            if kind == "ColumnRef" and inside:
                fields = [f["String"]["sval"] for f in body.get("fields", []) if "String" in f]
                if fields:
                    found.add(fields[-1])
                continue
            wraps = inside or kind in _WRAPPERS
            if kind == "A_Expr" and isinstance(body, dict):
                names = body.get("name") or []
                operator = names[-1].get("String", {}).get("sval") if names else None
                wraps = inside or operator not in _COMPARISONS
            stack.append((body, wraps))
    return frozenset(found)


def pruning_fix(info: PartitionOf, keys: tuple[str, ...]) -> str:
    key = keys[0]
    if info.strategy == "h":
        return (
            f"compare the bare key with a value of its own type ({key} = 42 or {key} IN (...), "
            f"not {key} = 42.0, {key}::text = '42' or a range): hash partitions prune only on "
            "equality"
        )
    return (
        f"put the bare column on one side and a range on the other: {key} >= '2026-01-05' AND "
        f"{key} < '2026-01-06' instead of date_trunc('day', {key}) = ... or {key}::date = ...; "
        f"and pass values of {key}'s own type (a parameter of another type defeats pruning)"
    )
