"""From observe's diagnosis to one shop fix: what each shop fix removes (:data:`REMEDIES`, an
explicit table from finding kinds and their evidence to fixes), and the choice of the fix that
saves most over the whole run.

The diagnosis (``Report.to_dict()``) ranks its findings across endpoints by the time each would
save over the run (count x time per request). One shop fix removes several of them (``eager``
every N+1 of the shop, ``pool`` every connection opened per request), so the fixes are ranked
by the savings of all the findings each removes, summed over the findings and the endpoints,
and the first of that ranking is chosen, never a per-endpoint bottleneck first. A finding two
fixes remove (a slow OFFSET page: an index, or keyset pages) counts for each: the fixes are
compared one at a time, each alone from the same state.

Which fix removes a finding is decided by its evidence, not its kind alone:

- a blocking call that waits (a sync SDK call, ``cpu_bound`` false) in the profile is the risk
  check ``offload`` moves to a thread; CPU on the loop serializing the category export is what
  ``lean`` cuts; a block seen only in the shop's serving code (uvicorn's frame, the ASGI
  wrapper of every endpoint) ran in a library, on no line a shop fix changes;
- a slow query that is an OFFSET page is removed by ``keyset`` pages, and a slow read whose
  plan asks for an index by the advisor's ``indexes`` (a write is not sped up by an index);
  a loop of queries (N+1) by ``eager`` loads, which save every run but one, and, when its
  statement's plan asks for an index, by the ``indexes`` too, which save every run's scan.
  While such scans run, a cheap lookup (its plan costs a lookup's work) that ran slow waited
  for the server they kept busy: the ``indexes`` save its time too. Two findings about one
  statement (its slow runs, the loop that runs it) overlap: a fix is credited the larger;
- GETs that ask what an earlier request asked (``repeated_read``) are what the ``cache``
  answers: it saves their database time, the endpoint's database time times the share that
  repeats (the hit ratio).

What a fix saves is observe's estimate of the time it removes from the requests. A fix that
frees the event loop (``offload``, ``lean``) is credited the wait of the requests the block
held up, as observe counts it, and no more: under a closed load (every user waits for its
answer before asking again) that wait already holds the queueing a busy loop adds. Scaling
it by ``1 / (1 - busy)`` (a single server's open-queue growth with observe's ``loop_busy``)
counted that queueing twice: on the shop with indexes in and its loop nearly always busy, it
credited moving the risk check off the loop ten times its wait and ranked it above eager
loads, which gained far more (docs/benchmarks.md, shop).

``replicas`` have no finding of their own (on one machine they move reads, they do not make
them cheaper): an endpoint whose bottleneck is still its queries, once no finding maps to a
fix left, takes the advisor's indexes, then the cache, then replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .shop.fixes import FIX_DESCRIPTIONS

FixName = Literal[
    "pool", "eager", "indexes", "cache", "replicas", "fanout", "keyset", "offload", "lean"
]
Finding = Mapping[str, Any]  # one of the report's ranked fixes ("top_fixes")

EXPORT = "GET /categories/{category_id}/export"
PROFILE = "GET /users/{user_id}/profile"
# The shop's serving code: its ASGI wrapper (every response is serialized under it) and the
# uvicorn.run frame. A block the watchdog saw only there ran in a library's code.
SERVING_CODE = ("hotpath/demo/shop/server.py:", "hotpath/demo/shop/__main__.py:")


def _always(_: Finding) -> bool:
    return True


def _evidence(finding: Finding) -> Mapping[str, Any]:
    evidence = finding.get("evidence")
    return evidence if isinstance(evidence, Mapping) else {}


def _statement(finding: Finding) -> str:
    return " ".join(str(finding.get("sql") or "").upper().split())


def offset_page(finding: Finding) -> bool:
    """A statement paged by OFFSET: it reads and drops every row of the earlier pages."""
    return " OFFSET " in f" {_statement(finding)} "


def index_loop(finding: Finding) -> bool:
    """A loop of queries (N+1) whose statement's plan asks for an index: each of its runs is
    a scan an index would turn into a lookup."""
    return _evidence(finding).get("missing_index") is True


def loop_time(finding: Finding) -> float:
    """All of a loop's queries' time, what an index that makes each a lookup saves (observe's
    saving for a loop is every run but one: what one query for all of them saves)."""
    saving = _saving(finding)
    runs = _float(_evidence(finding).get("count"))
    return saving * runs / (runs - 1) if runs > 1 else saving


# A plan this cheap (in the planner's units) is a lookup by index, or a scan of a few pages:
# a fraction of a millisecond of work.
LOOKUP_COST = 100.0
# a lookup that took this long a run (ms) waited for something: on a server busy with scans,
# for the server
WAITED_MS = 5.0


def queued_lookup(finding: Finding) -> bool:
    """A read whose plan is a cheap lookup (no index to add), run slow or in a loop of slow
    runs: it waited for the server, which the scans an index would remove kept busy (the
    server's CPU and disk are shared by every statement; the scans gone, it runs in a
    fraction of a millisecond)."""
    evidence = _evidence(finding)
    cost = evidence.get("plan_cost")
    if not _statement(finding).startswith(("SELECT", "WITH")) or cost is None:
        return False
    if evidence.get("missing_index") is not False or _float(cost) > LOOKUP_COST:
        return False
    if finding.get("kind") == "slow_query":
        return True  # its runs took the slow-query threshold or more
    runs = _float(evidence.get("count"))
    return runs > 0 and _float(evidence.get("total_ms")) / runs >= WAITED_MS


def index_read(finding: Finding) -> bool:
    """A read whose plan asks for an index (observe's EXPLAIN: a scan where an index would
    serve). A read slow for another reason (a busy server) or a write gets nothing from one."""
    read = _statement(finding).startswith(("SELECT", "WITH"))
    return read and _evidence(finding).get("missing_index") is True


def _in_serving_code(finding: Finding) -> bool:
    site = str(finding.get("call_site") or "")
    return any(part in site for part in SERVING_CODE)


def profile_wait(finding: Finding) -> bool:
    """The loop waited (not computed) in a profile request, on one of the app's lines."""
    evidence = _evidence(finding)
    return (
        evidence.get("cpu_bound") is False
        and evidence.get("blocker") == PROFILE
        and not _in_serving_code(finding)
    )


