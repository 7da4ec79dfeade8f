"""The optimization loop: measure, let observe's diagnosis name the top bottleneck, apply the
one shop fix that removes it, measure again, until the p99 target is met or no fix is left.

The fix is chosen by the diagnosis, through an explicit table (:data:`._choice.REMEDIES`) from
the finding kinds observe reports, and their evidence, to the shop's fixes, never by a fixed
order: the fix whose findings would save most over the run. With ``verify``, every other
remaining fix is also tried alone from the same state (:mod:`._verify`), which says whether
the diagnosis chose the fix that gained most.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from ._choice import Choice, FixName, choose_fix
from ._verify import Verification, VerifyPlan, verify_step
from .shop.fixes import FIX_DESCRIPTIONS, Fixes

if TYPE_CHECKING:  # _runner imports this module when it runs the ladder
    from ._runner import RunResult, ShopRig


def applied_fixes(fixes: Fixes) -> set[str]:
    return {f.name for f in fields(fixes) if getattr(fixes, f.name)}


@dataclass
class Step:
    """One rung: the configuration measured, the fix that led to it and why."""

    run: RunResult
    applied: FixName | None = None  # None: the naive start
    because: Choice | None = None  # the previous step's diagnosis that chose ``applied``
    check: Verification | None = None  # verify: every fix left, each alone, in rounds

    @property
    def fixes(self) -> Fixes:
        return self.run.fixes


@dataclass
class Ladder:
    steps: list[Step]
    target_p99_ms: float
    stop: str  # why the loop ended
    next_choice: Choice | None = None  # what the last diagnosis named, if the loop went on
    verified: bool = False

    @property
    def naive(self) -> RunResult:
        return self.steps[0].run

    @property
    def final(self) -> RunResult:
        return self.steps[-1].run

    def accuracy(self) -> tuple[int, int] | None:
        """Steps where the chosen fix gained most, or within 10% of the best; of those
        verified."""
        judged = [verdict(self, i) for i in range(1, len(self.steps))]
        known = [v for v in judged if v is not None]
        return (sum(v.right for v in known), len(known)) if self.verified else None


def gain_text(gain: float, spread: tuple[float, float]) -> str:
    """A verified gain with its spread over the rounds: ``2.10x (1.95-2.31)``."""
    return f"{gain:.2f}x ({spread[0]:.2f}-{spread[1]:.2f})"


def p99_ms(run: RunResult) -> float:
    return run.load.overall_latency().percentile_ms(99)


def gain(run: RunResult, before: RunResult) -> float:
    """Throughput against ``before``: in a closed loop of users, the inverse of the mean
    request time, which is what the diagnosis ranks fixes by (time saved over the run)."""
    base = before.load.throughput()
    return run.load.throughput() / base if base else 0.0


@dataclass(frozen=True)
class Verdict:
    chosen: float  # the chosen fix's gain (median over the rounds)
    best_fix: str
    best: float
    right: bool
    chosen_spread: tuple[float, float] = (0.0, 0.0)  # its lowest and highest round
    best_spread: tuple[float, float] = (0.0, 0.0)


def verdict(ladder: Ladder, index: int) -> Verdict | None:
    """Whether step ``index``'s fix gained most of those tried from the same state (within
    10% of the best one's improvement), by the verify rounds' median gains."""
    step = ladder.steps[index]
    check = step.check
    if check is None or step.applied is None or step.applied not in check.rounds:
        return None
    gains = {name: check.gain(name) for name in check.fixes}
    best_fix = max(gains, key=lambda name: gains[name])
    chosen, best = gains[step.applied], gains[best_fix]
    right = best <= 1.0 or chosen - 1.0 >= 0.9 * (best - 1.0)
    return Verdict(
        chosen, best_fix, best, right, check.spread(step.applied), check.spread(best_fix)
    )


def climb(
    rig: ShopRig,
    target_p99_ms: float | None = None,
    verify: bool = False,
    max_steps: int | None = None,
    plan: VerifyPlan | None = None,
) -> Ladder:
    """Naive first, then one fix a step as the diagnosis chooses, until the p99 target (naive's
    p99 / 10 unless given) is met or no fix is left. With ``verify``, every fix left is also
    measured alone from the same state (``plan``: how, see :mod:`._verify`)."""
    naive = rig.run(Fixes.naive())
    indexes = rig.advise()  # from the naive run's statements, before any other run
    target = target_p99_ms if target_p99_ms is not None else p99_ms(naive) / 10
    steps = [Step(naive)]
    limit = max_steps if max_steps is not None else len(FIX_DESCRIPTIONS)
    while True:
        current = steps[-1]
        if p99_ms(current.run) <= target:
            stop = f"p99 {p99_ms(current.run):.1f} ms met the target of {target:.1f} ms"
            return Ladder(steps, target, stop, None, verify)
        applied = applied_fixes(current.fixes)
        indexes_left = bool(indexes) and not current.fixes.indexes
        choice = choose_fix(current.run.report, applied, indexes_left)
        if choice.fix is None:
            stop = "the diagnosis names no cause the shop has a fix left for"
            return Ladder(steps, target, stop, choice, verify)
        if len(steps) > limit:
            return Ladder(steps, target, f"stopped after {limit} fixes", choice, verify)
        why = f" ({choice.kind} on {choice.endpoint})" if choice.endpoint else ""
        run = rig.run(replace(current.fixes, **{choice.fix: True}), why)
        step = Step(run, choice.fix, choice)
        if verify:
            others = [
                other
                for other in FIX_DESCRIPTIONS
                if other not in applied
                and other != choice.fix
                and (other != "indexes" or bool(indexes))
            ]
            step.check = verify_step(
                rig,
                current.fixes,
                current.run,
                choice.fix,
                others,
                plan or VerifyPlan(),
                rig.progress,
            )
        steps.append(step)


# What the loop shows next to each published figure: the step that applied the technique.
PUBLISHED: tuple[tuple[FixName, str, str], ...] = (
    ("pool", "connection pooling", "150 ms -> 12 ms per request; 38.56 s -> 3.06 s (batch)"),
    ("eager", "N+1 fixed with eager loading", "100+ queries -> 1-3 per request"),
    ("fanout", "parallel fan-out", "about 3x faster"),
    ("cache", "caching", "about 90% of reads served from cache"),
)
ORDERS = "GET /users/{user_id}/orders"
PROFILE = "GET /users/{user_id}/profile"


def _endpoint_p50(run: RunResult, name: str) -> float:
    stats = run.load.endpoints.get(name)
    return stats.latency.percentile_ms(50) if stats else 0.0


def measured_figure(ladder: Ladder, fix: FixName) -> str:
    """The figure measured at the step that applied ``fix``, against the step before."""
    for index, step in enumerate(ladder.steps):
        if step.applied != fix:
            continue
        before, after = ladder.steps[index - 1].run, step.run
        if fix == "pool":
            return (
                f"p50 {before.load.overall_latency().percentile_ms(50):.1f} -> "
                f"{after.load.overall_latency().percentile_ms(50):.1f} ms; connections "
                f"opened {before.connections_opened:,} -> {after.connections_opened:,}"
            )
        if fix == "eager":
            return (
                f"orders endpoint {before.queries_per_request.get(ORDERS, 0):.0f} -> "
                f"{after.queries_per_request.get(ORDERS, 0):.0f} queries per request"
            )
        if fix == "fanout":
            slow, fast = _endpoint_p50(before, PROFILE), _endpoint_p50(after, PROFILE)
            ratio = f" ({slow / fast:.1f}x faster)" if fast else ""
            return f"profile p50 {slow:.1f} -> {fast:.1f} ms{ratio}"
        hits = after.cache_hit_rates
        if hits is None:
            return "no cache lookups counted"
        share = f"{hits[0] + hits[1]:.0%} of cached reads from cache"
        return f"{share} (L1 {hits[0]:.0%}, Redis {hits[1]:.0%})"
    return "not applied: the loop did not need it"


def breakdown(run: RunResult) -> dict[str, float]:
    """Mean time per request by layer over every endpoint (ms), from observe's report."""
    totals: dict[str, float] = {}
    count = 0
    for endpoint in run.report.get("endpoints", []):
        n = int(endpoint.get("count", 0))
        count += n
        for layer, ms in (endpoint.get("breakdown_ms") or {}).items():
            totals[layer] = totals.get(layer, 0.0) + float(ms) * n
    return {layer: ms / count for layer, ms in totals.items()} if count else {}


