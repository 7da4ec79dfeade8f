"""Findings as OpenTelemetry span events, when ``opentelemetry`` is installed.

Each finding becomes a ``hotpath.finding`` event on the span current when the scope closes
(e.g. the request's server span), with ``code.*`` attributes for the call site; the scope's
query count, database time and time per layer (``hotpath.layer.<layer>_ms``) become span
attributes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._scope import Scope

try:
    from opentelemetry import trace
except ImportError:  # optional: nothing to export to
    trace = None  # type: ignore[assignment]


def export(scope: Scope) -> None:
    if trace is None:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("hotpath.db.queries", scope.query_count)
    span.set_attribute("hotpath.db.time_ms", round(scope.db_time_ms, 3))
    for layer, ms in scope.breakdown_ms.items():
        span.set_attribute(f"hotpath.layer.{layer.value}_ms", round(ms, 3))
    for finding in scope.findings:
        attributes: dict[str, Any] = {
            "hotpath.kind": finding.kind.value,
            "hotpath.message": finding.message,
            "hotpath.count": finding.count,
        }
        if finding.fix:
            attributes["hotpath.fix"] = finding.fix
        if finding.saving_ms:
            attributes["hotpath.saving_ms"] = round(finding.saving_ms, 3)
        if finding.call_site:
            attributes["code.filepath"] = finding.call_site.filename
            attributes["code.lineno"] = finding.call_site.lineno
            attributes["code.function"] = finding.call_site.function
        span.add_event("hotpath.finding", attributes)
