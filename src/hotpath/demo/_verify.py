"""Verify: whether the fix the diagnosis chose at a step gained most of every fix left, each
tried alone from the same state.

One short run per configuration is no evidence on a shared 2-core machine: a run's mix of
requests (Zipf draws, a 40-page browse or none) and whatever else the machine does at that
moment move a gain by more than the gaps between fixes. So the fixes are measured in rounds:

- every round runs the state itself and each fix in the race once, one after another, each on
  a fresh server with a cold cache and the same warm-up;
- a round is bounded by work, not time: every configuration of a round serves the very same
  requests (each user's actions from the round's seed; another seed the next round), sized so
  that the state itself takes about ``round_s``;
- a fix's gain in a round is the state's mean request time over the fix's, both measured in
  that round (a slow minute of the machine slows both); its gain is the median over the
  rounds, and the spread is the lowest and highest of them;
- after the first round, only the fixes that could still be the best stay in the race (the
  chosen one always does): a fix far behind the leader needs no more precision to lose.

Rounds alternate their order (the indexes are rebuilt at most once a round, and no fix always
runs first or last).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .shop.fixes import Fixes

if TYPE_CHECKING:
    from ._runner import RunResult, ShopRig

STATE = "(state)"  # the configuration the fixes are tried from, among the measured ones


@dataclass(frozen=True)
class VerifyPlan:
    """How the fixes tried from one state are measured (see the module's docstring)."""

    rounds: int = 3
    round_s: float = 3.0  # the state's own time per round, sizing the work of every round
    race_share: float = 0.5  # a fix stays after round 1 if it gained this share of the leader
    cap_s: float = 60.0  # a round's run stops here even with work left (marked incomplete)


@dataclass
class Verification:
    """The rounds of one step: per configuration (the state itself as :data:`STATE`, the
    others by fix) its mean request time in each round it ran."""

    actions: int  # per user, each round
    rounds: dict[str, dict[int, float]] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)  # "fix round" that hit the cap
    errors: int = 0  # failed requests, over every run

    def gains(self, fix: str) -> list[float]:
        """The fix's gain in each round it ran: the state's mean request time over its own."""
        state = self.rounds.get(STATE, {})
        return [
            state[r] / ms
            for r, ms in sorted(self.rounds.get(fix, {}).items())
            if ms > 0 and r in state
        ]

    def gain(self, fix: str) -> float:
        gains = self.gains(fix)
        return statistics.median(gains) if gains else 0.0

    def spread(self, fix: str) -> tuple[float, float]:
        gains = self.gains(fix)
        return (min(gains), max(gains)) if gains else (0.0, 0.0)

    @property
    def fixes(self) -> list[str]:
        return [name for name in self.rounds if name != STATE]


def actions_per_user(run: RunResult, users: int, seconds: float) -> int:
    """The work of a round: what ``run``'s configuration does in ``seconds`` per user."""
    if not run.load.duration_s or not users:
        return 1
    rate = run.load.steps / run.load.duration_s / users
    return max(1, round(rate * seconds))


def round_order(names: Sequence[str], state: Fixes, round_index: int) -> list[str]:
    """The configurations of a round, those without the indexes apart from those with them,
    in the opposite order every other round (so that the last of one round has the indexes
    the first of the next needs)."""

    def indexed(name: str) -> bool:
        return state.indexes or name == "indexes"

    ordered = sorted(names, key=indexed)  # stable: the given order within each group
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
    run, ``state_run``, sizes the work), in rounds with the state itself."""
    check = Verification(actions_per_user(state_run, rig.spec.concurrency, plan.round_s))
    racing = [chosen, *others]
    for round_index in range(plan.rounds):
        if round_index == 1:
            racing = still_racing(check, chosen, plan.race_share)
        spec = replace(
            rig.spec,
            steps_per_user=check.actions,
            seed=rig.spec.seed + 1 + round_index,  # the main runs use the seed itself
            duration_s=plan.cap_s,
        )
        for name in round_order([STATE, *racing], state, round_index):
            fixes = state if name == STATE else replace(state, **{name: True})
            what = "the state itself" if name == STATE else "the alternative"
            if name == chosen:
                what = "the chosen fix"
            run = rig.run(fixes, f" (verify round {round_index + 1}: {what})", spec, stats=False)
            check.rounds.setdefault(name, {})[round_index] = run.load.mean_ms()
            check.errors += run.load.errors
            if not run.load.complete:
                check.incomplete.append(f"{name} {round_index + 1}")
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
