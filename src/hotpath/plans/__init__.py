"""hotpath.plans: read PostgreSQL ``EXPLAIN (FORMAT JSON)`` plans and flag what is slow.

One implementation shared by ``hotpath.observe`` (plans of slow queries) and
``hotpath.doctor`` (``hotpath explain``): :func:`analyze_plan` returns graded
:class:`PlanFlag` findings, each naming the table/columns and, where one applies, the
index that would help; :func:`render_plan` draws the plan as a rich tree.
:func:`statement_safety` decides whether a statement may be EXPLAINed, or EXPLAIN ANALYZEd
(with :func:`volatile_calls_sql` asked on the server): both packages obey the same rules.
:func:`redact_literals` is how both show SQL: literals replaced.
"""

from ._flags import PlanFlag, Severity, analyze_plan, plan_relations, plan_root
from ._pruning import PartitionOf, partitions_from_rows, partitions_sql
from ._redact import redact_literals
from ._render import render_plan
from ._safety import (
    NotAnalyzed,
    StatementSafety,
    analyze_refused_on_server,
    safety_of_tree,
    statement_safety,
    volatile_calls_sql,
)

__all__ = [
    "NotAnalyzed",
    "PartitionOf",
    "PlanFlag",
    "Severity",
    "StatementSafety",
    "analyze_plan",
    "analyze_refused_on_server",
    "partitions_from_rows",
    "partitions_sql",
    "plan_relations",
    "plan_root",
    "redact_literals",
    "render_plan",
    "safety_of_tree",
    "statement_safety",
    "volatile_calls_sql",
]
