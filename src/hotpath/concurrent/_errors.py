"""Errors of hotpath.concurrent."""

from __future__ import annotations

from .._errors import HotpathError


class ConcurrentError(HotpathError):
    """Base class of this package's errors."""


class DeadlineExceeded(ConcurrentError, TimeoutError):
    """The work did not finish within its deadline (and was cancelled)."""


class CircuitOpenError(ConcurrentError):
    """The circuit is open: the call was refused without reaching the dependency."""


class ConcurrencyConfigError(ConcurrentError, ValueError):
    """An option has a value it cannot take."""
