"""hotpath.observe: measure first, then name the one fix that matters most.

Per request, job or test (a *scope*), observe records every query through SQLAlchemy's
public events (sync and async), finds N+1 patterns (ORM lazy loads and repeated statement
shapes), duplicate, slow (with EXPLAIN and plan analysis) and unbounded queries; and it
measures where the request's whole wall time goes (:class:`Layer`: connection set-up, pool
wait, database, Redis, outbound HTTP, a blocked event loop, the rest) and finds sequential
I/O, N+1 HTTP calls, blocking calls on the event loop, calls without timeouts, slow
dependencies, connection set-up and pool waits. Every finding names the application line
and the ready-to-paste fix with the time it would save; ``Profiler.report()`` rolls scopes
up per endpoint (p50/p95/p99, per layer too), names each endpoint's bottleneck and ranks
the fixes for the whole app. Middleware for ASGI (FastAPI, Starlette) and WSGI (Flask),
and pytest integration through ``hotpath.testing``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._budget import assert_max_queries
    from ._errors import (
        DiagnosisError,
        DuplicateQueryError,
        HotpathWarning,
        NPlusOneError,
        ObserveConfigError,
        ObserveError,
        QueryBudgetError,
        SlowQueryError,
        UnboundedResultError,
        UnusedEagerLoadError,
    )
    from ._hooks import url_template
    from ._middleware import ASGIMiddleware, WSGIMiddleware
    from ._profiler import Profiler
    from ._records import CallSite, Finding, FindingKind, Layer, Mode, QueryRecord
    from ._report import Bottleneck, Fix, FunctionStats, Report, ScopeStats
    from ._scope import Scope
    from ._settings import ObserveSettings
    from ._snapshot import merge as merge_reports

# Imported on first use: `hotpath run`'s supervisor, the CLI and the run agent need the
# report, the settings and the finding kinds, not SQLAlchemy and the hooks (0.7 s at start).
__getattr__ = lazy_exports(
    __name__,
    {
        "assert_max_queries": "._budget",
        "DiagnosisError": "._errors",
        "DuplicateQueryError": "._errors",
        "HotpathWarning": "._errors",
        "NPlusOneError": "._errors",
        "ObserveConfigError": "._errors",
        "ObserveError": "._errors",
        "QueryBudgetError": "._errors",
        "SlowQueryError": "._errors",
        "UnboundedResultError": "._errors",
        "UnusedEagerLoadError": "._errors",
        "url_template": "._hooks",
        "ASGIMiddleware": "._middleware",
        "WSGIMiddleware": "._middleware",
        "Profiler": "._profiler",
        "CallSite": "._records",
        "Finding": "._records",
        "FindingKind": "._records",
        "Layer": "._records",
        "Mode": "._records",
        "QueryRecord": "._records",
        "Bottleneck": "._report",
        "Fix": "._report",
        "FunctionStats": "._report",
        "Report": "._report",
        "ScopeStats": "._report",
        "Scope": "._scope",
        "ObserveSettings": "._settings",
        "merge_reports": "._snapshot:merge",
    },
)


__all__ = [
    "ASGIMiddleware",
    "Bottleneck",
    "CallSite",
    "DiagnosisError",
    "DuplicateQueryError",
    "Finding",
    "FindingKind",
    "Fix",
    "FunctionStats",
    "HotpathWarning",
    "Layer",
    "Mode",
    "NPlusOneError",
    "ObserveConfigError",
    "ObserveError",
    "ObserveSettings",
    "Profiler",
    "QueryBudgetError",
    "QueryRecord",
    "Report",
    "Scope",
    "ScopeStats",
    "SlowQueryError",
    "UnboundedResultError",
    "UnusedEagerLoadError",
    "WSGIMiddleware",
    "assert_max_queries",
    "merge_reports",
    "url_template",
]
