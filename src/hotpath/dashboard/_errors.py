"""Errors of hotpath.dashboard."""

from __future__ import annotations

from .._errors import HotpathError


class DashboardError(HotpathError):
    """Base class of this package's errors."""


class DashboardConfigError(DashboardError, ValueError):
    """An option of :func:`hotpath_dashboard` has a value it cannot take."""
