"""``Recorder``: a profiler's shared state (settings, plan store, roll-ups) and the one step
that concludes a scope: explain -> detect -> export -> roll up -> raise."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from ._detect import find_query_problems
from ._diagnose import find_request_problems
from ._errors import (
    DiagnosisError,
    DuplicateQueryError,
    HotpathWarning,
    NPlusOneError,
    ObserveError,
    SlowQueryError,
    UnboundedResultError,
    UnusedEagerLoadError,
)
from ._explain import explain_async, explain_sync
from ._loop import collect_blocks
from ._otel import export as export_to_otel
from ._plans import PlanStore
from ._records import Finding, FindingKind
from ._report import Rollups
from ._scope import Scope, current_scope
from ._settings import ObserveSettings
from ._timeline import breakdown

logger = logging.getLogger("hotpath.observe")

_ERRORS: dict[FindingKind, type[ObserveError]] = {
    FindingKind.N_PLUS_ONE: NPlusOneError,
    FindingKind.DUPLICATE: DuplicateQueryError,
    FindingKind.SLOW_QUERY: SlowQueryError,
    FindingKind.UNBOUNDED_RESULT: UnboundedResultError,
    FindingKind.UNUSED_EAGER_LOAD: UnusedEagerLoadError,
}


class Recorder:
    def __init__(self, settings: ObserveSettings) -> None:
        self.settings = settings
        self.plans = PlanStore(settings)
        self.rollups = Rollups(settings)

    def conclude(self, scope: Scope, *, raising: bool) -> None:
        if scope.pending_explains:
            with _outside_scopes():
                explain_sync(self.settings, self.plans, scope.pending_explains)
        self._judge(scope, raising)

    async def conclude_async(self, scope: Scope, *, raising: bool) -> None:
        if scope.pending_explains:
            with _outside_scopes():
                await explain_async(self.settings, self.plans, scope.pending_explains)
        self._judge(scope, raising)

    def _judge(self, scope: Scope, raising: bool) -> None:
        if scope.is_async:
            collect_blocks(scope)
        scope.breakdown_ms = breakdown(scope.started, scope.ended, scope.timeline.span_data)
        scope.findings = find_query_problems(scope, self.plans) + find_request_problems(scope)
        export_to_otel(scope)
        self.rollups.add(scope)
        to_raise: list[Finding] = []
        for finding in scope.findings:
            mode = scope.modes[finding.kind]
            if mode == "log":
                if logger.isEnabledFor(logging.WARNING):  # describe() is not free
                    logger.warning("hotpath %s: %s", scope.name, finding.describe())
            elif mode == "warn":
                warnings.warn(f"{scope.name}: {finding.describe()}", HotpathWarning, stacklevel=4)
            elif mode == "raise":
                to_raise.append(finding)
        if to_raise and raising:
            raise _ERRORS.get(to_raise[0].kind, DiagnosisError).of(to_raise)


@contextlib.contextmanager
def _outside_scopes() -> Iterator[None]:
    """hotpath's own EXPLAIN queries belong to no scope (an enclosing one included)."""
    token = current_scope.set(None)
    try:
        yield
    finally:
        current_scope.reset(token)
