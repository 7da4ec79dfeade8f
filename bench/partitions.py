"""Online conversion of a live table into a partitioned one, and what partitioning buys.

A table of 1,000,000 rows (100,000 with ``--quick``; ``--rows N`` up to 10,000,000) spread
over 12 months, primary key (id, created_at), an index on created_at. A writer thread
(insert + update + delete, one transaction each) runs before, during and after
``convert_to_partitioned(..., by="created_at", interval="month")``. Reported: rows copied
per second while the writer runs, the writer's p99 before vs during the move, the final
swap's lock time, and a one-day time-range query and a one-month retention DELETE before
(plain table + index) vs after (partition pruning; DETACH + DROP of a partition). The
retention statements run in a transaction that is rolled back, so both sides see the same
data.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, create_engine, text

from hotpath.partitions import Phase, Progress, convert_to_partitioned
from hotpath.stack import LocalStack

from ._harness import Series, report, time_once

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
MAX_ROWS = 10_000_000
BATCH_ROWS = 10_000


def _load(engine: Engine, rows: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE events (id bigserial, created_at timestamptz NOT NULL,"
                " kind text NOT NULL, amount int NOT NULL, PRIMARY KEY (id, created_at))"
            )
        )
        conn.execute(
            text(
                "INSERT INTO events (created_at, kind, amount)"
                " SELECT :start + (g * (interval '365 days' / :n)), 'k' || (g % 13), g % 1000"
                " FROM generate_series(1, :n) g"
            ),
            {"start": START, "n": rows},
        )
        conn.execute(text("CREATE INDEX events_created_at ON events (created_at)"))
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE events"))


class _Writer:
    """One insert, one update and one delete per loop, each its own transaction; latencies
    are kept per phase ("before", "during", "after")."""

    def __init__(self, engine: Engine, rows: int) -> None:
        self.engine, self.rows = engine, rows
        self.phase = "before"
        self.samples: dict[str, list[float]] = {"before": [], "during": [], "after": []}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        n = 0
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                n += 1
                victim = (n * 7919) % self.rows + 1
                at = START + timedelta(days=(n * 13) % 365)
                for sql, params in (
                    (
                        "INSERT INTO events (created_at, kind, amount) VALUES (:a, 'w', 1)",
                        {"a": at},
                    ),
                    ("UPDATE events SET amount = amount + 1 WHERE id = :v", {"v": victim}),
                    ("DELETE FROM events WHERE id = :v", {"v": victim + 1}),
                ):
                    began = time.perf_counter()
                    conn.execute(text(sql), params)
                    conn.commit()
                    self.samples[self.phase].append(time.perf_counter() - began)


def _time_range(engine: Engine) -> Series:
    day = START + timedelta(days=200)
    series = Series("")
    with engine.connect() as conn:
        for _ in range(30):
            series.samples.append(
                time_once(
                    lambda: conn.execute(
                        text(
                            "SELECT count(*), sum(amount) FROM events"
                            " WHERE created_at >= :a AND created_at < :b"
                        ),
                        {"a": day, "b": day + timedelta(days=1)},
                    ).all()
                )
            )
    return series


def _retention(engine: Engine, partitioned: bool) -> Series:
    cutoff = START + timedelta(days=31)
    series = Series("")
    for _ in range(3):
        with engine.connect() as conn:
            transaction = conn.begin()
            if partitioned:
                statements = [
                    "ALTER TABLE events DETACH PARTITION events_p20250101",
                    "DROP TABLE events_p20250101",
                ]
            else:
                statements = [f"DELETE FROM events WHERE created_at < '{cutoff.isoformat()}'"]
            began = time.perf_counter()
            for sql in statements:
                conn.execute(text(sql))
            series.samples.append(time.perf_counter() - began)
            transaction.rollback()  # the same data for the next round and the other side
    return series


def run(quick: bool, rows: int | None = None) -> str:
    rows = rows or (100_000 if quick else 1_000_000)
    if not 1_000 <= rows <= MAX_ROWS:
        raise SystemExit(f"--rows {rows}: give 1,000 to {MAX_ROWS:,}")
    with LocalStack(replicas=0, redis=False) as stack:
        engine = create_engine(stack.primary.url, pool_size=4)
        _load(engine, rows)
        range_before = _time_range(engine)
        retention_before = _retention(engine, partitioned=False)
        writer = _Writer(engine, rows)
        writer.thread.start()
        while len(writer.samples["before"]) < 1500:  # a baseline of the writer alone
            time.sleep(0.05)
        writer.phase = "during"
        copy_started: list[float] = []
        copy_ended: list[float] = []

        def progress(step: Progress) -> None:
            if step.phase is Phase.COPYING and not copy_started:
                copy_started.append(time.perf_counter())
            if step.phase is not Phase.COPYING and not copy_ended:
                copy_ended.append(time.perf_counter())

        began = time.perf_counter()
        result = convert_to_partitioned(
            engine,
            "events",
            by="created_at",
            interval="month",
            batch_rows=BATCH_ROWS,
            progress=progress,
        )
        total_s = time.perf_counter() - began
        writer.phase = "after"
        while len(writer.samples["after"]) < 300:
            time.sleep(0.05)
        writer.stop.set()
        writer.thread.join()
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE events"))
        range_after = _time_range(engine)
        retention_after = _retention(engine, partitioned=True)
        engine.dispose()
    copy_s = copy_ended[0] - copy_started[0]
    lines = [
        f"{rows:,} rows, batches of {BATCH_ROWS:,}, {len(result.partitions)} partitions, "
        f"a writer (insert/update/delete) running throughout.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| rows copied per second (writer running) | {result.copied / copy_s:,.0f} |",
        f"| whole conversion (copy + replay + swap) | {total_s:,.1f} s |",
        f"| changes captured and replayed | {result.replayed:,} |",
        f"| final swap: ACCESS EXCLUSIVE held | {result.swap_lock_ms:,.1f} ms |",
    ]
    writer_series = []
    for phase in ("before", "during", "after"):
        samples = writer.samples[phase]
        writer_series.append(Series(f"writer {phase} the move", samples))
    table = report("writer statement latency", writer_series, "writer before the move")
    range_before.name, range_after.name = "unpartitioned + index", "partitioned (pruned)"
    ranges = report("one-day range query", [range_before, range_after], "unpartitioned + index")
    retention_before.name = "DELETE one month (unpartitioned)"
    retention_after.name = "DETACH + DROP one partition"
    retention = report(
        "retention of one month",
        [retention_before, retention_after],
        "DELETE one month (unpartitioned)",
    )
    return "\n".join(lines) + "\n\n" + table + "\n\n" + ranges + "\n\n" + retention
