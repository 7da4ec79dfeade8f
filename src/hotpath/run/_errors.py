"""hotpath run's own errors: each names the bad value and what to give instead."""

from __future__ import annotations

from .._errors import HotpathError


class RunError(HotpathError):
    """Base class of ``hotpath run``'s errors."""


class RunConfigError(RunError):
    """An option of ``hotpath run`` that cannot be used (the CLI prints it on one line)."""
