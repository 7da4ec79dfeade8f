"""Online conversion of a live table into a partitioned one, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from hotpath.partitions import (
    ConversionError,
    ConversionResult,
    Phase,
    Progress,
    conversion_state,
    convert_to_partitioned,
    convert_to_partitioned_async,
    resume_conversion,
)
from hotpath.testing import ModuleDatabase

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
ROWS = 3000


def _make_events(engine: Engine, rows: int = ROWS) -> None:
    with engine.begin() as conn:
        for name in ("events", "events_unpartitioned", "events_old", "events_hotpath_new"):
            conn.execute(text(f"DROP TABLE IF EXISTS {name} CASCADE"))
        conn.execute(text("DROP TABLE IF EXISTS hotpath_partition_conversions"))
        conn.execute(
            text(
                "CREATE TABLE events (id bigserial, created_at timestamptz NOT NULL,"
                " kind text NOT NULL, amount int, PRIMARY KEY (id, created_at))"
            )
        )
        conn.execute(text("CREATE INDEX ix_events_kind ON events (kind)"))
        conn.execute(
            text(
                "INSERT INTO events (created_at, kind, amount)"
                " SELECT :start + (g * interval '1 hour'), 'k' || (g % 7), g"
                " FROM generate_series(1, :n) g"
            ),
            {"start": START, "n": rows},
        )


def checksum(engine: Engine, table: str) -> tuple[int, int, int]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                f"SELECT count(*), count(DISTINCT id),"
                f" coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM {table} t"
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


@pytest.fixture
def engine(hotpath_db: ModuleDatabase) -> Iterator[Engine]:
    engine = create_engine(hotpath_db.url)
    _make_events(engine)
    yield engine
    engine.dispose()


def test_converts_a_quiet_table(engine: Engine) -> None:
    before = checksum(engine, "events")
    seen: list[Progress] = []
    result = convert_to_partitioned(
        engine, "events", by="created_at", interval="month", batch_rows=500, progress=seen.append
    )
    assert checksum(engine, "events") == before
    assert checksum(engine, "events_unpartitioned") == before
    assert result.copied == ROWS
    assert seen[-1].phase is Phase.DONE
    with engine.connect() as conn:
        kind = conn.execute(
            text("SELECT relkind::text FROM pg_class WHERE oid = 'events'::regclass")
        ).scalar()
        assert kind == "p"
        # the serial default still works and the sequence now belongs to the new table
        new_id = conn.execute(
            text("INSERT INTO events (created_at, kind) VALUES (now(), 'x') RETURNING id")
        ).scalar()
        assert new_id == ROWS + 1
        conn.commit()
        indexes = set(
            conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'events'")
            ).scalars()
        )
        assert {"events_pkey", "ix_events_kind"} <= indexes


class Writer:
    """Inserts, updates (some moving a row to another month) and deletes rows of ``events``
    while a conversion runs, keeping the state every committed write leaves behind."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.connect() as conn:
            self.expected = {
                int(r[0]): (r[1], r[2], r[3])
                for r in conn.execute(text("SELECT id, created_at, kind, amount FROM events"))
            }
        self.ops = 0
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)

    def step(self) -> None:
        n = self.ops
        ids = sorted(self.expected)
        with self.engine.begin() as conn:
            if n % 3 == 0 or not ids:
                at = START + timedelta(hours=n % 5000, minutes=7)
                row = conn.execute(
                    text(
                        "INSERT INTO events (created_at, kind, amount) VALUES (:a, 'w', :n)"
                        " RETURNING id"
                    ),
                    {"a": at, "n": n},
                ).scalar_one()
                self.expected[int(row)] = (at, "w", n)
            elif n % 3 == 1:
                victim = ids[(n * 7919) % len(ids)]
                at, kind, _ = self.expected[victim]
                if n % 2:  # moves the row to another month (and partition)
                    at = at + timedelta(days=40)
                conn.execute(
                    text("UPDATE events SET amount = :n, created_at = :a WHERE id = :id"),
                    {"n": -n, "a": at, "id": victim},
                )
                self.expected[victim] = (at, kind, -n)
            else:
                victim = ids[(n * 104729) % len(ids)]
                conn.execute(text("DELETE FROM events WHERE id = :id"), {"id": victim})
                del self.expected[victim]
        with self.changed:
            self.ops += 1
            self.changed.notify_all()

    def _loop(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            with self.changed:
                self.changed.notify_all()

    def wait_for(self, more: int) -> None:
        """Block until the writer has committed ``more`` writes after this call."""
        with self.changed:
            target = self.ops + more
            assert self.changed.wait_for(
                lambda: self.ops >= target or self.error is not None, timeout=60
            )
        assert self.error is None, self.error

    def assert_matches(self, table: str = "events") -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(text(f"SELECT id, created_at, kind, amount FROM {table}")).all()
        ids = [int(r[0]) for r in rows]
        assert len(ids) == len(set(ids)), "duplicated rows"
        actual = {int(r[0]): (r[1], r[2], r[3]) for r in rows}
        missing = set(self.expected) - set(actual)
        extra = set(actual) - set(self.expected)
        stale = {i for i in set(actual) & set(self.expected) if actual[i] != self.expected[i]}
        assert (missing, extra, stale) == (set(), set(), set())


def test_conversion_under_a_concurrent_writer_loses_and_duplicates_nothing(
    engine: Engine,
) -> None:
    with Writer(engine) as writer:
        # every batch waits for fresh writes: the writer runs through every phase and the swap
        result = convert_to_partitioned(
            engine,
            "events",
            by="created_at",
            interval="month",
            batch_rows=250,
            progress=lambda _: writer.wait_for(5),
        )
        writer.wait_for(20)  # writes after the swap reach the new table
    assert writer.error is None
    assert result.replayed > 0
    writer.assert_matches("events")
    count, distinct, _ = checksum(engine, "events")
    assert count == distinct == len(writer.expected)


def test_refuses_a_primary_key_without_the_partition_key(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE events DROP CONSTRAINT events_pkey"))
        conn.execute(text("ALTER TABLE events ADD PRIMARY KEY (id)"))
    with pytest.raises(ConversionError, match=r"extend_primary_key=True"):
        convert_to_partitioned(engine, "events", by="created_at", interval="month")
    result = convert_to_partitioned(
        engine, "events", by="created_at", interval="month", extend_primary_key=True
    )
    assert result.copied == ROWS
    with engine.connect() as conn:
        pk = conn.execute(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = 'events'::regclass AND contype = 'p'"
            )
        ).scalar()
    assert pk == "PRIMARY KEY (id, created_at)"


@pytest.mark.parametrize(
    "bad",
    [
        {"by": "created_at"},
        {"by": "created_at", "interval": "fortnight"},
        {"by": "created_at", "interval": "month", "hash_partitions": 4},
        {"by": "id", "hash_partitions": 1},
        {"by": "created_at", "interval": "month", "batch_rows": 0},
        {"by": "nope", "interval": "month"},
        {"by": "kind", "interval": "month"},
    ],
)
def test_bad_options_are_refused_with_the_fix(engine: Engine, bad: dict[str, object]) -> None:
    with pytest.raises(ConversionError) as info:
        convert_to_partitioned(engine, "events", **bad)  # type: ignore[arg-type]
    assert str(info.value)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('events_hotpath_new')")).scalar() is None


# The converting process: it stops itself with SIGKILL at the chosen point, after telling the
# test (which then commits writes the resumed run must replay) and hearing back.
_KILLED_CONVERTER = """
import os, signal, sys
from sqlalchemy import create_engine
from hotpath.partitions import _convert, convert_to_partitioned

url, point = sys.argv[1], sys.argv[2]

def die():
    print("ready", flush=True)
    sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGKILL)

def progress(p):
    if point == "prepared" and p.phase.value == "copying" and p.copied == 0:
        die()
    if point == "copying" and p.copied >= 1000:
        die()
    if point == "replaying" and p.phase.value == "replaying" and p.replayed > 0:
        die()

swapping = []
original_swap, original_replay = _convert._swap, _convert._replay_batch

def swap(conn, state):
    swapping.append(True)
    return original_swap(conn, state)

def replay(conn, state, limit):
    if point == "swap" and swapping:
        die()  # inside the swap's transaction, holding ACCESS EXCLUSIVE on the table
    return original_replay(conn, state, limit)

_convert._swap, _convert._replay_batch = swap, replay
convert_to_partitioned(create_engine(url), "events", by="created_at", interval="month",
                       batch_rows=200, progress=progress)
print("finished", flush=True)
"""


@pytest.mark.faults
@pytest.mark.parametrize("point", ["prepared", "copying", "replaying", "swap"])
def test_kill_9_during_the_move_resumes_to_the_same_result(
    engine: Engine, hotpath_db: ModuleDatabase, point: str
) -> None:
    with Writer(engine) as writer:
        writer.wait_for(10)  # some changes logged for the replay before the kill
        child = subprocess.Popen(
            [sys.executable, "-c", _KILLED_CONVERTER, hotpath_db.url, point],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        if point != "swap":  # in the swap the child holds the table's lock: writers wait
            writer.wait_for(10)  # written after the killed run's last commit
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == -signal.SIGKILL
        state = conversion_state(engine, "events")
        assert state is not None
        assert state.phase is not Phase.DONE
        result = resume_conversion(engine, "events", progress=lambda _: writer.wait_for(3))
        writer.wait_for(10)
    assert result.resumed
    writer.assert_matches("events")
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT relkind::text FROM pg_class WHERE oid = 'events'::regclass")
            ).scalar()
            == "p"
        )
        leftovers = conn.execute(
            text(
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'hotpath_log_%'"
                " OR relname = 'events_hotpath_new'"
            )
        ).scalar()
    assert leftovers == 0


