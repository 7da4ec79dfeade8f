"""What a profiler has rolled up, as plain data that another process can merge: how
``hotpath run`` makes one report of many workers.

A snapshot is cumulative (everything since the profiler started or was reset) and JSON-able:
histograms travel HdrHistogram-encoded, findings as their fields. Merging the latest
snapshot of every worker gives the report of the whole run.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from ..plans import PlanFlag, Severity
from ._records import CallSite, Finding, FindingKind, Layer
from ._report import (
    CacheUse,
    FixTotal,
    Report,
    Rollup,
    Rollups,
    Timing,
    build_report,
    flag_dict,
    fuller_example,
)
from ._settings import ObserveSettings

VERSION = 1


def _timing_state(timing: Timing) -> dict[str, Any]:
    return {
        "hist": timing.histogram.encode().decode("ascii"),
        "count": timing.count,
        "zeros": timing.zeros,
        "total_ms": timing.total_ms,
    }


def _merge_timing(into: Timing, state: dict[str, Any]) -> None:
    with into._lock:
        into.histogram.decode_and_add(state["hist"].encode("ascii"))
        into.add_counts(state["count"], state["zeros"], state["total_ms"])


def _site_state(site: CallSite | None) -> dict[str, Any] | None:
    return None if site is None else asdict(site)


def _site(state: dict[str, Any] | None) -> CallSite | None:
    return None if state is None else CallSite(**state)


def _finding_state(finding: Finding) -> dict[str, Any]:
    return {
        "kind": finding.kind.value,
        "message": finding.message,
        "call_site": _site_state(finding.call_site),
        "count": finding.count,
        "fix": finding.fix,
        "fingerprint": finding.fingerprint,
        "sql": finding.sql,
        "plan_flags": [flag_dict(flag) for flag in finding.plan_flags],
        "details": finding.details,
        "saving_ms": finding.saving_ms,
    }


def _finding(state: dict[str, Any]) -> Finding:
    flags = [
        PlanFlag(
            **{
                **flag,
                "severity": Severity(flag["severity"]),
                "columns": tuple(flag.get("columns", ())),
            }
        )
        for flag in state["plan_flags"]
    ]
    return Finding(
        FindingKind(state["kind"]),
        state["message"],
        _site(state["call_site"]),
        state["count"],
        fix=state["fix"],
        fingerprint=state["fingerprint"],
        sql=state["sql"],
        plan_flags=flags,
        details=state["details"],
        saving_ms=state["saving_ms"],
    )


def _rollup_state(rollup: Rollup) -> dict[str, Any]:
    with rollup._lock:
        return {
            "latency": _timing_state(rollup.latency),
            "db_ms": _timing_state(rollup.db_ms),
            "queries": rollup.queries.encode().decode("ascii"),
            "max_queries": rollup.max_queries,
            "layers": {layer.value: _timing_state(t) for layer, t in rollup.layers.items()},
            "fixes": [
                {
                    "key": [key[0], _site_state(key[1]), key[2]],
                    "scopes": total.scopes,
                    "saving_ms": total.saving_ms,
                    "example": _finding_state(total.example),
                }
                for key, total in rollup.fixes.items()
            ],
            "caches": {
                name: {**asdict(use), "site": _site_state(use.site)}
                for name, use in rollup.caches.items()
            },
            # the counts only: a read repeated in another process than the one that first saw
            # it is not counted (the keys seen would make every snapshot as large as its bound)
            "reads": {
                "requests": rollup.reads.requests,
                "repeats": rollup.reads.repeats,
                "repeat_ms": rollup.reads.repeat_ms,
            },
        }


def _merge_rollup(into: Rollup, state: dict[str, Any]) -> None:
    with into._lock:  # the lock that guards a roll-up's timings (Rollup.add)
        _merge_timing(into.latency, state["latency"])
        _merge_timing(into.db_ms, state["db_ms"])
        for name, layer_state in state["layers"].items():
            _merge_timing(into.layers[Layer(name)], layer_state)
        into.queries.decode_and_add(state["queries"].encode("ascii"))
        into.merge_max_queries(state["max_queries"])
        for fix in state["fixes"]:
            key = (fix["key"][0], _site(fix["key"][1]), fix["key"][2])
            example = _finding(fix["example"])
            total = into.fixes.get(key)
            if total is None:
                total = into.fixes[key] = FixTotal(example)
            elif fuller_example(example, total.example):
                total.example = example
            total.scopes += fix["scopes"]
            total.saving_ms += fix["saving_ms"]
        reads = state.get("reads") or {}  # absent from an older worker's snapshot
        into.reads.requests += int(reads.get("requests", 0))
        into.reads.repeats += int(reads.get("repeats", 0))
        into.reads.repeat_ms += float(reads.get("repeat_ms", 0.0))
        for name, use_state in state["caches"].items():
            use = into.caches.setdefault(name, CacheUse())
            for field in fields(CacheUse):
                if field.name == "site":
                    use.site = use.site or _site(use_state["site"])
                else:
                    setattr(use, field.name, getattr(use, field.name) + use_state[field.name])


def snapshot(rollups: Rollups) -> dict[str, Any]:
    """Everything ``rollups`` holds, as JSON-able data."""
    with rollups._lock:
        by_name, timings = dict(rollups.by_name), dict(rollups.timings)
        held_s, span_s = rollups.loop.held_s, rollups.loop.span_s
    return {
        "version": VERSION,
        "names": {name: _rollup_state(rollup) for name, rollup in by_name.items()},
        "timings": {name: _timing_state(timing) for name, timing in timings.items()},
        # this process's loop: its busy time and span (its clock is its own: never mixed)
        "loop": {"busy_s": held_s, "span_s": span_s},
    }


def merge(snapshots: list[dict[str, Any]], settings: ObserveSettings) -> Report:
    """One report of several processes' snapshots (each cumulative: give the latest of each)."""
    rollups = Rollups(settings)
    for state in snapshots:
        if state.get("version") != VERSION:
            continue  # a worker of another hotpath version: its figures cannot be trusted here
        for name, rollup_state in state["names"].items():
            _merge_rollup(rollups.rollup(name), rollup_state)
        for name, timing_state in state["timings"].items():
            _merge_timing(rollups.timing(name), timing_state)
        loop = state.get("loop") or {}  # absent from an older worker's snapshot
        rollups.loop.merged_held_s += float(loop.get("busy_s", 0.0))
        rollups.loop.merged_span_s += float(loop.get("span_s", 0.0))
    return build_report(rollups.by_name, rollups.timings, settings, rollups.loop.share)