def export_serialization(finding: Finding) -> bool:
    """The loop computed the category export's response: the encoder walking every row."""
    evidence = _evidence(finding)
    return (
        evidence.get("cpu_bound") is True
        and evidence.get("blocker") == EXPORT
        and evidence.get("what") == "response serialization"
    )


def _saving(finding: Finding) -> float:
    try:
        return max(0.0, float(finding.get("saving_ms") or 0.0))
    except (TypeError, ValueError):
        return 0.0


@dataclass(frozen=True)
class Remedy:
    """A shop fix that removes findings of one kind when ``applies`` holds for the finding;
    ``needs`` says what that evidence is, ``saves`` what the fix would save (observe's
    estimate, unless the fix removes more or less of the finding than observe's own fix)."""

    fix: FixName
    needs: str = "any"
    applies: Callable[[Finding], bool] = _always
    saves: Callable[[Finding], float] = _saving
    # only while some statement's plan asks for an index (the scans that made it wait)
    behind_scans: bool = False


# Finding kind (observe's FindingKind values) -> the shop fixes that remove it, each with the
# evidence it needs. A kind absent here is one the shop has no fix for: reported, never fatal.
REMEDIES: dict[str, tuple[Remedy, ...]] = {
    "connection_setup": (Remedy("pool", "a connection opened per request"),),
    "pool_wait": (Remedy("pool", "waits for a connection"),),
    "n_plus_one": (
        Remedy("eager", "a query per row"),
        Remedy("indexes", "its statement's plan asks for an index", index_loop, loop_time),
        Remedy(
            "indexes",
            "cheap lookups that waited for a server busy with scans",
            queued_lookup,
            loop_time,
            behind_scans=True,
        ),
    ),
    "duplicate": (Remedy("eager", "the same query again in one request"),),
    "slow_query": (
        Remedy("keyset", "an OFFSET page", offset_page),
        Remedy("indexes", "a read whose plan asks for an index", index_read),
        Remedy(
            "indexes",
            "a cheap lookup that waited for a server busy with scans",
            queued_lookup,
            behind_scans=True,
        ),
    ),
    "repeated_read": (Remedy("cache", "GETs asking what an earlier one asked"),),
    "unbounded_result": (Remedy("keyset", "an OFFSET page", offset_page),),
    "sequential_io": (Remedy("fanout", "independent calls one after another"),),
    "n_plus_one_http": (Remedy("fanout", "a call per item"),),
    "slow_dependency": (Remedy("fanout", "a dependency without a deadline"),),
    "no_timeout": (Remedy("fanout", "a call without a deadline"),),
    "blocking_call": (
        Remedy("offload", "a wait on the loop in the profile (its sync risk check)", profile_wait),
        Remedy("lean", "CPU serializing the category export", export_serialization),
    ),
}
# An endpoint's bottleneck class, when no finding maps to a fix the shop has left.
BOTTLENECK_FIXES: dict[str, tuple[FixName, ...]] = {
    "connection_setup": ("pool",),
    "pool_wait": ("pool",),
    "n_plus_one": ("eager",),
    "missing_index": ("indexes",),
    "slow_query": ("indexes", "cache", "replicas"),
    "sequential_io": ("fanout",),
    "slow_dependency": ("fanout",),
    "n_plus_one_http": ("fanout",),
    "blocking_call": ("offload",),
    "cpu": ("lean",),  # the handler's own time: serialization is what the shop can cut
}


