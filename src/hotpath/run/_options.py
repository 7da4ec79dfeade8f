"""The options of a run, validated once in the supervisor and handed to every worker process
as JSON in ``HOTPATH_RUN_OPTIONS``.

Stdlib only: the bootstrap imports this module in every Python process of the run, most of
which (a build tool, a subprocess of the app) never need more.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from ._errors import RunConfigError

if TYPE_CHECKING:
    from ..observe import ObserveSettings

ENV_DIR = "HOTPATH_RUN_DIR"
ENV_OPTIONS = "HOTPATH_RUN_OPTIONS"

ExplainMode = Literal["off", "plan", "analyze"]
EXPLAIN_MODES: tuple[ExplainMode, ...] = ("plan", "analyze", "off")
BUDGET = "budget"  # --fail-on budget: an endpoint whose p95 misses its budget


@dataclass(frozen=True)
class WorkerOptions:
    """What each worker process needs: the profiler's settings and the sampling rate."""

    explain: ExplainMode = "plan"
    capture_params: bool = False
    sample: float = 1.0
    budget_ms: float = 100.0

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> WorkerOptions:
        """The options the supervisor set; defaults when the variable is missing or bad (a
        worker never fails because of its environment)."""
        try:
            data = json.loads(os.environ.get(ENV_OPTIONS, "{}"))
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return cls()

    def observe_settings(self) -> ObserveSettings:
        """The settings of every worker's profiler, and of the supervisor's merge. Every
        detector logs (never warns or raises into the app: a test run with ``-W error``
        must pass as it does without hotpath)."""
        from ..observe import FindingKind, ObserveSettings  # noqa: PLC0415 - heavy; on use

        return ObserveSettings(
            explain=self.explain,
            capture_params=self.capture_params,
            budget_ms=self.budget_ms,
            modes=dict.fromkeys(FindingKind, "log"),
        )


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RunOptions:
    """Every option of ``hotpath run``."""

    command: tuple[str, ...]
    report_dir: str = "."
    fail_on: tuple[str, ...] = ()
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    db: str | None = None
    dashboard: Address | None = None
    metrics: Address | None = None
    # after a forwarded stop, how long the command may take to end before its group is killed
    stop_grace_s: float = 30.0


def parse_sample(value: float | None) -> float:
    if value is None:
        return 1.0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1):
        raise RunConfigError(
            f"--sample {value!r}: give the share of requests to record, above 0 and at most 1 "
            "(e.g. --sample 0.1)"
        )
    return float(value)


# a day: hotpath run never waits forever, and a longer grace would be a typo
_MAX_STOP_GRACE_S = 86400.0


def parse_stop_grace(value: float | None) -> float:
    if value is None:
        return RunOptions.stop_grace_s
    if not (isinstance(value, (int, float)) and 0 < value <= _MAX_STOP_GRACE_S):
        raise RunConfigError(
            f"--stop-grace {value!r}: give the seconds a stopped command may take to end "
            f"before it is killed, above 0 and at most {_MAX_STOP_GRACE_S:g} (e.g. --stop-grace 30)"
        )
    return float(value)


def parse_budget(value: float | None) -> float:
    if value is None:
        return 100.0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise RunConfigError(
            f"--budget-ms {value!r}: give each endpoint's p95 budget as a positive number of ms"
        )
    return float(value)


def parse_explain(value: str | None) -> ExplainMode:
    for mode in EXPLAIN_MODES:
        if value in (None, mode):
            return mode if value is not None else "plan"
    raise RunConfigError(f"--explain {value!r}: use one of {', '.join(EXPLAIN_MODES)}")


def parse_fail_on(value: str | None, kinds: tuple[str, ...]) -> tuple[str, ...]:
    """``--fail-on n_plus_one,budget``: finding kinds (``kinds``) and ``budget``."""
    if value is None:
        return ()
    chosen = tuple(part.strip() for part in value.split(",") if part.strip())
    known = (*kinds, BUDGET)
    for part in chosen:
        if part not in known:
            raise RunConfigError(f"--fail-on {part!r}: use one or more of {', '.join(known)}")
    if not chosen:
        raise RunConfigError(f"--fail-on {value!r}: use one or more of {', '.join(known)}")
    return chosen


def parse_address(option: str, value: str | None, *, host_allowed: bool) -> Address | None:
    """``PORT`` or (when ``host_allowed``) ``HOST:PORT``; loopback unless a host is given."""
    if value is None:
        return None
    host, _, port_text = value.rpartition(":")
    if host and not host_allowed:
        raise RunConfigError(f"{option} {value!r}: give a port (it listens on 127.0.0.1 only)")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        shape = "[HOST:]PORT" if host_allowed else "PORT"
        raise RunConfigError(f"{option} {value!r}: use {shape} with a port from 1 to 65535")
    return Address(host, port)


def parse_command(command: list[str] | None) -> tuple[str, ...]:
    if not command:
        raise RunConfigError(
            "give the command to run after --, e.g. hotpath run -- uvicorn app:app --workers 2"
        )
    return tuple(command)
