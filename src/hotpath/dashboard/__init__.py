"""hotpath.dashboard: a live page of what hotpath sees in a running app.

:func:`hotpath_dashboard` returns a small ASGI app (mount it, or let ``hotpath run
--dashboard`` serve it) with one page that polls the RUN STATE every 2 seconds and shows,
PgHero-style: the endpoints ranked by total time with p50/p95/p99 and their time by layer,
p95 over time, the ranked fixes with their call sites and ready-to-paste changes, N+1 and
slow-query details with their (redacted) SQL and plan flags, the pools, caches, replicas,
circuit breakers, doctor's findings, and what could not be instrumented. Charts are drawn
client-side with uPlot, vendored in the package: the page works offline.

Only loopback clients are served unless a token is configured; with a token every data
request must carry it (``Authorization: Bearer <token>`` or ``?token=<token>``).
"""

from ._app import DashboardApp, hotpath_dashboard
from ._errors import DashboardConfigError, DashboardError
from ._history import History

__all__ = ["DashboardApp", "DashboardConfigError", "DashboardError", "History", "hotpath_dashboard"]
