"""hotpath.doctor: diagnose a live PostgreSQL database and advise the indexes it needs.

- :func:`diagnose` runs the registered checks (read-only, under statement and lock
  timeouts) and returns a :class:`Report` of :class:`Finding` s, each with its evidence and
  fix; :data:`CHECKS` is the registry (id, title, what it needs).
- :func:`advise_indexes` proposes indexes for a workload, validated with HypoPG when the
  extension is installed.
- :func:`explain` plans one statement and flags what is slow (``hotpath.plans``).
- :func:`render_text` / :func:`render_html` / ``Report.to_json`` present a report.
"""

from ._advise import Candidate, IndexAdvice, IndexSuggestion, Rejection, advise_indexes
from ._context import Thresholds
from ._diagnose import diagnose
from ._errors import DoctorError
from ._explain import Explained, explain
from ._model import SCHEMA, Finding, QueryStat, Report, Skipped
from ._registry import CHECKS, Check
from ._render import render_advice, render_explained, render_html, render_text

__all__ = [
    "CHECKS",
    "SCHEMA",
    "Candidate",
    "Check",
    "DoctorError",
    "Explained",
    "Finding",
    "IndexAdvice",
    "IndexSuggestion",
    "QueryStat",
    "Rejection",
    "Report",
    "Skipped",
    "Thresholds",
    "advise_indexes",
    "diagnose",
    "explain",
    "render_advice",
    "render_explained",
    "render_html",
    "render_text",
]
