"""hotpath.routing: reads to streaming replicas, writes to the primary; lag-aware, read-your-writes.

- :class:`ReplicaSet` / :class:`AsyncReplicaSet`: a primary and replicas, probed in the
  background (role, replayed WAL, lag), ejected and readmitted with hysteresis, balanced by
  ``least_in_flight`` / ``round_robin`` / ``random``; follows a promotion.
- :func:`routed_sessionmaker` / :func:`async_routed_sessionmaker`: ORM sessions whose reads
  go to a replica that has replayed this context's last commit (WAL position taken after
  COMMIT, checked per replica), ``"eventual"`` or ``"strong"``.
- :func:`current_token` / :func:`use_token` and the ASGI/WSGI middleware carry the token
  across requests; :class:`RoutingCollector` exports Prometheus metrics.
"""

from ._async_replica_set import AsyncReplicaSet
from ._config import AllUnhealthy, Consistency, Policy, RoutingConfig, RoutingOptions, TokenMode
from ._errors import (
    NoHealthyNodeError,
    ReplicaWriteError,
    RoutingConfigError,
    RoutingError,
    TokenError,
)
from ._lsn import format_lsn, parse_lsn
from ._metrics import RoutingCollector
from ._middleware import ASGITokenMiddleware, WSGITokenMiddleware
from ._replica_set import ReplicaSet
from ._router import NodeReport
from ._session import (
    RetryingRoutingSession,
    RoutingSession,
    async_routed_sessionmaker,
    routed_sessionmaker,
)
from ._tokens import TokenBox, current_token, use_token

__all__ = [
    "ASGITokenMiddleware",
    "AllUnhealthy",
    "AsyncReplicaSet",
    "Consistency",
    "NoHealthyNodeError",
    "NodeReport",
    "Policy",
    "ReplicaSet",
    "ReplicaWriteError",
    "RetryingRoutingSession",
    "RoutingCollector",
    "RoutingConfig",
    "RoutingConfigError",
    "RoutingError",
    "RoutingOptions",
    "RoutingSession",
    "TokenBox",
    "TokenError",
    "TokenMode",
    "WSGITokenMiddleware",
    "async_routed_sessionmaker",
    "current_token",
    "format_lsn",
    "parse_lsn",
    "routed_sessionmaker",
    "use_token",
]