def endpoints_text(endpoint: str) -> str:
    """An endpoint, or several (a blocking call stalls every request in flight), short."""
    named = endpoint.split(", ")
    if len(named) <= 2:
        return endpoint
    return f"{named[0]} and {len(named) - 1} other endpoints"


def ranking_text(choice: Choice, shown: int = 4) -> str:
    """The diagnosis's ranking of the fixes left, by the time their findings save over the
    run: ``eager ~75.2 s, indexes ~40.1 s, pool ~12.0 s``."""
    return ", ".join(f"{fix} ~{ms / 1000:,.1f} s" for fix, ms in choice.ranking[:shown])


def _choice_lines(choice: Choice, indent: str) -> list[str]:
    site = f" at {choice.call_site}" if choice.call_site else ""
    text = (
        f"{choice.kind} on {endpoints_text(choice.endpoint)}: {choice.share:.0%} of its time{site}"
        if choice.endpoint
        else choice.kind
    )
    width = 78 - len(indent)
    lines = textwrap.wrap(text, width, break_long_words=True)
    if choice.message:
        lines += textwrap.wrap(f"({choice.message})", width, break_long_words=True)
    if choice.ranking:
        lines += textwrap.wrap(
            f"(fixes by what their findings save: {ranking_text(choice)})", width
        )
    for note in choice.notes:
        lines += textwrap.wrap(f"({note})", width, break_long_words=True)
    return [indent + line for line in lines]


