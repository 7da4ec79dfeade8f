"""What observe records and reports: queries, call sites, findings, and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from .._errors import HotpathError
from .._frames import describe_site
from ..plans import PlanFlag

Mode = Literal["off", "log", "warn", "raise"]
MODES: tuple[Mode, ...] = ("off", "log", "warn", "raise")


class FindingKind(str, Enum):
    """The detectors; each can be set to a :data:`Mode` independently."""

    N_PLUS_ONE = "n_plus_one"
    DUPLICATE = "duplicate"
    SLOW_QUERY = "slow_query"
    UNBOUNDED_RESULT = "unbounded_result"
    UNUSED_EAGER_LOAD = "unused_eager_load"


@dataclass(frozen=True)
class CallSite:
    """The first frame of application code that led to a query."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return describe_site(self.filename, self.lineno, self.function)


@dataclass
class QueryRecord:
    """One statement executed inside a scope."""

    sql: str
    fingerprint: str
    duration_ms: float
    rowcount: int
    server: str
    params: Any = None  # "<redacted>" unless the profiler was built with capture_params=True
    call_site: CallSite | None = None
    relationship_load: bool = False


@dataclass
class Finding:
    """A problem found in a scope: what, where, how often, and the ready-to-paste fix."""

    kind: FindingKind
    message: str
    call_site: CallSite | None
    count: int
    fix: str | None = None
    fingerprint: str | None = None
    sql: str | None = None
    plan_flags: list[PlanFlag] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """The finding as the lines a developer reads in a log or a failed test."""
        lines = [f"[{self.kind.value}] {self.message}"]
        if self.call_site:
            lines.append(f"  at {self.call_site}")
        if self.sql:
            lines.append(f"  sql: {_clip(self.sql)}")
        lines.extend(f"  plan: {flag.message}" for flag in self.plan_flags[:3])
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "message": self.message,
            "call_site": str(self.call_site) if self.call_site else None,
            "count": self.count,
            "fix": self.fix,
            "fingerprint": self.fingerprint,
            "sql": self.sql,
            "plan_flags": [
                {
                    "kind": f.kind,
                    "severity": f.severity.value,
                    "message": f.message,
                    "suggestion": f.suggestion,
                }
                for f in self.plan_flags
            ],
            "details": self.details,
        }


def _clip(sql: str, limit: int = 300) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class ObserveError(HotpathError):
    """A raise-mode detector fired; the message lists the findings with call sites and fixes."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        super().__init__("\n".join(f.describe() for f in findings))


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


class QueryBudgetError(HotpathError):
    """A block ran more queries than its budget (``assert_max_queries`` / ``max_queries``)."""


ERRORS: dict[FindingKind, type[ObserveError]] = {
    FindingKind.N_PLUS_ONE: NPlusOneError,
    FindingKind.DUPLICATE: DuplicateQueryError,
    FindingKind.SLOW_QUERY: SlowQueryError,
    FindingKind.UNBOUNDED_RESULT: UnboundedResultError,
    FindingKind.UNUSED_EAGER_LOAD: UnusedEagerLoadError,
}
