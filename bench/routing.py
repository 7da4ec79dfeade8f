"""Replica routing: overhead, replica share under read-your-writes, read throughput.

Side by side in one run, on a fresh ``LocalStack(replicas=2, redis=False)``:

1. Per-statement routing overhead on primary-key SELECTs (one session, many statements):
   a plain ``Session`` on a replica engine (baseline) against SQLAlchemy's documented
   ``get_bind`` recipe and hotpath's routed session (``eventual``, ``read_your_writes``, and
   without the read-retry hook). Target: <= 1.05x.
2. A 10%-writes workload of one user (writes, reads of what it wrote and of other rows; a
   request every 100 ms, 200 ms or 1 s on a virtual clock): the share of reads served by
   replicas and the stale reads of the user's own writes, for hotpath's LSN tokens (``fast``
   and ``wait``) against a Rails-style 2 s stickiness after any write (``DatabaseSelector``'s
   delay) and naive routing; then again with one replica's replay paused (real lag).
   Target: LSN keeps >= 3x more reads on replicas than the 2 s delay, at 0 violations.
3. Read throughput of 8 threads doing PK SELECTs (a session each): the primary alone, the
   same through hotpath's router (``strong``: the router's cost alone), and routed over 2
   replicas, with the share of those reads each node served (a fallback to the primary
   measures something else). Every server shares the machine's cores here, so replicas
   cannot add capacity; on separate hosts they do.

``--part overhead|share|throughput`` runs one part (``bench._routing_ab`` compares part 3
between source trees).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from hotpath.routing import ReplicaSet, routed_sessionmaker, use_token
from hotpath.stack import LocalStack

from ._harness import Series, console, report

ROWS = 1000
GET = text("SELECT name FROM products WHERE id = :id")
SET = text("UPDATE products SET name = :name WHERE id = :id")


def _seed(primary: Engine) -> None:
    with primary.begin() as conn:
        conn.execute(text("CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL)"))
        conn.execute(
            text("INSERT INTO products SELECT g, 'p' || g FROM generate_series(1, :n) g"),
            {"n": ROWS},
        )


class _RecipeSession(Session):
    """SQLAlchemy's documented ``get_bind`` routing recipe: flushes and DML to the leader,
    everything else to a random follower (no lag, health or read-your-writes handling)."""

    leader: Engine
    followers: list[Engine]

    def get_bind(self, mapper: Any = None, *, clause: Any = None, **kw: Any) -> Engine:
        if self._flushing or getattr(clause, "is_dml", False):
            return self.leader
        return random.choice(self.followers)


def _overhead(stack: LocalStack, replicas: ReplicaSet, n: int) -> str:
    # The baseline is an engine hotpath never hooked, so event costs count against hotpath.
    direct = create_engine(stack.replicas[0].url)
    recipe_engines = [create_engine(r.url) for r in stack.replicas]
    _RecipeSession.leader = create_engine(stack.primary.url)
    _RecipeSession.followers = recipe_engines[:1]  # same replica as the others: fair
    eventual = routed_sessionmaker(replicas, consistency="eventual")
    ryw = routed_sessionmaker(replicas)
    no_retry = routed_sessionmaker(replicas, retry_reads=False)
    contenders: dict[str, Callable[[], Session]] = {
        "direct replica engine": lambda: Session(direct),
        "SQLAlchemy get_bind recipe": _RecipeSession,
        "hotpath eventual": eventual,
        "hotpath read_your_writes": ryw,
        "hotpath read_your_writes, retry_reads=False": no_retry,
    }
    wall = {name: Series(name) for name in contenders}
    cpu = {name: Series(name) for name in contenders}
    for table in (wall, cpu):
        table["SQLAlchemy get_bind recipe"].note = "no lag/health/RYW"
        table["hotpath read_your_writes, retry_reads=False"].note = "no do_orm_execute hook"
    rng = random.Random(1)
    rounds = max(20, n // 100)
    # Many short interleaved rounds: a burst of load from elsewhere on the machine lands on
    # every contender alike instead of on one of them.
    for _ in range(rounds):
        for name, make in contenders.items():
            with use_token(None), make() as session:
                session.execute(GET, {"id": 1}).scalar_one()  # connect outside the timing
                for _ in range(n // rounds):
                    began, began_cpu = time.perf_counter(), time.thread_time()
                    session.execute(GET, {"id": rng.randint(1, ROWS)}).scalar_one()
                    cpu[name].samples.append(time.thread_time() - began_cpu)
                    wall[name].samples.append(time.perf_counter() - began)
    for engine in [direct, _RecipeSession.leader, *recipe_engines]:
        engine.dispose()
    baseline = "direct replica engine"
    wall_md = report("PK SELECT per statement, wall", list(wall.values()), baseline, "us")
    cpu_md = report("PK SELECT per statement, client CPU", list(cpu.values()), baseline, "us")
    return (
        f"Wall clock (round trip included):\n\n{wall_md}\n\n"
        "Client CPU of the calling thread (what routing adds; less sensitive to load from "
        f"other processes):\n\n{cpu_md}"
    )


def _workload(replicas: ReplicaSet, blind: ReplicaSet, ops: int, pace_s: float) -> tuple[str, str]:
    """One user: 10% writes, reads of its own rows (half) and others', one request per
    ``pace_s`` on a virtual clock (the 2 s rule reads it), 2 ms apart in real time: that
    compresses the time replicas get to catch up, which only makes the LSN tokens' job harder.
    """
    strategies: dict[str, Callable[[float], Session]] = {}
    ryw_fast = routed_sessionmaker(replicas, consistency="read_your_writes")
    ryw_wait = routed_sessionmaker(replicas, mode="wait", wait_timeout_s=0.05)
    eventual = routed_sessionmaker(blind, consistency="eventual")
    strong = routed_sessionmaker(blind, consistency="strong")
    strategies["hotpath LSN token (fast)"] = lambda _since: ryw_fast()
    strategies["hotpath LSN token (wait 50 ms)"] = lambda _since: ryw_wait()
    strategies["Rails-style 2 s delay"] = lambda since: strong() if since < 2.0 else eventual()
    strategies["naive (always replica)"] = lambda _since: eventual()
    latency = {name: Series(name) for name in strategies}
    rows = []
    primary_port = replicas.primary.url.port
    for name, make in strategies.items():
        rng = random.Random(2)
        clock, last_write = 0.0, -1e9
        mine: dict[int, str] = {}
        on_replica = total = stale = 0
        with use_token(None):
            for op in range(ops):
                if rng.random() < 0.10:
                    row, value = rng.randint(1, ROWS), f"v{op}-{time.monotonic_ns()}"
                    with make(0.0) as session:
                        session.execute(SET, {"id": row, "name": value})
                        session.commit()
                    mine[row], last_write = value, clock
                else:
                    own = mine and rng.random() < 0.5
                    row = rng.choice(list(mine)) if own else rng.randint(1, ROWS)
                    began = time.perf_counter()
                    with make(clock - last_write) as session:
                        seen = session.execute(GET, {"id": row}).scalar_one()
                        port = session.execute(text("SELECT inet_server_port()")).scalar_one()
                    latency[name].samples.append(time.perf_counter() - began)
                    total += 1
                    on_replica += port != primary_port
                    stale += row in mine and seen != mine[row]
                clock += pace_s
                time.sleep(0.002)
        share = on_replica / total
        rows.append((name, total, share, stale))
    rails_share = next(r[2] for r in rows if r[0].startswith("Rails"))
    lines = [
        "| strategy | reads | on replicas | x Rails 2 s | stale own reads |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, total, share, stale in rows:
        ratio = f"{share / rails_share:.1f}" if rails_share else "inf"
        lines.append(f"| {name} | {total} | {share:.1%} | {ratio} | {stale} |")
    console.print("\n".join(lines))
    timing = report(
        "read latency in the workload", list(latency.values()), "naive (always replica)"
    )
    return "\n".join(lines), timing


def _throughput(
    make: Callable[[], Session], seconds: float, threads: int = 8
) -> tuple[Series, float]:
    series = Series("")
    stop = threading.Event()
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        local: list[float] = []
        while not stop.is_set():
            began = time.perf_counter()
            with make() as session:
                session.execute(GET, {"id": rng.randint(1, ROWS)}).scalar_one()
            local.append(time.perf_counter() - began)
        with lock:
            series.samples.extend(local)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join()
    return series, len(series.samples) / seconds


PARTS = ("overhead", "share", "throughput")


def throughput(primary: Engine, replicas: ReplicaSet, seconds: float) -> str:
    """Part 3: 8 threads of PK SELECTs on the primary alone, routed (``strong``) and spread
    over the replicas (``eventual``), one after the other."""
    alone, alone_rate = _throughput(lambda: Session(primary), seconds)
    alone.name, alone.note = "primary alone", f"{alone_rate:.0f} reads/s"
    before = _reads_per_node(replicas)
    spread, spread_rate = _throughput(
        routed_sessionmaker(replicas, consistency="eventual"), seconds
    )
    served = {name: n - before[name] for name, n in _reads_per_node(replicas).items()}
    shares = ", ".join(f"{name} {n / sum(served.values()):.0%}" for name, n in served.items())
    spread.name = "hotpath over 2 replicas"
    spread.note = f"{spread_rate:.0f} reads/s ({spread_rate / alone_rate:.2f}x; {shares})"
    routed, routed_rate = _throughput(routed_sessionmaker(replicas, consistency="strong"), seconds)
    routed.name = "hotpath, all to the primary (strong)"
    routed.note = f"{routed_rate:.0f} reads/s ({routed_rate / alone_rate:.2f}x)"
    return report("read latency, 8 threads", [alone, routed, spread], "primary alone")


def _reads_per_node(replicas: ReplicaSet) -> dict[str, int]:
    # Where the spread reads went: one replica ejected, or a fallback to the primary, changes
    # what the throughput measures.
    return {node.name: node.reads for node in replicas.status()}


def replica_sets(primary: Engine, replica_engines: list[Engine]) -> tuple[ReplicaSet, ReplicaSet]:
    """The bench's two sets: the routed one, and a lag-blind one for the naive and Rails-style
    contenders (its probes run during every part, as they do in a full run)."""
    return (
        ReplicaSet(primary, replica_engines, probe_interval_s=0.2),
        ReplicaSet(primary, replica_engines, max_lag_s=3600, policy="random", probe_interval_s=1),
    )


def run(quick: bool, part: str | None = None) -> str:
    """Every part, or only ``part`` (one of :data:`PARTS`)."""
    if part is not None and part not in PARTS:
        raise SystemExit(f"--part {part!r}: one of {', '.join(PARTS)}")
    parts = PARTS if part is None else (part,)
    sections = []
    with LocalStack(replicas=2, redis=False) as stack:
        primary = create_engine(stack.primary.url, pool_size=10)
        replica_engines = [create_engine(r.url, pool_size=10) for r in stack.replicas]
        _seed(primary)
        stack.wait_replicas_caught_up(timeout=30)
        engines: list[Any] = [primary, *replica_engines]
        sets = replica_sets(primary, replica_engines)
        with sets[0] as replicas, sets[1] as blind:
            if "overhead" in parts:
                overhead = _overhead(stack, replicas, 1000 if quick else 8000)
                sections.append(f"### per-statement overhead (PK SELECT)\n\n{overhead}")
            if "share" in parts:
                sections.extend(_shares(stack, replicas, blind, quick))
            if "throughput" in parts:
                table = throughput(primary, replicas, 1.5 if quick else 5.0)
                sections.append(f"### read throughput, 8 threads\n\n{table}")
        for engine in engines:
            engine.dispose()
    return "\n\n".join(sections) + "\n"


def _shares(stack: LocalStack, replicas: ReplicaSet, blind: ReplicaSet, quick: bool) -> list[str]:
    ops = 250 if quick else 1200
    sections = []
    for pace in (0.1, 0.2, 1.0):
        shares, timing = _workload(replicas, blind, ops, pace)
        sections.append(
            f"### replica share, 10% writes, one user, a request every {pace * 1000:.0f} ms"
            f" (loopback replication)\n\n{shares}\n\nRead latency:\n\n{timing}"
        )
    stack.replicas[0].pause_replay()  # real lag on one replica for the second pass
    try:
        lag_shares, lag_timing = _workload(replicas, blind, ops, 0.2)
    finally:
        stack.replicas[0].resume_replay()
    stack.wait_replicas_caught_up(timeout=30)
    sections.append(
        "### the same (200 ms) with replica1's replay paused for the whole pass: real lag,"
        " longer than the 2 s window\n\n"
        f"{lag_shares}\n\nRead latency:\n\n{lag_timing}"
    )
    return sections