def ladder_lines(ladder: Ladder) -> list[str]:
    """The ladder as plain lines of at most 78 characters: several short lines per step."""
    naive = ladder.naive
    lines = [f"target: p99 <= {ladder.target_p99_ms:.1f} ms (naive p99 {p99_ms(naive):.1f} ms)"]
    for index, step in enumerate(ladder.steps):
        run = step.run
        latency = run.load.overall_latency()
        title = "naive" if step.applied is None else f"+{step.applied}"
        lines.append("")
        lines.append(f"step {index}: {title}")
        if step.because is not None:
            lines.append("  why:")
            lines += _choice_lines(step.because, "    ")
        lines.append(
            f"  measured: {run.load.throughput():.0f} req/s, p50 {latency.percentile_ms(50):.1f}"
            f" / p95 {latency.percentile_ms(95):.1f} / p99 {latency.percentile_ms(99):.1f} ms"
        )
        lines.append(
            f"  errors {run.load.errors}, stale reads {run.load.stale_reads}, "
            f"connections opened {run.connections_opened:,}"
        )
        if len(run.worker_requests) > 1:
            served = " / ".join(f"{count:,}" for count in run.worker_requests)
            lines.append(f"  requests served by each worker process: {served}")
        if run.cache_hit_rates is not None:
            # apart: with several workers, Redis answers what another process's L1 lacks
            lines.append(
                f"  cache: {run.cache.get('l1_hits', 0):,} L1 hits, "
                f"{run.cache.get('l2_hits', 0):,} Redis hits, {run.cache.get('misses', 0):,} misses"
            )
        layers = [f"{k} {v:.1f}" for k, v in breakdown(run).items() if v >= 0.05]
        lines += textwrap.wrap(
            "ms/request by layer: " + ", ".join(layers),
            78,
            initial_indent="  ",
            subsequent_indent="    ",
        )
        if index:
            before = ladder.steps[index - 1].run
            lines.append(
                f"  gain: {gain(run, before):.2f}x req/s, p99 /{p99_ms(before) / p99_ms(run):.2f}"
                f" vs step {index - 1}; {gain(run, naive):.2f}x, p99 "
                f"/{p99_ms(naive) / p99_ms(run):.2f} vs naive"
            )
        judged = verdict(ladder, index) if index else None
        if judged is not None:
            mark = "yes" if judged.right else "NO"
            lines.append(
                f"  verify: chosen {gain_text(judged.chosen, judged.chosen_spread)}; best "
                f"{judged.best_fix} {gain_text(judged.best, judged.best_spread)}; right: {mark}"
            )
    lines += ["", f"stopped: {ladder.stop}"]
    if ladder.next_choice is not None:
        for note in ladder.next_choice.notes:
            lines += textwrap.wrap(note, 76, initial_indent="  ", subsequent_indent="    ")
    accuracy = ladder.accuracy()
    if accuracy is not None:
        lines.append(f"diagnosis accuracy: {accuracy[0]} of {accuracy[1]} steps right")
    lines += ["", "published figures, and what this run measured:"]
    for fix, technique, published in PUBLISHED:
        lines.append(f"  {technique}")
        lines.append(f"    published: {published}")
        lines += textwrap.wrap(
            measured_figure(ladder, fix),
            78,
            initial_indent="    measured:  ",
            subsequent_indent="               ",
        )
    return lines


