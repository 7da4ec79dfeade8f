"""hotpath.doctor: diagnose a live PostgreSQL database and advise the indexes it needs.

- :func:`diagnose` runs the registered checks (read-only, under statement and lock
  timeouts) and returns a :class:`Report` of :class:`Finding` s, each with its evidence and
  fix; :data:`CHECKS` is the registry (id, title, what it needs).
- :func:`advise_indexes` proposes indexes for a workload, validated with HypoPG when the
  extension is installed.
- :func:`explain` plans one statement and flags what is slow (``hotpath.plans``).
- :func:`render_text` / :func:`render_html` / ``Report.to_json`` present a report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._advise import Candidate, IndexAdvice, IndexSuggestion, Rejection, advise_indexes
    from ._context import Thresholds
    from ._diagnose import diagnose
    from ._errors import DoctorError
    from ._explain import Explained, explain
    from ._model import SCHEMA, Finding, FixKind, QueryStat, Report, Skipped
    from ._registry import CHECKS, Check
    from ._render import render_advice, render_explained, render_html, render_text

# imported on first use: the CLI imports this package to list its commands
__getattr__ = lazy_exports(
    __name__,
    {
        "Candidate": "._advise",
        "IndexAdvice": "._advise",
        "IndexSuggestion": "._advise",
        "Rejection": "._advise",
        "advise_indexes": "._advise",
        "Thresholds": "._context",
        "diagnose": "._diagnose",
        "DoctorError": "._errors",
        "Explained": "._explain",
        "explain": "._explain",
        "SCHEMA": "._model",
        "Finding": "._model",
        "FixKind": "._model",
        "QueryStat": "._model",
        "Report": "._model",
        "Skipped": "._model",
        "CHECKS": "._registry",
        "Check": "._registry",
        "render_advice": "._render",
        "render_explained": "._render",
        "render_html": "._render",
        "render_text": "._render",
    },
)

__all__ = [
    "CHECKS",
    "SCHEMA",
    "Candidate",
    "Check",
    "DoctorError",
    "Explained",
    "Finding",
    "FixKind",
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