def _hotpath(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotpath", "partitions", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_swap_blocked_by_a_long_reader_gives_up_then_cli_resume_finishes(
    engine: Engine, hotpath_db: ModuleDatabase
) -> None:
    before = checksum(engine, "events")
    with engine.connect() as reader:
        reader.execute(text("SELECT count(*) FROM events"))  # holds ACCESS SHARE until rollback
        with pytest.raises(ConversionError, match="not granted within 50 ms"):
            convert_to_partitioned(
                engine,
                "events",
                by="created_at",
                interval="month",
                lock_timeout_ms=50,
                swap_attempts=2,
            )
        reader.rollback()
    state = conversion_state(engine, "events")
    assert state is not None
    assert state.phase is Phase.REPLAYING
    assert state.copied == ROWS
    with engine.connect() as conn:  # the source is untouched and still the live table
        assert (
            conn.execute(
                text("SELECT relkind::text FROM pg_class WHERE oid = 'events'::regclass")
            ).scalar()
            == "r"
        )
    done = _hotpath("convert", hotpath_db.url, "events", "--resume")
    assert done.returncode == 0, done.stderr
    assert "events is partitioned" in done.stdout
    assert "events_unpartitioned" in done.stdout
    assert checksum(engine, "events") == before


def test_cli_convert_and_one_line_errors(engine: Engine, hotpath_db: ModuleDatabase) -> None:
    for args, message in [
        (["--interval", "month"], "name the column"),
        # (the other option checks are ConvertOptions', tested in-process above)
        (["--resume"], "no conversion of public.events to resume"),
    ]:
        bad = _hotpath("convert", hotpath_db.url, "events", *args)
        assert bad.returncode == 2, bad.stderr
        assert message in bad.stderr
        assert "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    ok = _hotpath(
        "convert",
        hotpath_db.url,
        "events",
        "--by",
        "id",
        "--hash-partitions",
        "4",
        "--batch-rows",
        "700",
    )
    assert ok.returncode == 0, ok.stderr
    assert "4 partitions" in ok.stdout
    info = _hotpath("hash-info", hotpath_db.url, "events", "--exact")
    assert info.returncode == 0
    assert "modulus 4" in info.stdout
    assert (
        sum(int(line.split()[-2].replace(",", "")) for line in info.stdout.splitlines()[1:]) == ROWS
    )


def test_async_conversion_matches_the_source(engine: Engine, hotpath_db: ModuleDatabase) -> None:
    before = checksum(engine, "events")
    steps: list[Phase] = []

    async def go() -> ConversionResult:
        aengine = create_async_engine(hotpath_db.async_url)
        try:
            return await convert_to_partitioned_async(
                aengine,
                "events",
                by="id",
                hash_partitions=3,
                batch_rows=1000,
                progress=lambda p: steps.append(p.phase),
            )
        finally:
            await aengine.dispose()

    result = asyncio.run(go())
    assert (result.copied, len(result.partitions)) == (ROWS, 3)
    assert steps[0] is Phase.COPYING
    assert steps[-1] is Phase.DONE
    assert checksum(engine, "events") == before