def _run_dict(run: RunResult) -> dict[str, Any]:
    latency = run.load.overall_latency()
    return {
        "configuration": run.label,
        "requests_per_s": run.load.throughput(),
        "p50_ms": latency.percentile_ms(50),
        "p95_ms": latency.percentile_ms(95),
        "p99_ms": latency.percentile_ms(99),
        "breakdown_ms": breakdown(run),
        "errors": run.load.errors,
        "stale_reads": run.load.stale_reads,
        "worker_requests": run.worker_requests,
        "cache": {
            "l1_hits": run.cache.get("l1_hits", 0),
            "redis_hits": run.cache.get("l2_hits", 0),
            "misses": run.cache.get("misses", 0),
        },
    }


def ladder_dict(ladder: Ladder) -> dict[str, Any]:
    """The ladder for scripts and CI (``hotpath demo --json``)."""
    steps = []
    for index, step in enumerate(ladder.steps):
        entry = {
            "step": index,
            "fix": step.applied,
            "diagnosis": None if step.because is None else step.because.to_dict(),
            **_run_dict(step.run),
        }
        if index:
            before = ladder.steps[index - 1].run
            entry["gain_vs_previous"] = gain(step.run, before)
            entry["gain_vs_naive"] = gain(step.run, ladder.naive)
        judged = verdict(ladder, index) if index else None
        if judged is not None and step.check is not None:
            check = step.check
            entry["verify"] = {
                "chosen_gain": judged.chosen,
                "best_fix": judged.best_fix,
                "best_gain": judged.best,
                "right": judged.right,
                "actions_per_user": check.actions,
                "incomplete": check.incomplete,
                "errors": check.errors,
                "trials": {
                    name: {
                        "gain": check.gain(name),
                        "round_gains": check.gains(name),
                        "round_mean_ms": [ms for _, ms in check.rounds[name].values()],
                    }
                    for name in check.fixes
                },
                # the state's own runs: before the first round and after each
                "state_mean_ms": [ms for _, ms in check.state],
            }
        steps.append(entry)
    accuracy = ladder.accuracy()
    return {
        "target_p99_ms": ladder.target_p99_ms,
        "stop": ladder.stop,
        "next": None if ladder.next_choice is None else ladder.next_choice.to_dict(),
        "accuracy": None if accuracy is None else {"right": accuracy[0], "steps": accuracy[1]},
        "steps": steps,
        "published": [
            {"technique": technique, "published": published, "measured": measured_figure(ladder, f)}
            for f, technique, published in PUBLISHED
        ],
    }


__all__ = [
    "Choice",
    "Ladder",
    "Step",
    "choose_fix",
    "climb",
    "ladder_dict",
    "ladder_lines",
]
