"""The routing component's errors: each names the problem and the fix."""

from __future__ import annotations

from .._errors import HotpathError


class RoutingError(HotpathError):
    """Base class of hotpath.routing's errors."""


class RoutingConfigError(RoutingError, ValueError):
    """A ReplicaSet or routed sessionmaker was given an invalid option."""


class ReplicaWriteError(RoutingError):
    """A write reached a read-only replica connection (it was not sent anywhere else)."""


class NoHealthyNodeError(RoutingError):
    """No node may serve the read and ``on_all_unhealthy="error"`` forbids a fallback."""


class TokenError(RoutingError, ValueError):
    """A read-your-writes token is not a PostgreSQL WAL position (``'16/B374D848'``)."""
