"""Plan analysis: walk an EXPLAIN JSON plan and grade what makes it slow."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pglast.stream import maybe_double_quote_name

from ._columns import condition_columns
from ._pruning import PartitionOf, pruning_fix, unpruned_partitions

LARGE_TABLE_ROWS = 10_000
MANY_LOOPS = 1_000
# PEV2's grades for a node's own share of the execution time: 10% / 40% / 90%
TIME_SHARE_GRADES = (0.9, 0.4, 0.1)
# a node this fast is not worth a flag, whatever its share of a tiny plan
MIN_NODE_MS = 1.0


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class PlanFlag:
    """One problem in a plan: what, where, how bad, and the fix when there is one."""

    kind: str
    severity: Severity
    message: str
    node: str
    table: str | None = None
    columns: tuple[str, ...] = ()
    suggestion: str | None = None
    evidence: dict[str, float] = field(default_factory=dict)


def plan_root(plan: Any) -> dict[str, Any]:
    """The top ``Plan`` node of ``EXPLAIN (FORMAT JSON)`` output (list, dict or node)."""
    if isinstance(plan, list):
        plan = plan[0]
    if isinstance(plan, Mapping) and "Plan" in plan:
        plan = plan["Plan"]
    if not isinstance(plan, dict) or "Node Type" not in plan:
        raise ValueError("not an EXPLAIN (FORMAT JSON) plan: no 'Node Type' found")
    return plan


def walk(node: dict[str, Any], depth: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    yield depth, node
    for child in node.get("Plans", []):
        yield from walk(child, depth + 1)


def plan_relations(plan: Any) -> list[str]:
    """Qualified names of the tables a plan reads (for looking up their sizes)."""
    seen: list[str] = []
    for _, node in walk(plan_root(plan)):
        name = qualified_name(node)
        if name and name not in seen:
            seen.append(name)
    return seen


def analyze_plan(
    plan: Any,
    table_rows: Mapping[str, float] | None = None,
    partitions: Mapping[str, PartitionOf] | None = None,
) -> list[PlanFlag]:
    """Flags for ``plan``, worst first. ``table_rows`` maps table name -> row estimate
    (``pg_class.reltuples``) so plain (non-ANALYZE) plans can judge table size too;
    ``partitions`` (from :func:`partitions_sql`) says which relations are partitions, so a
    scan of every partition despite a condition on the key is flagged."""
    table_rows = table_rows or {}
    flags: list[PlanFlag] = []
    root = plan_root(plan)
    total_ms = _inclusive_ms(root)
    for _, node in walk(root):
        for check in (
            _seq_scan,
            _filter_waste,
            _misestimate,
            _disk_spill,
            _many_loops,
            _heap_fetches,
        ):
            flag = check(node, table_rows)
            if flag is not None:
                flags.append(flag)
        share = _time_share(node, total_ms)
        if share is not None:
            flags.append(share)
        if partitions:
            flags.extend(_not_pruned(node, partitions))
    order = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}
    return sorted(flags, key=lambda f: order[f.severity])


def qualified_name(node: Mapping[str, Any]) -> str | None:
    """The plan node's table as SQL names it: schema-qualified outside ``public``, each part
    quoted when it must be (``"Sales"."Orders"``), so suggestions and look-ups work."""
    relation = node.get("Relation Name")
    if not relation:
        return None
    schema = node.get("Schema")
    table = maybe_double_quote_name(str(relation))
    if schema and schema != "public":
        return f"{maybe_double_quote_name(str(schema))}.{table}"
    return str(table)


def _index_suggestion(
    table: str | None, condition: str | None
) -> tuple[tuple[str, ...], str | None]:
    if not table or not condition:
        return (), None
    equality, other = condition_columns(condition)
    columns = equality + other[: max(0, 3 - len(equality))]
    if not columns:
        return (), None
    quoted = ", ".join(maybe_double_quote_name(column) for column in columns)
    return columns, f"CREATE INDEX CONCURRENTLY ON {table} ({quoted});"


def _rows_scanned(node: Mapping[str, Any], table_rows: Mapping[str, float]) -> float | None:
    if "Actual Rows" in node:
        loops = node.get("Actual Loops", 1) or 1
        return float(node["Actual Rows"] * loops + node.get("Rows Removed by Filter", 0) * loops)
    table = qualified_name(node)
    return table_rows.get(table) if table else None


def _seq_scan(node: Mapping[str, Any], table_rows: Mapping[str, float]) -> PlanFlag | None:
    if node.get("Node Type") != "Seq Scan":
        return None
    scanned = _rows_scanned(node, table_rows)
    if scanned is None or scanned < LARGE_TABLE_ROWS:
        return None
    table = qualified_name(node)
    condition = node.get("Filter")
    columns, suggestion = _index_suggestion(table, condition)
    severity = Severity.CRITICAL if scanned >= 100 * LARGE_TABLE_ROWS else Severity.WARNING
    where = f" filtering on {', '.join(columns)}" if columns else ""
    return PlanFlag(
        "seq_scan",
        severity,
        f"sequential scan of {table} ({scanned:,.0f} rows){where}",
        "Seq Scan",
        table,
        columns,
        suggestion,
        {"rows_scanned": scanned},
    )


def _filter_waste(node: Mapping[str, Any], table_rows: Mapping[str, float]) -> PlanFlag | None:
    removed = node.get("Rows Removed by Filter")
    if not removed or "Actual Rows" not in node:
        return None
    loops = node.get("Actual Loops", 1) or 1
    kept = node["Actual Rows"] * loops
    removed_total = removed * loops
    share = removed_total / (removed_total + kept)
    if removed_total < 1000 or share < 0.5:
        return None
    severity = Severity.WARNING if share >= 0.9 else Severity.INFO
    table = qualified_name(node)
    columns, suggestion = _index_suggestion(table, node.get("Filter"))
    return PlanFlag(
        "rows_removed_by_filter",
        severity,
        f"{share:.1%} of the rows read from {table} were thrown away by the filter "
        f"({removed_total:,.0f} removed, {kept:,.0f} kept)",
        str(node.get("Node Type")),
        table,
        columns,
        suggestion,
        {"rows_removed": float(removed_total), "rows_kept": float(kept), "share": share},
    )


def _misestimate(node: Mapping[str, Any], table_rows: Mapping[str, float]) -> PlanFlag | None:
    if "Actual Rows" not in node:
        return None
    estimated, actual = float(node.get("Plan Rows", 0)), float(node["Actual Rows"])
    low, high = max(1.0, min(estimated, actual)), max(estimated, actual)
    if high < 100:
        return None
    factor = high / low
    if factor < 10:
        return None
    severity = (
        Severity.CRITICAL
        if factor >= 1000
        else Severity.WARNING
        if factor >= 100
        else Severity.INFO
    )
    table = qualified_name(node)
    direction = "under" if actual > estimated else "over"
    fix = f"ANALYZE {table};" if table else None
    return PlanFlag(
        "row_misestimate",
        severity,
        f"{node.get('Node Type')}{' on ' + table if table else ''}: the planner {direction}-"
        f"estimated rows {factor:,.0f}x (estimated {estimated:,.0f}, actual {actual:,.0f})",
        str(node.get("Node Type")),
        table,
        (),
        fix,
        {"estimated": estimated, "actual": actual, "factor": factor},
    )


def _disk_spill(node: Mapping[str, Any], table_rows: Mapping[str, float]) -> PlanFlag | None:
    kind = node.get("Node Type")
    if node.get("Sort Space Type") == "Disk":
        used = float(node.get("Sort Space Used", 0))
        return PlanFlag(
            "disk_spill",
            Severity.WARNING,
            f"sort spilled to disk ({used:,.0f} kB, {node.get('Sort Method')})",
            str(kind),
            None,
            (),
            "raise work_mem for this query, or index the ORDER BY columns",
            {"disk_kb": used},
        )
    batches = node.get("Hash Batches", 1) or 1
    if kind == "Hash" and batches > 1:
        return PlanFlag(
            "disk_spill",
            Severity.WARNING,
            f"hash table spilled to disk in {batches} batches",
            str(kind),
            None,
            (),
            "raise work_mem for this query",
            {"batches": float(batches)},
        )
    return None


def _many_loops(node: Mapping[str, Any], table_rows: Mapping[str, float]) -> PlanFlag | None:
    if node.get("Node Type") != "Nested Loop":
        return None
    children = node.get("Plans", [])
    if len(children) < 2:
        return None
    inner = children[1]
    loops = inner.get("Actual Loops", 0)
    if loops < MANY_LOOPS:
        return None
    table = qualified_name(inner)
    condition = inner.get("Index Cond") or inner.get("Filter") or inner.get("Join Filter")
    columns: tuple[str, ...] = ()
    suggestion = None
    if inner.get("Node Type") == "Seq Scan":
        columns, suggestion = _index_suggestion(table, condition)
    return PlanFlag(
        "nested_loop_many_loops",
        Severity.WARNING,
        f"nested loop ran its inner side {loops:,} times"
        f"{' (' + str(inner.get('Node Type')) + ' on ' + table + ')' if table else ''}",
        "Nested Loop",
        table,
        columns,
        suggestion,
        {"loops": float(loops)},
    )


def _heap_fetches(node: Mapping[str, Any], table_rows: Mapping[str, float]) -> PlanFlag | None:
    if node.get("Node Type") != "Index Only Scan" or not node.get("Heap Fetches"):
        return None
    fetches = float(node["Heap Fetches"])
    returned = float(node.get("Actual Rows", 0) * (node.get("Actual Loops", 1) or 1)) or 1.0
    if fetches / returned < 0.1:
        return None
    table = qualified_name(node)
    return PlanFlag(
        "heap_fetches",
        Severity.INFO,
        f"index-only scan on {table} still fetched {fetches:,.0f} heap pages "
        "(the visibility map is stale)",
        "Index Only Scan",
        table,
        (),
        f"VACUUM {table};" if table else None,
        {"heap_fetches": fetches},
    )


def _not_pruned(node: Mapping[str, Any], partitions: Mapping[str, PartitionOf]) -> list[PlanFlag]:
    return [
        PlanFlag(
            "partition_not_pruned",
            Severity.WARNING,
            f"every partition of {info.parent} is scanned ({scanned} of {info.partitions}): "
            f"the condition {condition} names the partition key {', '.join(keys)} in a form "
            "that cannot prune",
            str(node.get("Node Type")),
            info.parent,
            keys,
            pruning_fix(info, keys),
            {"partitions_scanned": float(scanned), "partitions": float(info.partitions)},
        )
        for info, scanned, keys, condition in unpruned_partitions(node, partitions, qualified_name)
    ]


def _inclusive_ms(node: Mapping[str, Any]) -> float | None:
    if "Actual Total Time" not in node:
        return None
    return float(node["Actual Total Time"]) * float(node.get("Actual Loops", 1) or 1)


def _exclusive_ms(node: Mapping[str, Any]) -> float | None:
    """The node's own time: its inclusive time minus its children's (as PEV2 computes it)."""
    own = _inclusive_ms(node)
    if own is None:
        return None
    for child in node.get("Plans", []):
        # InitPlans/SubPlans run under their parent's clock too; parallel workers' loops would
        # double count, so a child can never take more than the parent measured
        own -= _inclusive_ms(child) or 0.0
    return max(0.0, own)


def _time_share(node: Mapping[str, Any], total_ms: float | None) -> PlanFlag | None:
    own = _exclusive_ms(node)
    if own is None or not total_ms or own < MIN_NODE_MS:
        return None
    share = min(1.0, own / total_ms)
    grades = zip(
        TIME_SHARE_GRADES, (Severity.CRITICAL, Severity.WARNING, Severity.INFO), strict=True
    )
    severity = next((sev for limit, sev in grades if share > limit), None)
    if severity is None:
        return None
    table = qualified_name(node)
    kind = str(node.get("Node Type"))
    condition = node.get("Filter") if kind == "Seq Scan" else None
    columns, suggestion = _index_suggestion(table, condition)
    return PlanFlag(
        "node_time_share",
        severity,
        f"{kind}{' on ' + table if table else ''} took {share:.0%} of the execution time "
        f"({own:,.2f} of {total_ms:,.2f} ms)",
        kind,
        table,
        columns,
        suggestion,
        {"share": share, "node_ms": own, "total_ms": total_ms},
    )
