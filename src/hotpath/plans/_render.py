"""Draw a plan as a rich tree, with actual figures when the plan was ANALYZEd."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.tree import Tree

from ._flags import PlanFlag, plan_root, qualified_name


def _label(node: dict[str, Any]) -> str:
    parts = [f"[bold]{node.get('Node Type')}[/]"]
    table = qualified_name(node)
    if table:
        parts.append(f"on {escape(table)}")
    if node.get("Index Name"):
        parts.append(f"using {node['Index Name']}")
    parts.append(
        f"[dim](cost {node.get('Total Cost', 0):,.1f}, rows {node.get('Plan Rows', 0):,})[/]"
    )
    if "Actual Rows" in node:
        parts.append(
            f"[cyan]actual {node.get('Actual Total Time', 0):,.2f} ms, "
            f"rows {node['Actual Rows']:,} x {node.get('Actual Loops', 1)} loops[/]"
        )
    for key in ("Index Cond", "Filter", "Hash Cond", "Join Filter"):
        if node.get(key):
            parts.append(f"\n  {key}: {node[key]}")
    return " ".join(parts)


def render_plan(plan: Any, flags: list[PlanFlag] | None = None) -> Tree:
    """A rich ``Tree`` of the plan; nodes with flags are marked."""
    flagged = {(f.node, f.table) for f in flags or []}

    def add(parent: Tree | None, node: dict[str, Any]) -> Tree:
        label = _label(node)
        if (node.get("Node Type"), node.get("Relation Name")) in flagged:
            label = "[red]![/] " + label
        branch = Tree(label) if parent is None else parent.add(label)
        for child in node.get("Plans", []):
            add(branch, child)
        return branch

    return add(None, plan_root(plan))
