"""No stale sets: readers load hot rows from PostgreSQL through the cache while writers update
them and invalidate (key deletes or tag invalidations); once everyone stops, every value any
cache serves equals the database. Plain cache-aside (GET, load, SET; writers UPDATE then DEL)
under the same race leaves stale entries behind for good."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from hotpath.cache import AsyncCache
from hotpath.testing import ModuleDatabase

from ..helpers import eventually, eventually_async
from ._helpers import await_until, wait_until
from .conftest import MakeAsyncCache, MakeCache

pytestmark = pytest.mark.timeout(90)

ROWS = 8
READERS, WRITERS = 8, 2
# The race runs until this many writes (a count, not a duration: a busy machine only makes
# it longer), then the readers run on for READS_AFTER reads after the last write.
RACE_WRITES = 150
READS_AFTER = 200
RACE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def engine(hotpath_db: ModuleDatabase) -> Iterator[Engine]:
    engine = create_engine(hotpath_db.url, pool_size=READERS + WRITERS + 2)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE hot (id int PRIMARY KEY, v int NOT NULL)"))
    yield engine
    engine.dispose()


@pytest.fixture
def rows(engine: Engine) -> Engine:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM hot"))
        conn.execute(text("INSERT INTO hot SELECT g, 0 FROM generate_series(1, :n) g"), {"n": ROWS})
    return engine


def database(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        return {int(row[0]): int(row[1]) for row in conn.execute(text("SELECT id, v FROM hot"))}


def read_row(engine: Engine, row: int) -> int:
    with engine.connect() as conn:
        value = conn.execute(text("SELECT v FROM hot WHERE id = :id"), {"id": row}).scalar_one()
    time.sleep(random.uniform(0.005, 0.03))  # a slow loader widens the race
    return int(value)


def update_row(engine: Engine, row: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE hot SET v = v + 1 WHERE id = :id"), {"id": row})


def race(
    read: Callable[[int], object], write: Callable[[int], None], readers: int = READERS
) -> tuple[int, int]:
    """Readers and writers on ROWS hot rows until RACE_WRITES writes, then writers stop,
    readers run on for READS_AFTER reads, then everyone stops. Returns (reads, writes)."""
    stop_writers, stop_readers = threading.Event(), threading.Event()
    counts = {"reads": 0, "writes": 0}
    errors: list[BaseException] = []

    def reader(n: int) -> None:
        try:
            while not stop_readers.is_set():
                read(random.randint(1, ROWS))
                counts["reads"] += 1
        except BaseException as error:
            errors.append(error)

    def writer(n: int) -> None:
        try:
            while not stop_writers.is_set():
                write(random.randint(1, ROWS))
                counts["writes"] += 1
                time.sleep(random.uniform(0, 0.004))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(readers)]
    threads += [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    try:
        eventually(
            lambda: counts["writes"] >= RACE_WRITES or bool(errors), RACE_TIMEOUT_S, "writes"
        )
        stop_writers.set()
        for t in threads[readers:]:
            t.join(10)
        after_writes = counts["reads"]
        eventually(
            lambda: counts["reads"] >= after_writes + READS_AFTER or bool(errors),
            RACE_TIMEOUT_S,
            "reads after the last write",
        )
    finally:
        stop_writers.set()
        stop_readers.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    return counts["reads"], counts["writes"]


def key(row: int) -> str:
    return f"hot:{row}"


@pytest.mark.parametrize("invalidation", ["delete", "tags"])
def test_no_stale_entries_after_the_race(
    rows: Engine, make_cache: MakeCache, invalidation: str
) -> None:
    caches = [make_cache(default_ttl=60, jitter=0) for _ in range(3)]  # three "processes"
    by_tag = invalidation == "tags"

    def read(row: int) -> object:
        cache = caches[row % 3 if random.random() < 0.5 else random.randrange(3)]
        tags = (f"hot:{row}",) if by_tag else ()
        return cache.get_or_set(key(row), lambda: read_row(rows, row), tags=tags)

    def write(row: int) -> None:
        update_row(rows, row)
        cache = random.choice(caches)
        if by_tag:
            cache.invalidate_tags(f"hot:{row}")
        else:
            cache.delete(key(row))

    reads, writes = race(read, write)
    truth = database(rows)
    observer = make_cache()  # a process that did not take part: what L2 holds

    def stale_entries() -> list[tuple[int, int, object, int]]:
        return [
            (n, row, served, truth[row])
            for n, cache in enumerate([*caches, observer])
            for row in range(1, ROWS + 1)
            if (served := cache.get(key(row), "MISS")) != "MISS" and served != truth[row]
        ]

    # The last invalidation messages reach the other L1s in their own time; an entry left
    # stale for good (in L2, or an L1 never told) stays past the wait.
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not stale_entries())
    stale = stale_entries()
    stats = [c.stats() for c in caches]
    refused = sum(s.stale_sets_refused for s in stats)
    print(
        f"\nhotpath ({invalidation}): {reads} reads, {writes} writes, stale entries: "
        f"{len(stale)}, loads refused after an invalidation: {refused}"
    )
    assert stale == []
    assert sum(s.loads for s in stats) > 20
    assert writes >= RACE_WRITES
    if not by_tag:
        assert refused > 0, "the race never happened: nothing to protect against"


@pytest.mark.parametrize("invalidation", ["delete", "tags"])
def test_plain_cache_aside_leaves_stale_entries(
    rows: Engine, redis_url: str, ns: str, invalidation: str
) -> None:
    """The unprotected path (redis-py GET / load / SET; writers UPDATE then DEL, or DEL every
    key of a tag set as cashews does): the same race leaves stale values in Redis."""
    client = redis.Redis.from_url(redis_url, max_connections=READERS + WRITERS + 2)

    def read(row: int) -> object:
        cached = client.get(f"{ns}:{row}")
        if cached is not None:
            return int(cached)
        value = read_row(rows, row)
        client.set(f"{ns}:{row}", value, ex=60)
        if invalidation == "tags":
            client.sadd(f"{ns}:tag:{row}", f"{ns}:{row}")
        return value

    def write(row: int) -> None:
        update_row(rows, row)
        if invalidation == "tags":
            members = client.smembers(f"{ns}:tag:{row}")
            if members:
                client.delete(*members)
        else:
            client.delete(f"{ns}:{row}")

    stale: list[tuple[int, int, int]] = []
    rounds = 0
    while not stale and rounds < 3:  # a race: give it up to three rounds to show itself
        rounds += 1
        race(read, write)
        truth = database(rows)
        for row in range(1, ROWS + 1):
            cached = client.get(f"{ns}:{row}")
            if cached is not None and int(cached) != truth[row]:
                stale.append((row, int(cached), truth[row]))
    client.close()
    print(
        f"\nplain cache-aside ({invalidation}): stale entries: {len(stale)} of {ROWS} rows "
        f"(round {rounds})"
    )
    assert stale, "plain cache-aside came out clean this time"


async def _none(entries: Awaitable[list[Any]]) -> bool:
    return not await entries


async def test_async_no_stale_entries_after_the_race(
    rows: Engine, hotpath_db: ModuleDatabase, make_async_cache: MakeAsyncCache
) -> None:
    engine = create_async_engine(hotpath_db.async_url, pool_size=READERS + WRITERS + 2)
    caches: list[AsyncCache] = [make_async_cache(default_ttl=60, jitter=0) for _ in range(3)]
    stop_writers, stop_readers = asyncio.Event(), asyncio.Event()
    writes = 0

    async def load(row: int) -> int:
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT v FROM hot WHERE id = :id"), {"id": row})
            value = result.scalar_one()
        await asyncio.sleep(random.uniform(0.005, 0.03))
        return int(value)

    reads = 0

    async def reader() -> None:
        nonlocal reads
        while not stop_readers.is_set():
            row = random.randint(1, ROWS)
            await random.choice(caches).get_or_set(key(row), lambda row=row: load(row))
            reads += 1
            await asyncio.sleep(0)  # an L1 hit never awaits: let the other tasks run

    async def writer() -> None:
        nonlocal writes
        while not stop_writers.is_set():
            row = random.randint(1, ROWS)
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE hot SET v = v + 1 WHERE id = :id"), {"id": row})
            await random.choice(caches).delete(key(row))
            writes += 1
            await asyncio.sleep(random.uniform(0, 0.004))

    tasks = [asyncio.create_task(reader()) for _ in range(READERS)]
    writing = [asyncio.create_task(writer()) for _ in range(WRITERS)]
    try:
        await eventually_async(lambda: writes >= RACE_WRITES, RACE_TIMEOUT_S, "writes")
        stop_writers.set()
        await asyncio.gather(*writing)
        after_writes = reads
        await eventually_async(
            lambda: reads >= after_writes + READS_AFTER,
            RACE_TIMEOUT_S,
            "reads after the last write",
        )
    finally:
        stop_writers.set()
        stop_readers.set()
        await asyncio.gather(*tasks, *writing)
    await engine.dispose()
    truth = database(rows)

    async def stale_entries() -> list[tuple[int, object]]:
        return [
            (row, served)
            for cache in caches
            for row in range(1, ROWS + 1)
            if (served := await cache.get(key(row), "MISS")) != "MISS" and served != truth[row]
        ]

    # the last invalidation messages land in their own time; a stale entry for good stays
    with contextlib.suppress(AssertionError):
        await await_until(lambda: _none(stale_entries()))
    stale = await stale_entries()
    refused = sum(c.stats().stale_sets_refused for c in caches)
    print(f"\nhotpath async: {writes} writes, stale entries: {len(stale)}, refused: {refused}")
    assert stale == []
    assert writes >= RACE_WRITES
    assert refused > 0


@pytest.mark.parametrize("invalidate", ["delete", "set", "tags"])
def test_a_load_that_raced_an_invalidation_is_not_stored(
    make_cache: MakeCache, raw: redis.Redis, ns: str, invalidate: str
) -> None:
    """The race made deterministic: the invalidation lands while the loader runs."""
    cache, writer = make_cache(), make_cache()

    def load() -> str:
        if invalidate == "delete":
            writer.delete("k")
        elif invalidate == "set":
            writer.set("k", "written", tags=("t",))
        else:
            writer.invalidate_tags("t")
        return "read before the invalidation"

    assert cache.get_or_set("k", load, tags=("t",)) == "read before the invalidation"
    expected = "written" if invalidate == "set" else "MISS"
    assert make_cache().get("k", "MISS") == expected
    assert cache.get("k", "MISS") == expected
    if invalidate != "tags":
        assert cache.stats().stale_sets_refused == 1
    else:  # stored, but under the tag version it was read with: never served
        assert raw.exists(f"{ns}:{{k}}") == 1


# -- read-your-writes through the in-process single-flight ---------------------------------


@pytest.mark.parametrize("invalidation", ["delete", "tags"])
def test_a_writer_never_joins_a_load_that_began_before_its_write(
    make_cache: MakeCache, engine: Engine, invalidation: str
) -> None:
    """A load in flight read the row before the write; the writer's next read must not share
    it. A caller that wrote nothing still shares it (one load)."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO hot VALUES (100, 1) ON CONFLICT (id) DO UPDATE SET v = 1"))
    cache = make_cache()
    reading = threading.Event()

    def slow_load() -> int:
        with engine.connect() as conn:
            value = int(conn.execute(text("SELECT v FROM hot WHERE id = 100")).scalar_one())
        reading.set()
        time.sleep(0.4)  # the write lands while this load is in flight
        return value

    def fresh_load() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT v FROM hot WHERE id = 100")).scalar_one())

    results: dict[str, int] = {}
    leader = threading.Thread(
        target=lambda: results.__setitem__(
            "leader", cache.get_or_set("row:100", slow_load, 60, ("hot",))
        )
    )
    leader.start()
    assert reading.wait(5)
    bystander = threading.Thread(
        target=lambda: results.__setitem__(
            "bystander", cache.get_or_set("row:100", fresh_load, 60, ("hot",))
        )
    )
    bystander.start()  # arrives before the write: joins the load in flight
    time.sleep(0.05)
    with engine.begin() as conn:
        conn.execute(text("UPDATE hot SET v = 2 WHERE id = 100"))
    if invalidation == "delete":
        cache.delete("row:100")
    else:
        cache.invalidate_tags("hot")
    mine = cache.get_or_set("row:100", fresh_load, 60, ("hot",))
    leader.join(5)
    bystander.join(5)
    assert mine == 2  # read-your-writes
    assert results == {"leader": 1, "bystander": 1}  # both began before the write
    assert cache.stats().stampede_joins == 1  # the bystander, not the writer
    assert cache.get("row:100") == 2  # and the late fill of 1 was not kept


async def test_async_a_writer_never_joins_a_load_that_began_before_its_write(
    make_async_cache: MakeAsyncCache,
) -> None:
    cache = make_async_cache()
    value = {"v": 1}
    reading = asyncio.Event()

    async def slow_load() -> int:
        seen = value["v"]
        reading.set()
        await asyncio.sleep(0.3)
        return seen

    async def fresh_load() -> int:
        return value["v"]

    leader = asyncio.create_task(cache.get_or_set("ryw", slow_load, 60, ("ryw",)))
    await reading.wait()
    bystander = asyncio.create_task(cache.get_or_set("ryw", fresh_load, 60, ("ryw",)))
    await asyncio.sleep(0.02)
    value["v"] = 2
    await cache.invalidate_tags("ryw")
    assert await cache.get_or_set("ryw", fresh_load, 60, ("ryw",)) == 2
    assert await leader == await bystander == 1
    assert cache.stats().stampede_joins == 1
    assert await cache.get("ryw") == 2
