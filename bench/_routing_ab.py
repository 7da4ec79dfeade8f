"""A/B of ``bench routing``'s read throughput (part 3) between source trees.

``python -m bench._routing_ab A_SRC B_SRC [--rounds 6] [--seconds 2] [--churn 500]`` starts
one stack, then runs a worker process per tree and round, in alternating order (A B, B A,
...), each importing hotpath from its tree (``PYTHONPATH``) and the measuring code from this
``bench``. A worker measures the primary alone, spread over 2 replicas (``eventual``) and
routed to the primary (``strong``), ``--reps`` times in that order, and where the spread reads
went. ``--churn N``: N one-row updates first, as part 2 of the full bench leaves dead rows
(the reads that follow prune them, writing WAL). The machine is shared: compare ratios within
a worker and medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from hotpath.routing import routed_sessionmaker
from hotpath.stack import LocalStack

from .routing import ROWS, SET, _reads_per_node, _seed, _throughput, replica_sets


def _churn(primary: Engine, replica_engines: list[Engine], updates: int) -> None:
    rng = random.Random()
    with primary.connect() as conn:
        for i in range(updates):
            conn.execute(SET, {"id": rng.randint(1, ROWS), "name": f"churn{i}"})
            conn.commit()
        end = conn.execute(text("SELECT pg_current_wal_flush_lsn()")).scalar_one()
    for engine in replica_engines:  # caught up, as the full bench waits before part 3
        with engine.connect() as conn:
            replayed = text("SELECT pg_last_wal_replay_lsn() >= CAST(:end AS pg_lsn)")
            while not conn.execute(replayed, {"end": end}).scalar_one():
                time.sleep(0.01)


def worker(urls: list[str], seconds: float, reps: int, churn: int) -> dict[str, Any]:
    import hotpath  # which tree is measured: the one on PYTHONPATH

    primary = create_engine(urls[0], pool_size=10)
    replica_engines = [create_engine(u, pool_size=10) for u in urls[1:]]
    rates: dict[str, list[float]] = {"alone": [], "spread": [], "strong": []}
    on_primary: list[float] = []  # share of the spread reads the primary served
    sets = replica_sets(primary, replica_engines)
    with sets[0] as replicas, sets[1]:
        if churn:
            _churn(primary, replica_engines, churn)
        makers: dict[str, Callable[[], Session]] = {
            "alone": lambda: Session(primary),
            "spread": routed_sessionmaker(replicas, consistency="eventual"),
            "strong": routed_sessionmaker(replicas, consistency="strong"),
        }
        for _ in range(reps):
            for name, make in makers.items():
                before = _reads_per_node(replicas)
                rates[name].append(_throughput(make, seconds)[1])
                if name == "spread":
                    after = _reads_per_node(replicas)
                    served = {node: after[node] - before[node] for node in after}
                    on_primary.append(served["primary"] / max(1, sum(served.values())))
    for engine in [primary, *replica_engines]:
        engine.dispose()
    return {"hotpath": hotpath.__file__, "rates": rates, "on_primary": on_primary}


def _spread(values: list[float], digits: int = 2) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._routing_ab")
    parser.add_argument("trees", nargs="*", help="src directories to compare (A B ...)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--churn", type=int, default=0, help="one-row updates before measuring")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(json.loads(args.worker), args.seconds, args.reps, args.churn)
        print(json.dumps(result))
        return
    results: dict[str, list[dict[str, Any]]] = {tree: [] for tree in args.trees}
    with LocalStack(replicas=2, redis=False) as stack:
        primary = create_engine(stack.primary.url)
        _seed(primary)
        primary.dispose()
        stack.wait_replicas_caught_up(timeout=30)
        urls = json.dumps([stack.primary.url, *(r.url for r in stack.replicas)])
        for round_ in range(args.rounds):
            order = args.trees if round_ % 2 == 0 else args.trees[::-1]
            for tree in order:
                command = [sys.executable, "-m", "bench._routing_ab", "--worker", urls]
                command += ["--seconds", str(args.seconds), "--reps", str(args.reps)]
                command += ["--churn", str(args.churn)]
                out = subprocess.run(
                    command,
                    env={**os.environ, "PYTHONPATH": tree},
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                result = json.loads(out.strip().splitlines()[-1])
                results[tree].append(result)
                rates = result["rates"]
                ratios = [s / a for s, a in zip(rates["spread"], rates["alone"], strict=True)]
                print(
                    f"round {round_} {result['hotpath']}: alone "
                    f"{[round(r) for r in rates['alone']]} spread "
                    f"{[round(r) for r in rates['spread']]} strong "
                    f"{[round(r) for r in rates['strong']]} spread/alone "
                    f"{[round(r, 2) for r in ratios]} spread on the primary "
                    f"{[f'{s:.0%}' for s in result['on_primary']]}",
                    flush=True,
                )
    print(
        "\n| tree | workers | alone reads/s | spread reads/s | spread/alone | strong/alone "
        "| spread reads on the primary |"
    )
    print("|---|---:|---|---|---|---|---|")
    for tree, rows in results.items():
        alone = [r for row in rows for r in row["rates"]["alone"]]
        spread = [r for row in rows for r in row["rates"]["spread"]]
        strong = [r for row in rows for r in row["rates"]["strong"]]
        shares = [s for row in rows for s in row["on_primary"]]
        print(
            f"| {tree} | {len(rows)} | {_spread(alone, 0)} | {_spread(spread, 0)} | "
            f"{_spread([s / a for s, a in zip(spread, alone, strict=True)])} | "
            f"{_spread([s / a for s, a in zip(strong, alone, strict=True)])} | "
            f"{_spread(shares)} |"
        )


if __name__ == "__main__":
    main()
