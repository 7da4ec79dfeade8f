"""Verify: whether the fix the diagnosis chose at a step gained most of every fix left, each
tried alone from the same state.

One short run per configuration is no evidence on a shared 2-core machine: a run's mix of
requests (Zipf draws, a 40-page browse or none) and whatever else the machine does at that
moment move a gain by more than the gaps between fixes. So the fixes are measured in rounds:

- every run serves the very same requests: it is bounded by work, not time (each user runs
  the same actions from one seed), sized so that the state itself takes about as long as
  the timed run the diagnosis read (what a fix gains depends on the run's length: a cache
  that starts cold pays off with the repeats a longer run brings);
- each run is on a fresh server with a cold cache and the same warm-up;
- a round runs each fix in the race once; the state itself runs between rounds (before the
  first, after each), and a fix's gain in a round is the state's mean request time at the
  moment the fix ran (between the state runs around the round, by time) over the fix's own:
  a machine that slows down during a round slows the state and the fix alike;
- a fix's gain is the median over the rounds, its spread the lowest and highest of them;
- after the first round, only the fixes that could still be the best stay in the race (the
  chosen one always does): a fix far behind the leader needs no more precision to lose.

Rounds alternate their order, so no fix always runs first or last, and the configurations
with the advisor's indexes run together (the indexes are rebuilt only when they change).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .shop.fixes import Fixes

if TYPE_CHECKING:
    from ._runner import RunResult, ShopRig

STATE = "(state)"  # the configuration the fixes are tried from
Sample = tuple[float, float]  # (when the run's load was halfway, monotonic s; mean request ms)


@dataclass(frozen=True)
class VerifyPlan:
    """How the fixes tried from one state are measured (see the module's docstring)."""

    rounds: int = 3
    # the state's own time per run, sizing the work of every run (None: the timed runs')
    round_s: float | None = None
    min_actions: int = 2  # per user and run: fewer would be a mix of a handful of requests
    race_share: float = 0.5  # a fix stays after round 1 if it gained this share of the leader
    cap_s: float = 60.0  # a run stops here even with work left (marked incomplete)


@dataclass
class Verification:
    """The runs of one step: the state's own between the rounds, and per fix its run in each
    round it raced in."""

    actions: int  # per user, every run
    state: list[Sample] = field(default_factory=list)  # before round 0, after each round
    rounds: dict[str, dict[int, Sample]] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)  # "fix round" that hit the cap
    errors: int = 0  # failed requests, over every run

    def state_ms(self, round_index: int, when: float) -> float:
        """The state's mean request time at ``when`` during ``round_index``: between its runs
        before and after that round, in proportion to the time."""
        if round_index + 1 >= len(self.state):
            return self.state[round_index][1] if round_index < len(self.state) else 0.0
        (t0, before), (t1, after) = self.state[round_index], self.state[round_index + 1]
        share = min(1.0, max(0.0, (when - t0) / (t1 - t0))) if t1 > t0 else 0.5
        return before + (after - before) * share

    def gains(self, fix: str) -> list[float]:
        """The fix's gain in each round it ran: the state's mean request time then, over the
        fix's own."""
        found = []
        for round_index, (when, ms) in sorted(self.rounds.get(fix, {}).items()):
            state = self.state_ms(round_index, when)
            if ms > 0 and state > 0:
                found.append(state / ms)
        return found

    def gain(self, fix: str) -> float:
        gains = self.gains(fix)
        return statistics.median(gains) if gains else 0.0

    def spread(self, fix: str) -> tuple[float, float]:
        gains = self.gains(fix)
        return (min(gains), max(gains)) if gains else (0.0, 0.0)

    @property
    def fixes(self) -> list[str]:
        return list(self.rounds)


def actions_per_user(run: RunResult, users: int, seconds: float, least: int = 1) -> int:
    """The work of a run: what ``run``'s configuration does in ``seconds`` per user (at
    least ``least`` actions)."""
    if not run.load.duration_s or not users:
        return least
    rate = run.load.steps / run.load.duration_s / users
    return max(least, round(rate * seconds))


def round_order(names: Sequence[str], state: Fixes, round_index: int) -> list[str]:
    """The fixes of a round, those that add the advisor's indexes after the others (which
    have the state's), in the opposite order every other round."""
    ordered = sorted(names, key=lambda name: name == "indexes" and not state.indexes)
    return ordered[::-1] if round_index % 2 else ordered


def still_racing(check: Verification, chosen: str, share: float) -> list[str]:
    """The fixes worth another round: the chosen one, the leader, and any fix whose gain is
    at least ``share`` of the leader's (gains above 1x: what each saves)."""
    gains = {name: check.gain(name) for name in check.fixes}
    leader = max(gains, key=lambda name: gains[name])
    bar = 1.0 + share * (gains[leader] - 1.0)
    return [name for name in gains if name in (chosen, leader) or gains[name] >= bar]


def verify_step(
    rig: ShopRig,
    state: Fixes,
    state_run: RunResult,
    chosen: str,
    others: Sequence[str],
    plan: VerifyPlan,
    progress: Callable[[str], None] | None = None,
) -> Verification:
    """Measure ``chosen`` and each of ``others``, each alone on top of ``state`` (whose own
    run, ``state_run``, sizes the work), in rounds with the state itself between them."""
    users = rig.spec.concurrency
    seconds = plan.round_s if plan.round_s is not None else rig.spec.duration_s
    check = Verification(actions_per_user(state_run, users, seconds, plan.min_actions))
    # every run of the step serves the same requests (another seed than the timed runs')
    spec = replace(
        rig.spec, steps_per_user=check.actions, seed=rig.spec.seed + 1, duration_s=plan.cap_s
    )

    def measure(name: str, why: str) -> Sample:
        fixes = state if name == STATE else replace(state, **{name: True})
        run = rig.run(fixes, f" (verify: {why})", spec, stats=False)
        check.errors += run.load.errors
        if not run.load.complete:
            check.incomplete.append(f"{name} {len(check.state)}")
        return time.monotonic() - run.load.duration_s / 2, run.load.mean_ms()

    check.state.append(measure(STATE, "the state itself"))
    racing = [chosen, *others]
    for round_index in range(plan.rounds):
        if round_index == 1:
            racing = still_racing(check, chosen, plan.race_share)
        for name in round_order(racing, state, round_index):
            what = "the chosen fix" if name == chosen else "an alternative"
            sample = measure(name, f"round {round_index + 1}, {what}")
            check.rounds.setdefault(name, {})[round_index] = sample
        check.state.append(measure(STATE, "the state itself"))
        if progress is not None:
            gains = ", ".join(f"{name} {check.gain(name):.2f}x" for name in check.fixes)
            progress(f"verify after round {round_index + 1}: {gains}")
    return check


__all__ = [
    "STATE",
    "Verification",
    "VerifyPlan",
    "actions_per_user",
    "round_order",
    "still_racing",
    "verify_step",
]