def remedies_for(finding: Finding) -> tuple[Remedy, ...]:
    """The remedies in the table for ``finding`` (one of the report's ranked fixes), by its
    kind and evidence; none for a kind or evidence the shop has no fix for."""
    remedies = REMEDIES.get(str(finding.get("kind", "")), ())
    return tuple(remedy for remedy in remedies if remedy.applies(finding))


def fixes_for(finding: Finding) -> tuple[FixName, ...]:
    """The shop fixes that remove ``finding``."""
    return tuple(remedy.fix for remedy in remedies_for(finding))


@dataclass(frozen=True)
class Choice:
    """What a diagnosis named and the fix chosen for it (``fix`` None: nothing left).

    ``kind``, ``endpoint``, ``share``, ``call_site``, ``message`` and ``evidence`` are the
    largest finding the fix removes; ``saving_ms`` is what every finding it removes would save
    over the run, together; ``ranking``: each fix left with that total, best first."""

    fix: FixName | None
    kind: str = ""
    endpoint: str = ""
    share: float = 0.0  # of the endpoint's time
    saving_ms: float = 0.0  # over the run, by the diagnosis's estimate
    call_site: str | None = None
    message: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what the diagnosis ranked higher that no fix left removes
    findings: int = 0  # how many of the ranked findings the fix removes
    ranking: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "fix": self.fix,
            "kind": self.kind,
            "endpoint": self.endpoint,
            "share": self.share,
            "saving_ms": self.saving_ms,
            "call_site": self.call_site,
            "message": self.message,
            "evidence": self.evidence,
            "notes": list(self.notes),
            "findings": self.findings,
            "ranking": [{"fix": fix, "saving_ms": ms} for fix, ms in self.ranking],
        }


def _unremoved_note(finding: Finding) -> str:
    kind = str(finding.get("kind", "")) or "a finding with no kind"
    if kind not in REMEDIES:
        return f"diagnosis named {kind}: the shop has no fix for it"
    where = finding.get("call_site") or finding.get("endpoint") or "?"
    needs = "; ".join(f"{r.fix}: {r.needs}" for r in REMEDIES[kind])
    return f"diagnosis named {kind} at {where}: no shop fix removes it ({needs})"


