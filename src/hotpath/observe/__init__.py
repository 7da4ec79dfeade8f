"""hotpath.observe: measure first.

Per request, job or test (a *scope*), observe records every query through SQLAlchemy's
public events (sync and async, no monkeypatching), finds N+1 patterns (ORM lazy loads and
repeated statement shapes), duplicate, slow (with EXPLAIN and plan analysis) and unbounded
queries, names the application line that caused each and prints the ready-to-paste fix;
and it rolls scopes up into p50/p95/p99 per endpoint. Middleware for ASGI (FastAPI,
Starlette) and WSGI (Flask), and pytest integration through ``hotpath.testing``.
"""

from ._budget import assert_max_queries
from ._middleware import ASGIMiddleware, WSGIMiddleware
from ._profiler import HotpathWarning, ObserveConfigError, Profiler
from ._records import (
    CallSite,
    DuplicateQueryError,
    Finding,
    FindingKind,
    Mode,
    NPlusOneError,
    ObserveError,
    QueryBudgetError,
    QueryRecord,
    SlowQueryError,
    UnboundedResultError,
    UnusedEagerLoadError,
)
from ._report import FunctionStats, Report, ScopeStats
from ._scope import Scope

__all__ = [
    "ASGIMiddleware",
    "CallSite",
    "DuplicateQueryError",
    "Finding",
    "FindingKind",
    "FunctionStats",
    "HotpathWarning",
    "Mode",
    "NPlusOneError",
    "ObserveConfigError",
    "ObserveError",
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
]
