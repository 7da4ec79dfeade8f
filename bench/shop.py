"""The shop's optimization ladder under load, with ``--verify``: at each step the fix observe's
diagnosis chose, and every other remaining fix tried alone from the same state.

Quick mode: tiny scale, 3 s a run. Full mode: small scale (100k products, 500k orders), 5 s
a run, 16 users; verify measures each step's fixes in rounds (``hotpath.demo._verify``: 3
rounds, the fixes far behind the leader dropped after the first). ``BENCH_SHOP_JSON=path``
also writes the ladder as JSON with every round and each step's diagnosis. The targets of the loop
issue: the diagnosis picks the best remaining fix at every step (or one within 10% of its
gain), and the loop meets the p99 target (naive's / 10) in no more steps than the problems
planted in the naive shop.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from hotpath.demo._ladder import (
    PUBLISHED,
    Ladder,
    endpoints_text,
    gain,
    gain_text,
    ladder_dict,
    measured_figure,
    p99_ms,
    ranking_text,
    verdict,
)
from hotpath.demo._runner import run_shop
from hotpath.demo.shop.fixes import FIX_DESCRIPTIONS
from hotpath.stack import LocalStack

from ._harness import console


def _markdown(ladder: Ladder, scale: str, duration_s: float, users: int) -> str:
    naive = ladder.naive
    lines = [
        f"scale {scale}, {users} users, {duration_s:.0f} s per run; target p99 <= "
        f"{ladder.target_p99_ms:.1f} ms (naive / 10)",
        "",
        "| step | fix | what the diagnosis named | req/s | p50 ms | p95 ms | p99 ms "
        "| req/s x naive | p99 x naive | best alternative (gain) | chosen gain | right |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for index, step in enumerate(ladder.steps):
        run, latency = step.run, step.run.load.overall_latency()
        named = "-"
        if step.because is not None:
            c = step.because
            named = f"{c.kind} on {endpoints_text(c.endpoint)} ({c.share:.0%} of its time)"
            if c.ranking:
                named += f"; ranked: {ranking_text(c, 3)}"
        judged = verdict(ladder, index) if index else None
        check = ["-", "-", "-"]
        if judged is not None:
            check = [
                f"{judged.best_fix} {gain_text(judged.best, judged.best_spread)}",
                gain_text(judged.chosen, judged.chosen_spread),
                "yes" if judged.right else "**no**",
            ]
        lines.append(
            f"| {index} | {step.applied or 'naive'} | {named} | {run.load.throughput():.1f} "
            f"| {latency.percentile_ms(50):.1f} | {latency.percentile_ms(95):.1f} "
            f"| {latency.percentile_ms(99):.1f} | {gain(run, naive):.2f} "
            f"| {p99_ms(naive) / p99_ms(run):.2f} | " + " | ".join(check) + " |"
        )
    final = ladder.final
    accuracy = ladder.accuracy()
    met = p99_ms(final) <= ladder.target_p99_ms
    lines += [
        "",
        f"- stopped: {ladder.stop}",
        f"- final against naive: throughput {gain(final, naive):.2f}x, p99 1/"
        f"{p99_ms(naive) / p99_ms(final):.2f} ({p99_ms(naive):.1f} -> {p99_ms(final):.1f} ms)",
        f"- p99 target met: {'yes' if met else '**no**'}, in {len(ladder.steps) - 1} steps "
        f"({len(FIX_DESCRIPTIONS)} problems planted, one fix each)",
    ]
    if accuracy is not None:
        lines.append(
            f"- diagnosis accuracy: the chosen fix gained most (or within 10% of the best) at "
            f"{accuracy[0]} of {accuracy[1]} steps"
        )
    if ladder.next_choice is not None:
        lines += [f"- {note}" for note in ladder.next_choice.notes]
    lines += ["", "| technique | published | measured at the step that applied it |"]
    lines.append("|---|---|---|")
    for fix, technique, published in PUBLISHED:
        lines.append(f"| {technique} | {published} | {measured_figure(ladder, fix)} |")
    return "\n".join(lines) + "\n"


def run(quick: bool) -> str:
    scale, duration = ("tiny", 3.0) if quick else ("small", 5.0)
    users = 16
    with LocalStack(replicas=2, redis=True) as stack:
        result = run_shop(
            stack, scale, duration, users, progress=console.print, ladder=True, verify=True
        )
    assert result.ladder is not None
    # every round of every verify, for a closer look than the table (BENCH_SHOP_JSON=path)
    path = os.environ.get("BENCH_SHOP_JSON")
    if path:
        ladder = {
            **ladder_dict(result.ladder),
            "reports": [step.run.report for step in result.ladder.steps],  # each diagnosis
        }
        Path(path).write_bytes(orjson.dumps(ladder, option=orjson.OPT_INDENT_2))
    return _markdown(result.ladder, scale, duration, users)
