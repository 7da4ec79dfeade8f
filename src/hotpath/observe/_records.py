"""What observe records and reports: queries, call sites, findings, and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from .._frames import describe_site
from ..plans import PlanFlag

Mode = Literal["off", "log", "warn", "raise"]
MODES: tuple[Mode, ...] = ("off", "log", "warn", "raise")


class FindingKind(str, Enum):
    """The detectors; each can be set to a :data:`Mode` independently."""

    # the database, per query and per ORM relationship
    N_PLUS_ONE = "n_plus_one"
    DUPLICATE = "duplicate"
    SLOW_QUERY = "slow_query"
    UNBOUNDED_RESULT = "unbounded_result"
    UNUSED_EAGER_LOAD = "unused_eager_load"
    # a statement whose plan scans every partition although it filters on the partition key
    UNPRUNED_PARTITIONS = "unpruned_partitions"
    # the whole request
    SEQUENTIAL_IO = "sequential_io"
    N_PLUS_ONE_HTTP = "n_plus_one_http"
    BLOCKING_CALL = "blocking_call"
    NO_TIMEOUT = "no_timeout"
    SLOW_DEPENDENCY = "slow_dependency"
    CONNECTION_SETUP = "connection_setup"
    POOL_WAIT = "pool_wait"
    # per endpoint, over the run
    CACHE_MISS = "cache_miss"
    REPEATED_READ = "repeated_read"  # the same GET again: what a cache would have answered


class Layer(str, Enum):
    """Where a request's wall time goes. The layers of one request add up to its duration:
    overlapping work (concurrent awaits) is split evenly over the time it overlaps."""

    CONNECT = "connect"  # opening server connections on the request's path
    POOL_WAIT = "pool_wait"  # waiting for a pooled connection
    DB = "db"  # statement execution and fetch
    REDIS = "redis"  # redis-py commands (hotpath.cache's included)
    HTTP = "http"  # outbound HTTP (httpx, requests, aiohttp)
    BLOCKED = "blocked"  # the event loop was blocked (by this request or another)
    OTHER = "other"  # the rest: application CPU, serialization, the client


# Code run per query or per request binds the members it reads to module constants
# (``_DB = Layer.DB``): on Python 3.11 reading ``Layer.DB`` goes through EnumType's
# ``__getattr__`` hook, several times the cost of a plain class attribute.
LAYERS: tuple[Layer, ...] = tuple(Layer)


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
    # the request time the fix would save in this scope (an estimate; details say how)
    saving_ms: float = 0.0

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
        if self.saving_ms >= 0.05:
            lines.append(f"  would save: ~{self.saving_ms:.1f} ms")
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
            "saving_ms": round(self.saving_ms, 3),
        }


def _clip(sql: str, limit: int = 300) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