def choose_fix(report: Mapping[str, Any], applied: set[str], indexes_left: bool) -> Choice:
    """The fix not yet ``applied`` whose findings in ``report`` (``Report.to_dict()``) would
    save most over the run together; when no finding maps to one, the endpoints' bottlenecks
    by total time. ``indexes_left``: whether the advisor has indexes the shop does not have."""

    def open_fix(fix: FixName) -> bool:
        return fix not in applied and (fix != "indexes" or indexes_left)

    # per fix, what it saves on each statement (or each finding without one): two findings
    # about one statement (its slow runs, and the loop that runs it) overlap, the larger counts
    saves: dict[FixName, dict[object, float]] = {}
    largest: dict[FixName, tuple[Finding, float]] = {}
    counts: dict[FixName, int] = {}
    unremoved: list[Finding] = []
    ranked = _ranked(report)
    scans = any(index_read(f) or index_loop(f) for f in ranked)
    for index, finding in enumerate(ranked):
        remedies = [
            remedy
            for remedy in remedies_for(finding)
            if open_fix(remedy.fix) and (scans or not remedy.behind_scans)
        ]
        if not remedies:
            unremoved.append(finding)
        for remedy in remedies:
            fix, saving = remedy.fix, remedy.saves(finding)
            what = _statement(finding) or index
            by_statement = saves.setdefault(fix, {})
            by_statement[what] = max(by_statement.get(what, 0.0), saving)
            counts[fix] = counts.get(fix, 0) + 1
            if fix not in largest or saving > largest[fix][1]:
                largest[fix] = (finding, saving)
    totals = {fix: sum(by_statement.values()) for fix, by_statement in saves.items()}
    order = list(FIX_DESCRIPTIONS)  # a tie goes to the fix the shop lists first
    ranking = sorted(totals.items(), key=lambda item: (-item[1], order.index(item[0])))
    if ranking:
        fix, total = ranking[0]
        top, top_saving = largest[fix]
        notes = [_unremoved_note(f) for f in unremoved if _saving(f) > top_saving]
        return Choice(
            fix,
            str(top.get("kind", "")),
            str(top.get("endpoint", "")),
            _float(top.get("share")),
            total,
            top.get("call_site"),
            str(top.get("message", "")),
            dict(_evidence(top)),
            tuple(dict.fromkeys(notes)),
            counts[fix],
            tuple(ranking),
        )
    notes = list(dict.fromkeys(_unremoved_note(f) for f in unremoved))
    return _by_bottleneck(report, open_fix, notes)


def _float(value: Any) -> float:
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _ranked(report: Mapping[str, Any]) -> list[Finding]:
    ranked = report.get("top_fixes")
    if not isinstance(ranked, Sequence):
        return []
    return [finding for finding in ranked if isinstance(finding, Mapping)]


def _by_bottleneck(
    report: Mapping[str, Any], open_fix: Callable[[FixName], bool], notes: list[str]
) -> Choice:
    endpoints = [e for e in report.get("endpoints") or [] if isinstance(e, Mapping)]
    endpoints.sort(key=lambda e: _float(e.get("total_ms")), reverse=True)
    total = sum(_float(e.get("total_ms")) for e in endpoints) or 1.0
    for endpoint in endpoints:
        bottleneck = str(endpoint.get("bottleneck", "none"))
        if bottleneck == "none":
            continue
        candidates = BOTTLENECK_FIXES.get(bottleneck, ())
        if not candidates:
            notes.append(f"diagnosis named {bottleneck}: the shop has no fix for it")
            continue
        fix = next((fix for fix in candidates if open_fix(fix)), None)
        if fix is None:
            continue
        breakdown = endpoint.get("breakdown_ms") or {}
        return Choice(
            fix,
            bottleneck,
            str(endpoint.get("name", "")),
            _float(endpoint.get("total_ms")) / total,
            0.0,
            None,
            f"the endpoint's bottleneck is {bottleneck} (time by layer, ms: "
            + ", ".join(f"{k} {_float(v):.1f}" for k, v in breakdown.items() if _float(v) >= 0.05)
            + ")",
            {"breakdown_ms": dict(breakdown)},
            tuple(dict.fromkeys(notes)),
        )
    return Choice(None, notes=tuple(dict.fromkeys(notes)))


__all__ = [
    "BOTTLENECK_FIXES",
    "REMEDIES",
    "Choice",
    "FixName",
    "Remedy",
    "choose_fix",
    "fixes_for",
]
