"""observe's errors and warning category: raised findings, budgets, bad options."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import HotpathError

if TYPE_CHECKING:
    from ._records import Finding


class ObserveError(HotpathError):
    """Base of observe's errors. Raised for findings (raise mode), ``findings`` lists them
    with their call sites and fixes."""

    def __init__(self, message: str, findings: list[Finding] | None = None) -> None:
        self.findings: list[Finding] = findings or []
        super().__init__(message)

    @classmethod
    def of(cls, findings: list[Finding]) -> ObserveError:
        return cls("\n".join(f.describe() for f in findings), findings)


class NPlusOneError(ObserveError):
    """An N+1 query pattern was found in a scope whose n_plus_one mode is "raise"."""


class DuplicateQueryError(ObserveError):
    """The same statement with the same parameters ran more than once."""


class SlowQueryError(ObserveError):
    """A query took longer than ``slow_query_ms``."""


class UnboundedResultError(ObserveError):
    """A query without LIMIT returned more than ``max_rows`` rows."""


class UnusedEagerLoadError(ObserveError):
    """A relationship was eager-loaded and never read in the scope."""


class DiagnosisError(ObserveError):
    """A finding of the request-wide detectors (sequential I/O, blocking calls, N+1 HTTP,
    connection set-up, pool wait, slow dependencies...) in a scope whose mode is "raise"."""


class QueryBudgetError(ObserveError):
    """A block ran more queries than its budget (``assert_max_queries`` / ``max_queries``)."""


class ObserveConfigError(ObserveError, ValueError):
    """An observe option has a value it cannot take; the message names it and the fix."""


class HotpathWarning(UserWarning):
    """Category of the warnings observe emits in "warn" mode."""
