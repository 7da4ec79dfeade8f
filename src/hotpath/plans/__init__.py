"""hotpath.plans: read PostgreSQL ``EXPLAIN (FORMAT JSON)`` plans and flag what is slow.

One implementation shared by ``hotpath.observe`` (plans of slow queries) and
``hotpath.doctor`` (``hotpath explain``): :func:`analyze_plan` returns graded
:class:`PlanFlag` findings, each naming the table/columns and, where one applies, the
index that would help; :func:`render_plan` draws the plan as a rich tree.
"""

from ._flags import PlanFlag, Severity, analyze_plan, plan_relations
from ._render import render_plan

__all__ = ["PlanFlag", "Severity", "analyze_plan", "plan_relations", "render_plan"]
