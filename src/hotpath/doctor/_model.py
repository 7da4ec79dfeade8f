"""The report's data model and its stable JSON form (``schema: hotpath.doctor/1``)."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import orjson

from ..plans import Severity

SCHEMA = "hotpath.doctor/1"
_RANK = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}

Evidence = dict[str, "float | int | str | None"]


class FixKind(str, Enum):
    """What a finding's ``fix`` is."""

    SQL = "sql"  # statements to run
    CONFIG = "config"  # a server setting to change
    ACTION = "action"  # something for a person to do or check


@dataclass(frozen=True)
class Finding:
    """One problem: which check, how bad, on what (``target``: a table, index, setting,
    backend...), the numbers, and the fix."""

    check: str
    severity: Severity
    target: str
    message: str
    evidence: Evidence = field(default_factory=dict)
    fix: str | None = None
    fix_kind: FixKind = FixKind.SQL
    gain: str | None = None  # the estimated gain, in words with its figure, when one is estimable

    @property
    def object(self) -> str:
        """Deprecated name of :attr:`target` (it shadowed the builtin)."""
        warnings.warn(
            "Finding.object is deprecated: use Finding.target", DeprecationWarning, stacklevel=2
        )
        return self.target

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.value
        data["fix_kind"] = self.fix_kind.value
        # The JSON schema (hotpath.doctor/1) keeps its key: readers of saved reports and the
        # dashboard look for "object".
        data["object"] = data.pop("target")
        return data


@dataclass(frozen=True)
class Skipped:
    """A check that could not run, and exactly what would unlock it."""

    check: str
    reason: str
    grant: str | None = None


@dataclass(frozen=True)
class QueryStat:
    """One pg_stat_statements entry (normalised text: literals are already ``$n``)."""

    queryid: int
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    share: float  # of the database's total execution time


@dataclass
class Report:
    """What ``diagnose`` found: findings worst first, skipped checks, and the top queries."""

    database: str
    server_version: int
    user: str
    checks_run: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    top_queries: list[QueryStat] = field(default_factory=list)
    stats_since: str | None = None
    duration_s: float = 0.0

    def sort(self) -> None:
        self.findings.sort(key=lambda f: (_RANK[f.severity], f.check, f.target))

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity is severity)

    def worst(self) -> Severity | None:
        return self.findings[0].severity if self.findings else None

    def fails(self, fail_on: str | Severity | None) -> bool:
        """Whether a finding reaches ``fail_on`` ("warning" or "critical")."""
        if fail_on is None:
            return False
        limit = _RANK[Severity(fail_on)]
        return any(_RANK[f.severity] <= limit for f in self.findings)

    def by_check(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "database": self.database,
            "server_version": self.server_version,
            "user": self.user,
            "duration_s": round(self.duration_s, 3),
            "stats_since": self.stats_since,
            "checks_run": list(self.checks_run),
            "summary": {s.value: self.count(s) for s in Severity},
            "findings": [f.to_dict() for f in self.findings],
            "skipped": [asdict(s) for s in self.skipped],
            "top_queries": [asdict(q) for q in self.top_queries],
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2).decode()
