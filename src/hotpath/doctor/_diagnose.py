"""``diagnose``: run the registered checks on one database and gather a :class:`Report`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import psycopg

from . import (  # noqa: F401 - importing the check modules registers their checks
    _checks_activity,
    _checks_health,
    _checks_indexes,
    _checks_maintenance,
    _checks_queries,
    _checks_replication,
    _checks_storage,
)
from ._context import Context, Thresholds
from ._errors import DoctorError
from ._model import QueryStat, Report, Skipped
from ._registry import CHECKS, Check
from ._session import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_STATEMENT_TIMEOUT_MS, Session

Progress = Callable[[Check, int, int], None]


def select_checks(only: Iterable[str] | str | None) -> list[Check]:
    """The checks named in ``only`` (ids, or a comma-separated string), or all of them."""
    if only is None:
        return list(CHECKS.values())
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise DoctorError(f"unknown check {', '.join(unknown)}: choose from {', '.join(CHECKS)}")
    return [CHECKS[n] for n in names]


def diagnose(
    url: str,
    only: Iterable[str] | str | None = None,
    *,
    thresholds: Thresholds | None = None,
    show_literals: bool = False,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    progress: Progress | None = None,
) -> Report:
    """Diagnose the database at ``url`` (read-only; every statement under the timeouts).

    Checks the user lacks the privileges for are skipped, each with the GRANT that would
    unlock it; a check that times out or fails is skipped with the reason, never fatal.
    """
    checks = select_checks(only)
    began = time.perf_counter()
    with Session(
        url, statement_timeout_ms=statement_timeout_ms, lock_timeout_ms=lock_timeout_ms
    ) as session:
        ctx = Context(session, thresholds or Thresholds(), show_literals, url)
        caps = session.capabilities
        report = Report(caps.database, caps.server_version, caps.user)
        for number, item in enumerate(checks, 1):
            if progress is not None:
                progress(item, number, len(checks))
            _run(ctx, item, report)
        try:
            report.stats_since = ctx.stats_since
            if "pg_stat_statements" in caps.extensions:
                report.top_queries = _top(ctx)
        except psycopg.Error:
            pass  # the summary figures are extras: the findings stand without them
    report.sort()
    report.duration_s = time.perf_counter() - began
    return report


def _run(ctx: Context, item: Check, report: Report) -> None:
    for need in item.needs:
        missing = ctx.missing(need)
        if missing is not None:
            reason, grant = missing
            report.skipped.append(Skipped(item.id, reason, grant or None))
            return
    try:
        findings = item.function(ctx)
    except psycopg.errors.InsufficientPrivilege as exc:
        report.skipped.append(
            Skipped(
                item.id,
                f"permission denied: {_first_line(exc)}",
                f"GRANT pg_monitor TO {ctx.caps.user};",
            )
        )
        return
    except psycopg.errors.QueryCanceled:
        report.skipped.append(
            Skipped(
                item.id,
                "timed out (statement_timeout): the catalog is large or locked; "
                "rerun with a longer --statement-timeout",
            )
        )
        return
    except psycopg.errors.LockNotAvailable:
        report.skipped.append(
            Skipped(item.id, "lock_timeout: DDL holds a lock on the catalog; rerun later")
        )
        return
    except psycopg.Error as exc:
        report.skipped.append(Skipped(item.id, f"failed: {_first_line(exc)}"))
        return
    report.checks_run.append(item.id)
    report.findings.extend(findings)


def _top(ctx: Context) -> list[QueryStat]:
    rows = ctx.statements
    total = sum(float(r["total_ms"]) for r in rows) or 1.0
    return [
        QueryStat(
            int(r["queryid"]),
            " ".join(str(r["query"]).split()),
            int(r["calls"]),
            round(float(r["total_ms"]), 3),
            round(float(r["total_ms"]) / max(1, int(r["calls"])), 3),
            int(r["rows"]),
            round(float(r["total_ms"]) / total, 4),
        )
        for r in rows[: ctx.thresholds.top_queries]
    ]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
