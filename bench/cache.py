"""Cache: hotpath.cache against cashews, aiocache, dogpile.cache and plain cache-aside.

Side by side in one run, on one Redis (and one PostgreSQL as the source of truth for the
race) of the benchmark's own ``LocalStack``, with the same ~1 KB JSON-able payload:

1. ``L1 hit``: one ``get`` of a cached key from process memory, per-op time from batches
   (time N calls, divide), this thread's CPU time: hotpath (L1 in front of Redis, L1 only,
   ``get_or_set``, ``AsyncCache``) against cashews ``mem://``, aiocache ``SimpleMemoryCache``,
   dogpile.cache's memory backend, ``functools.lru_cache`` and a plain ``dict`` (target:
   hotpath <= 2 us).
2. ``L2 hit``: hotpath configured L2-only against raw redis-py ``GET`` + ``orjson.loads``
   (target <= 1.10x), dogpile.cache's redis backend (sync); ``AsyncCache``, cashews (redis)
   and aiocache ``RedisCache`` against raw ``redis.asyncio`` (async). Wall and client CPU.
3. ``stampede``: 200 callers on a cold key across 4 processes (50 threads or tasks each), a
   loader that sleeps 100 ms; loader calls in total and each caller's wait, for every
   library's documented stampede protection and for plain cache-aside, a few rounds with
   fresh keys.
4. ``stale entries``: readers ``get_or_set`` hot rows of a PostgreSQL table through each
   library (the loader reads the row, then sleeps to widen the race) while writers update a
   row and then delete its cache key; after the writers stop and the readers settle, count
   cached values that differ from the table.
5. ``hit ratio``: Zipf(1.0) over 100,000 keys, 200,000 accesses, L1 of 1,000 entries:
   hotpath's W-TinyLFU against its LRU policy and ``functools.lru_cache``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import multiprocessing
import random
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

import orjson
import psycopg
import redis
import redis.asyncio
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from rich.table import Table

from hotpath.cache import AsyncCache, Cache, MemoryTier, RedisTier
from hotpath.stack import LocalStack

from ._harness import Series, console

PAYLOAD: dict[str, Any] = {
    "id": 4242,
    "email": "ada.lovelace@example.com",
    "name": "Ada Lovelace",
    "created_at": "2026-11-23T07:59:24+00:00",
    "active": True,
    "score": 98.25,
    "tags": ["vip", "beta", "newsletter", "eu"],
    "address": {"street": "12 Analytical Row", "city": "London", "zip": "NW1 6XE"},
    "orders": [
        {"id": 90000 + i, "sku": f"SKU-{i:05d}", "qty": i % 4 + 1, "price": f"{9.99 + i:.2f}"}
        for i in range(12)
    ],
}
PAYLOAD_BYTES = len(orjson.dumps(PAYLOAD))

PROCESSES, PER_PROCESS = 4, 50
LOAD_S = 0.1  # the stampede loader's sleep


# -- tables ------------------------------------------------------------------------------------


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Print a rich table and return the same as Markdown (first column left, others right)."""
    table = Table(*headers, title=title)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    align = ["---"] + ["---:"] * (len(headers) - 2) + ["---"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _us(seconds: float) -> str:
    value = seconds * 1e6
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}" if seconds >= 0.01 else f"{seconds * 1e3:.1f}"


def _p99(samples: Sequence[float]) -> float:
    return Series("", list(samples)).p99


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def _dogpile_region(url: str, *, distributed_lock: bool) -> Any:
    from dogpile.cache import make_region

    arguments: dict[str, Any] = {"url": url, "redis_expiration_time": 900}
    if distributed_lock:
        arguments |= {"distributed_lock": True, "thread_local_lock": False}
    return make_region().configure("dogpile.cache.redis", expiration_time=600, arguments=arguments)


def _cashews(url: str) -> Any:
    import cashews

    instance = cashews.Cache()
    instance.setup(url)
    return instance


# -- 1. L1 hit ---------------------------------------------------------------------------------


@dataclass
class _Contender:
    name: str
    call: Callable[[], Any]
    is_async: bool = False
    note: str = ""
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def _measure(
    loop: asyncio.AbstractEventLoop, contenders: list[_Contender], rounds: int, ops: int
) -> None:
    """Interleaved rounds of batches (a burst of outside load hits every contender alike);
    each sample is the mean of ``ops`` calls: wall (perf_counter) and this thread's CPU."""

    def sync_batch(call: Callable[[], Any]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in itertools.repeat(None, ops):
            call()
        return (time.perf_counter() - wall) / ops, (time.thread_time() - cpu) / ops

    async def async_batch(call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in itertools.repeat(None, ops):
            await call()
        return (time.perf_counter() - wall) / ops, (time.thread_time() - cpu) / ops

    for warm in (True, *([False] * rounds)):
        for c in contenders:
            if c.is_async:
                wall, cpu = loop.run_until_complete(async_batch(c.call))
            else:
                wall, cpu = sync_batch(c.call)
            if not warm:
                c.wall.append(wall)
                c.cpu.append(cpu)


def _l1(url: str, loop: asyncio.AbstractEventLoop, quick: bool) -> str:
    import cashews  # noqa: F401  (imported here so a missing peer fails this section only)
    from aiocache import SimpleMemoryCache
    from dogpile.cache import make_region

    rounds, ops = (20, 2000) if quick else (60, 5000)
    key = "bench:l1"
    plain = {key: PAYLOAD}
    tiered = Cache(MemoryTier(ttl=600), RedisTier(url), namespace="bl1", default_ttl=600)
    l1_only = Cache(MemoryTier(ttl=600), namespace="bl1only", default_ttl=600)
    for cache in (tiered, l1_only):
        cache.set(key, PAYLOAD)
    region = make_region().configure("dogpile.cache.memory", expiration_time=600)
    region.set(key, PAYLOAD)
    lru = functools.lru_cache(maxsize=1000)(lambda k: PAYLOAD)
    lru(key)

    async def plain_get(k: str) -> Any:
        return plain.get(k)

    async def async_setup() -> tuple[AsyncCache, Any, Any, Any]:
        acache = AsyncCache(MemoryTier(ttl=600), RedisTier(url), namespace="bl1a", default_ttl=600)
        await acache.set(key, PAYLOAD)
        cw = _cashews("mem://?size=10000")
        await cw.set(key, PAYLOAD, expire=600)
        ac = SimpleMemoryCache()
        await ac.set(key, PAYLOAD, ttl=600)
        ac_nt = SimpleMemoryCache(timeout=None)
        await ac_nt.set(key, PAYLOAD, ttl=600)
        return acache, cw, ac, ac_nt

    acache, cw, ac, ac_nt = loop.run_until_complete(async_setup())
    p = functools.partial
    contenders = [
        _Contender("dict.get (baseline)", p(plain.get, key), note="no TTL, no bound"),
        _Contender("hotpath Cache.get, L1 + L2", p(tiered.get, key), note="L1 hit, no Redis"),
        _Contender(
            "hotpath Cache.get_or_set, L1 + L2",
            p(tiered.get_or_set, key, lambda: PAYLOAD),
            note="L1 hit",
        ),
        _Contender("hotpath Cache.get, L1 only", p(l1_only.get, key)),
        _Contender("functools.lru_cache hit", p(lru, key), note="C LRU, no TTL"),
        _Contender("dogpile.cache memory get", p(region.get, key), note="unbounded dict"),
        _Contender("async def dict.get (await baseline)", p(plain_get, key), is_async=True),
        _Contender("hotpath AsyncCache.get, L1 + L2", p(acache.get, key), is_async=True),
        _Contender(
            "cashews mem:// get", p(cw.get, key), is_async=True, note="LRU OrderedDict + TTL"
        ),
        _Contender(
            "aiocache SimpleMemoryCache.get",
            p(ac.get, key),
            is_async=True,
            note="default timeout=5: asyncio.wait_for per call",
        ),
        _Contender(
            "aiocache SimpleMemoryCache.get, timeout=None",
            p(ac_nt.get, key),
            is_async=True,
            note="unbounded dict",
        ),
    ]
    for c in contenders:
        value = loop.run_until_complete(c.call()) if c.is_async else c.call()
        assert value == PAYLOAD, f"{c.name} did not return the payload: {value!r}"
    _measure(loop, contenders, rounds, ops)
    assert tiered.stats().l2_hits == 0, "hotpath's L1 hits went to Redis"
    base = statistics.median(contenders[0].cpu)
    abase = statistics.median(contenders[6].cpu)
    rows = []
    for c in contenders:
        med = statistics.median(c.cpu)
        rows.append(
            [
                c.name,
                str(len(c.cpu)),
                _us(med),
                _us(_p99(c.cpu)),
                f"{med / base:.1f}",
                f"{med / abase:.1f}" if c.is_async else "",
                c.note,
            ]
        )
    tiered.close()
    l1_only.close()
    loop.run_until_complete(acache.aclose())
    loop.run_until_complete(cw.close())
    return _table(
        f"L1 hit, CPU per call (mean of {ops:,} per sample)",
        [
            "contender",
            "n",
            "median us",
            "p99 us",
            "x dict.get",
            "x await baseline",
            "note",
        ],
        rows,
    )


# -- 2. L2 hit ---------------------------------------------------------------------------------


def _l2(
    url: str, loop: asyncio.AbstractEventLoop, quick: bool
) -> tuple[str, str, dict[str, float]]:
    from aiocache import RedisCache

    rounds, ops = (15, 100) if quick else (40, 250)
    host, port = _host_port(url)
    raw = _redis_client(url)
    raw.set("bench:l2:raw", orjson.dumps(PAYLOAD), ex=900)
    l2_only = Cache(l2=RedisTier(url), namespace="bl2", default_ttl=600)
    l2_only.set("k", PAYLOAD)
    region = _dogpile_region(url, distributed_lock=False)
    region.set("bench:l2:dogpile", PAYLOAD)

    async def async_setup() -> tuple[Any, AsyncCache, Any, Any]:
        araw = redis.asyncio.Redis.from_url(url)
        await araw.get("bench:l2:raw")
        acache = AsyncCache(l2=RedisTier(url), namespace="bl2a", default_ttl=600)
        await acache.set("k", PAYLOAD)
        cw = _cashews(url)
        await cw.set("bench:l2:cashews", PAYLOAD, expire=900)
        ac = RedisCache(endpoint=host, port=port)
        await ac.set("bench:l2:aiocache", PAYLOAD, ttl=900)
        return araw, acache, cw, ac

    araw, acache, cw, ac = loop.run_until_complete(async_setup())

    def raw_get() -> Any:
        return orjson.loads(raw.get("bench:l2:raw"))  # type: ignore[arg-type]

    def raw_get_json() -> Any:
        return json.loads(raw.get("bench:l2:raw"))  # type: ignore[arg-type]

    async def araw_get() -> Any:
        return orjson.loads(await araw.get("bench:l2:raw"))

    p = functools.partial
    sync = [
        _Contender("raw redis-py GET + orjson.loads (baseline)", raw_get),
        _Contender("raw redis-py GET + json.loads", raw_get_json),
        _Contender("hotpath Cache.get, L2 only", p(l2_only.get, "k"), note="json (orjson)"),
        _Contender(
            "hotpath Cache.get_or_set, L2 only (hit)",
            p(l2_only.get_or_set, "k", lambda: PAYLOAD),
        ),
        _Contender(
            "dogpile.cache redis region.get",
            p(region.get, "bench:l2:dogpile"),
            note="pickle (its default)",
        ),
    ]
    async_ = [
        _Contender("raw redis.asyncio GET + orjson.loads (baseline)", araw_get, is_async=True),
        _Contender("hotpath AsyncCache.get, L2 only", p(acache.get, "k"), is_async=True),
        _Contender(
            "hotpath AsyncCache.get_or_set, L2 only (hit)",
            p(acache.get_or_set, "k", lambda: PAYLOAD),
            is_async=True,
        ),
        _Contender(
            "cashews redis get",
            p(cw.get, "bench:l2:cashews"),
            is_async=True,
            note="pickle (its default)",
        ),
        _Contender(
            "aiocache RedisCache.get",
            p(ac.get, "bench:l2:aiocache"),
            is_async=True,
            note="json (stdlib, its default); timeout=5 (asyncio.wait_for)",
        ),
    ]
    for c in sync + async_:
        value = loop.run_until_complete(c.call()) if c.is_async else c.call()
        assert value == PAYLOAD, f"{c.name} did not return the payload: {value!r}"
    _measure(loop, sync + async_, rounds, ops)
    assert l2_only.stats().l2_hits > rounds * ops, "hotpath's L2 gets did not hit Redis"

    def rows(group: list[_Contender]) -> list[list[str]]:
        wall0, cpu0 = statistics.median(group[0].wall), statistics.median(group[0].cpu)
        out = []
        for c in group:
            wall, cpu = statistics.median(c.wall), statistics.median(c.cpu)
            out.append(
                [
                    c.name,
                    str(len(c.wall)),
                    _us(wall),
                    _us(_p99(c.wall)),
                    f"{wall / wall0:.2f}",
                    f"{(wall - wall0) * 1e6:+.1f}",
                    _us(cpu),
                    f"{cpu / cpu0:.2f}",
                    c.note,
                ]
            )
        return out

    headers = [
        "contender",
        "n",
        "wall median us",
        "wall p99 us",
        "wall x baseline",
        "wall added us",
        "CPU median us",
        "CPU x baseline",
        "note",
    ]
    ratios = {
        "sync_added_us": (statistics.median(sync[2].wall) - statistics.median(sync[0].wall)) * 1e6,
        "sync_wall": statistics.median(sync[2].wall) / statistics.median(sync[0].wall),
        "sync_cpu": statistics.median(sync[2].cpu) / statistics.median(sync[0].cpu),
        "async_wall": statistics.median(async_[1].wall) / statistics.median(async_[0].wall),
    }
    sync_md = _table(f"L2 hit, sync, mean of {ops} per sample", headers, rows(sync))
    async_md = _table(f"L2 hit, async, mean of {ops} per sample", headers, rows(async_))
    l2_only.close()
    raw.close()

    async def async_close() -> None:
        await acache.aclose()
        await cw.close()
        await ac.close()
        await araw.aclose()

    loop.run_until_complete(async_close())
    return sync_md, async_md, ratios


# -- 3. stampede: worker processes -------------------------------------------------------------


def _sleep_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


class _Libraries:
    """One worker process's caches, built once (as a long-lived app would) and used round
    after round; ``loads`` counts this process's loader calls."""

    def __init__(self, url: str) -> None:
        from aiocache import RedisCache
        from aiocache.decorators import cached_stampede

        self.url = url
        self.loads = 0
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.raw = _redis_client(url)
        self.hotpath = Cache(MemoryTier(), RedisTier(url), namespace="stampede", default_ttl=60)
        self.region = _dogpile_region(url, distributed_lock=True)
        host, port = _host_port(url)

        async def setup() -> None:
            self.ahotpath = AsyncCache(
                MemoryTier(), RedisTier(url), namespace="astampede", default_ttl=60
            )
            self.cashews = _cashews(url)

            @self.cashews(ttl=60, key="{key}", lock=True)
            async def cashews_locked(key: str) -> Any:
                return await self.aload()

            @self.cashews(ttl=60, key="{key}")
            async def cashews_plain(key: str) -> Any:
                return await self.aload()

            async def aiocache_fn(key: str) -> Any:
                return await self.aload()

            self.cashews_locked = cashews_locked
            self.cashews_plain = cashews_plain
            self.aiocache = cached_stampede(
                lease=2,
                ttl=60,
                cache=RedisCache,
                endpoint=host,
                port=port,
                key_builder=lambda fn, key: key,
            )(aiocache_fn)

        self.loop.run_until_complete(setup())

    def load(self) -> dict[str, Any]:
        with self._lock:
            self.loads += 1
        time.sleep(LOAD_S)
        return PAYLOAD

    async def aload(self) -> dict[str, Any]:
        self.loads += 1
        await asyncio.sleep(LOAD_S)
        return PAYLOAD

    def plain(self, key: str) -> Any:
        cached = self.raw.get(key)
        if cached is not None:
            return orjson.loads(cached)  # type: ignore[arg-type]
        value = self.load()
        self.raw.set(key, orjson.dumps(value), ex=60)
        return value

    def calls(self) -> dict[str, tuple[bool, Callable[[str], Any]]]:
        """contender -> (is async, call with the key)."""
        return {
            "hotpath Cache (threads)": (False, lambda k: self.hotpath.get_or_set(k, self.load)),
            "hotpath AsyncCache (tasks)": (
                True,
                lambda k: self.ahotpath.get_or_set(k, self.aload),
            ),
            "cashews @cache(lock=True)": (True, self.cashews_locked),
            "cashews @cache (default)": (True, self.cashews_plain),
            "aiocache @cached_stampede": (True, self.aiocache),
            "dogpile.cache get_or_create": (
                False,
                lambda k: self.region.get_or_create(k, self.load),
            ),
            "plain cache-aside (redis-py)": (False, self.plain),
        }

    def burst(self, contender: str, key: str, start_at: float) -> tuple[int, list[float], int]:
        """PER_PROCESS concurrent callers of ``key`` released at ``start_at``: this process's
        loader calls, each caller's wait (from the release), and the callers that failed."""
        self.loads = 0
        is_async, call = self.calls()[contender]
        if is_async:
            waits, errors = self.loop.run_until_complete(self._tasks(call, key, start_at))
        else:
            waits, errors = self._threads(call, key, start_at)
        return self.loads, waits, errors

    @staticmethod
    def _threads(call: Callable[[str], Any], key: str, start_at: float) -> tuple[list[float], int]:
        barrier = threading.Barrier(PER_PROCESS + 1)
        waits: list[float] = []
        errors: list[BaseException] = []
        began = [0.0]

        def caller() -> None:
            barrier.wait()
            try:
                assert call(key) == PAYLOAD
            except BaseException as error:
                errors.append(error)
            else:
                waits.append(time.perf_counter() - began[0])

        threads = [threading.Thread(target=caller) for _ in range(PER_PROCESS)]
        for thread in threads:
            thread.start()
        _sleep_until(start_at)
        began[0] = time.perf_counter()
        barrier.wait()
        for thread in threads:
            thread.join()
        return waits, len(errors)

    @staticmethod
    async def _tasks(
        call: Callable[[str], Awaitable[Any]], key: str, start_at: float
    ) -> tuple[list[float], int]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        began = time.perf_counter()

        async def caller() -> float:
            assert await call(key) == PAYLOAD
            return time.perf_counter() - began

        results = await asyncio.gather(
            *(caller() for _ in range(PER_PROCESS)), return_exceptions=True
        )
        waits = [r for r in results if isinstance(r, float)]
        return waits, len(results) - len(waits)

    def close(self) -> None:
        self.hotpath.close()

        async def close() -> None:
            await self.ahotpath.aclose()
            await self.cashews.close()
            await self.aiocache.cache.close()

        self.loop.run_until_complete(close())
        self.loop.close()


def _stampede_worker(conn: Connection, url: str) -> None:
    """A worker process: build every library's cache once, then run bursts on demand."""
    libraries = _Libraries(url)
    conn.send("ready")
    while True:
        message = conn.recv()
        if message is None:
            break
        conn.send(libraries.burst(*message))
    libraries.close()
    conn.close()


_PROTECTION = {
    "hotpath Cache (threads)": "in-process single-flight + Redis lease (SET NX PX), "
    "waiters woken by the fill's pub/sub message",
    "hotpath AsyncCache (tasks)": "same as Cache",
    "cashews @cache(lock=True)": "thunder_protection (in-process) + SET NX lock with the "
    "cache TTL; waiters retry SET NX + PING with sleep(0) (busy poll)",
    "cashews @cache (default)": "thunder_protection only (in-process)",
    "aiocache @cached_stampede": "RedLock (SET NX, lease 2 s); waiters wait on an in-process "
    "asyncio.Event, so other processes' callers do not wait",
    "dogpile.cache get_or_create": "redis-py Lock (distributed_lock=True, no expiry by "
    "default), waiters poll every 0.1 s",
    "plain cache-aside (redis-py)": "none",
}


def _commands_processed(client: redis.Redis) -> int:
    """Commands the Redis server has processed so far (this call included)."""
    return int(client.info("stats")["total_commands_processed"])


def _stampede(url: str, quick: bool) -> tuple[str, dict[str, float]]:
    rounds = 2 if quick else 5
    context = multiprocessing.get_context("spawn")  # no inherited threads or sockets
    workers: list[tuple[Any, Connection]] = []
    for _ in range(PROCESSES):
        ours, theirs = context.Pipe()
        process = context.Process(target=_stampede_worker, args=(theirs, url), daemon=True)
        process.start()
        workers.append((process, ours))

    def receive(conn: Connection) -> Any:
        if not conn.poll(120):
            raise TimeoutError("a stampede worker did not answer within 120 s")
        return conn.recv()

    try:
        for _, conn in workers:
            assert receive(conn) == "ready"
        loads: dict[str, list[int]] = {name: [] for name in _PROTECTION}
        waits: dict[str, list[float]] = {name: [] for name in _PROTECTION}
        errors: dict[str, int] = dict.fromkeys(_PROTECTION, 0)
        commands: dict[str, list[int]] = {name: [] for name in _PROTECTION}
        token = uuid.uuid4().hex[:8]
        server = _redis_client(url)
        for round_ in range(rounds):
            for index, name in enumerate(_PROTECTION):
                key = f"cold:{token}:{round_}:{index}"
                start_at = time.time() + 0.25
                before = _commands_processed(server)
                for _, conn in workers:
                    conn.send((name, key, start_at))
                replies = [receive(conn) for _, conn in workers]
                commands[name].append(_commands_processed(server) - before - 1)
                loads[name].append(sum(r[0] for r in replies))
                for r in replies:
                    waits[name].extend(r[1])
                    errors[name] += r[2]
        server.close()
    finally:
        for _, conn in workers:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process, _ in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    rows = []
    for name, protection in _PROTECTION.items():
        w = waits[name]
        failed = f"; {errors[name]} callers failed" if errors[name] else ""
        rows.append(
            [
                name,
                str(rounds),
                str(sum(loads[name])),
                f"{statistics.mean(loads[name]):.1f}",
                f"{min(loads[name])}-{max(loads[name])}",
                _ms(statistics.median(w)) if w else "-",
                _ms(_p99(w)) if w else "-",
                f"{statistics.median(commands[name]):,.0f}",
                protection + failed,
            ]
        )
    markdown = _table(
        f"stampede: {PROCESSES} processes x {PER_PROCESS} callers on a cold key, "
        f"loader {LOAD_S * 1000:.0f} ms",
        [
            "contender",
            "rounds",
            "loader calls",
            "loads per key",
            "min-max",
            "wait p50 ms",
            "wait p99 ms",
            "Redis commands per key",
            "stampede protection",
        ],
        rows,
    )
    per_key = {name: statistics.mean(v) for name, v in loads.items()}
    return markdown, per_key


# -- 4. stale entries after a reader/writer race -----------------------------------------------

ROWS = 16
READERS, WRITERS = 8, 2
LOADER_DELAY_S = 0.01  # after reading the row: widens the window a write can land in


@dataclass
class _Race:
    """One library in the race: how readers read through it, how writers invalidate, and
    what it holds for a key afterwards (``None`` for nothing)."""

    name: str
    note: str
    is_async: bool
    read: Callable[[str, Callable[[], Any]], Any]
    invalidate: Callable[[str], Any]
    views: Callable[[], list[Callable[[str], Any]]]
    close: Callable[[], Any] = lambda: None
    detail: Callable[[], str] = lambda: ""
    loads: int = 0
    reads: int = 0
    writes: int = 0
    errors: int = 0
    first_error: str = ""

    def failed(self, error: BaseException) -> None:
        """A caller got an exception from the library: count it, keep the first."""
        self.errors += 1
        if not self.first_error:
            self.first_error = f"{type(error).__name__}: {error}"


def _race_sync(lib: _Race, pool: ConnectionPool[Any], prefix: str, seconds: float) -> None:
    stop_writers, stop_readers = threading.Event(), threading.Event()
    lock = threading.Lock()

    def load(row: int) -> dict[str, int]:
        with pool.connection() as conn:
            found = conn.execute("SELECT v FROM race WHERE id = %s", (row,)).fetchone()
        assert found is not None
        time.sleep(LOADER_DELAY_S)
        with lock:
            lib.loads += 1
        return {"id": row, "v": found[0]}

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop_readers.is_set():
            row = rng.randrange(ROWS)
            try:
                lib.read(f"{prefix}{row}", functools.partial(load, row))
            except Exception as error:
                with lock:
                    lib.failed(error)
            with lock:
                lib.reads += 1

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop_writers.is_set():
            row = rng.randrange(ROWS)
            with pool.connection() as conn:
                conn.execute("UPDATE race SET v = v + 1 WHERE id = %s", (row,))
            try:
                lib.invalidate(f"{prefix}{row}")
            except Exception as error:
                with lock:
                    lib.failed(error)
            with lock:
                lib.writes += 1
            time.sleep(0.002)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    threads += [threading.Thread(target=writer, args=(100 + i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop_writers.set()
    time.sleep(0.3)  # readers go on: invalidated keys are loaded again from the final rows
    stop_readers.set()
    for thread in threads:
        thread.join()


async def _race_async(
    lib: _Race, pool: AsyncConnectionPool[Any], prefix: str, seconds: float
) -> None:
    stop_writers, stop_readers = asyncio.Event(), asyncio.Event()

    async def load(row: int) -> dict[str, int]:
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT v FROM race WHERE id = %s", (row,))
            found = await cursor.fetchone()
        assert found is not None
        await asyncio.sleep(LOADER_DELAY_S)
        lib.loads += 1
        return {"id": row, "v": found[0]}

    async def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop_readers.is_set():
            row = rng.randrange(ROWS)
            try:
                await lib.read(f"{prefix}{row}", functools.partial(load, row))
            except Exception as error:
                lib.failed(error)
            lib.reads += 1
            await asyncio.sleep(0)  # an all-L1-hit loop would never let the writers run

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop_writers.is_set():
            row = rng.randrange(ROWS)
            async with pool.connection() as conn:
                await conn.execute("UPDATE race SET v = v + 1 WHERE id = %s", (row,))
            try:
                await lib.invalidate(f"{prefix}{row}")
            except Exception as error:
                lib.failed(error)
            lib.writes += 1
            await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(reader(i)) for i in range(READERS)]
    tasks += [asyncio.create_task(writer(100 + i)) for i in range(WRITERS)]
    await asyncio.sleep(seconds)
    stop_writers.set()
    await asyncio.sleep(0.3)
    stop_readers.set()
    await asyncio.gather(*tasks)


def _race_libraries(url: str, loop: asyncio.AbstractEventLoop) -> list[_Race]:
    from aiocache import RedisCache
    from aiocache.decorators import cached_stampede
    from dogpile.cache.api import NO_VALUE

    raw = _redis_client(url)
    host, port = _host_port(url)

    def plain_read(key: str, load: Callable[[], Any]) -> Any:
        cached = raw.get(key)
        if cached is not None:
            return orjson.loads(cached)  # type: ignore[arg-type]
        value = load()
        raw.set(key, orjson.dumps(value), ex=600)
        return value

    def plain_view(key: str) -> Any:
        cached = raw.get(key)
        return None if cached is None else orjson.loads(cached)  # type: ignore[arg-type]

    # hotpath: readers and writers use different Cache instances (as different processes
    # would), so a writer's delete reaches the readers' L1 over pub/sub only.
    readers = Cache(MemoryTier(), RedisTier(url), namespace="race", default_ttl=600)
    writers = Cache(MemoryTier(), RedisTier(url), namespace="race", default_ttl=600)

    l2_only = Cache(l2=RedisTier(url), namespace="race", default_ttl=600)

    def hotpath_close() -> None:
        for cache in (readers, writers, l2_only):
            cache.close()

    region = _dogpile_region(url, distributed_lock=True)

    def dogpile_view(key: str) -> Any:
        value = region.get(key)
        return None if value is NO_VALUE else value

    async def async_setup() -> list[_Race]:
        areaders = AsyncCache(MemoryTier(), RedisTier(url), namespace="arace", default_ttl=600)
        awriters = AsyncCache(MemoryTier(), RedisTier(url), namespace="arace", default_ttl=600)
        a_l2 = AsyncCache(l2=RedisTier(url), namespace="arace", default_ttl=600)
        cw = _cashews(url)

        @cw(ttl=600, key="{key}", lock=True)
        async def cashews_read(key: str, load: Callable[[], Awaitable[Any]]) -> Any:
            return await load()

        async def aiocache_fn(key: str, load: Callable[[], Awaitable[Any]]) -> Any:
            return await load()

        aio = cached_stampede(
            lease=2,
            ttl=600,
            cache=RedisCache,
            endpoint=host,
            port=port,
            key_builder=lambda fn, key, load: key,
        )(aiocache_fn)

        async def hotpath_close() -> None:
            await areaders.aclose()
            await awriters.aclose()
            await a_l2.aclose()

        async def cashews_close() -> None:
            await cw.close()

        async def aiocache_close() -> None:
            await aio.cache.close()

        return [
            _Race(
                "hotpath AsyncCache",
                "lease per load; delete drops the lease, the late fill is refused (Lua)",
                True,
                areaders.get_or_set,
                awriters.delete,
                lambda: [areaders.get, a_l2.get],
                hotpath_close,
                lambda: f"; {areaders.stats().stale_sets_refused} late fills refused",
            ),
            _Race(
                "cashews @cache(lock=True)",
                "lock does not stop a late set after delete",
                True,
                cashews_read,
                cw.delete,
                lambda: [cw.get],
                cashews_close,
            ),
            _Race(
                "aiocache @cached_stampede",
                "RedLock does not stop a late set after delete",
                True,
                aio,
                aio.cache.delete,
                lambda: [aio.cache.get],
                aiocache_close,
            ),
        ]

    async_libs = loop.run_until_complete(async_setup())
    return [
        _Race(
            "plain cache-aside (redis-py)",
            "GET, load, SET; writers DEL",
            False,
            plain_read,
            raw.delete,
            lambda: [plain_view],
            raw.close,
        ),
        _Race(
            "hotpath Cache",
            "lease per load; delete drops the lease, the late fill is refused (Lua)",
            False,
            readers.get_or_set,
            writers.delete,
            lambda: [readers.get, l2_only.get],
            hotpath_close,
            lambda: f"; {readers.stats().stale_sets_refused} late fills refused",
        ),
        async_libs[0],
        async_libs[1],
        async_libs[2],
        _Race(
            "dogpile.cache get_or_create",
            "distributed_lock=True; region.delete does not stop a late set",
            False,
            region.get_or_create,
            region.delete,
            lambda: [dogpile_view],
        ),
    ]


def _stale(
    url: str, dsn: str, loop: asyncio.AbstractEventLoop, quick: bool
) -> tuple[str, dict[str, int]]:
    rounds, seconds = (2, 1.0) if quick else (3, 2.5)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS race")
        conn.execute("CREATE TABLE race (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute("INSERT INTO race SELECT g, 0 FROM generate_series(0, %s) g", (ROWS - 1,))
    kwargs = {"autocommit": True}
    pool: ConnectionPool[Any] = ConnectionPool(
        dsn, min_size=READERS + WRITERS, max_size=READERS + WRITERS + 2, kwargs=kwargs, open=True
    )
    pool.wait()

    async def open_async() -> AsyncConnectionPool[Any]:
        apool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn,
            min_size=READERS + WRITERS,
            max_size=READERS + WRITERS + 2,
            kwargs=kwargs,
            open=False,
        )
        await apool.open(wait=True)
        return apool

    apool = loop.run_until_complete(open_async())
    libraries = _race_libraries(url, loop)
    stale: dict[str, int] = {lib.name: 0 for lib in libraries}
    cached: dict[str, int] = {lib.name: 0 for lib in libraries}
    token = uuid.uuid4().hex[:8]
    for round_ in range(rounds):
        for index, lib in enumerate(libraries):
            prefix = f"race:{token}:{round_}:{index}:"
            if lib.is_async:
                loop.run_until_complete(_race_async(lib, apool, prefix, seconds))
            else:
                _race_sync(lib, pool, prefix, seconds)
            time.sleep(0.2)  # quiescence: in-flight invalidation messages arrive
            with pool.connection() as conn:
                truth = dict(conn.execute("SELECT id, v FROM race").fetchall())
            views = lib.views()
            for row in range(ROWS):
                seen = []
                for view in views:
                    value = view(f"{prefix}{row}")
                    if asyncio.iscoroutine(value):
                        value = loop.run_until_complete(value)
                    seen.append(value)
                present = [v for v in seen if v is not None]
                cached[lib.name] += bool(present)
                stale[lib.name] += any(v["v"] != truth[row] for v in present)
    rows = []
    for lib in libraries:
        rows.append(
            [
                lib.name,
                f"{lib.reads:,}",
                f"{lib.writes:,}",
                f"{lib.loads:,}",
                f"{cached[lib.name]} / {ROWS * rounds}",
                str(stale[lib.name]),
                str(lib.errors),
                lib.note
                + lib.detail()
                + (f"; callers got {lib.first_error!r}" if lib.errors else ""),
            ]
        )
        closing = lib.close()
        if asyncio.iscoroutine(closing):
            loop.run_until_complete(closing)
    pool.close()
    loop.run_until_complete(apool.close())
    markdown = _table(
        f"stale entries: {READERS} readers, {WRITERS} writers, {ROWS} hot rows, "
        f"{rounds} rounds of {seconds:.1f} s, loader {LOADER_DELAY_S * 1000:.0f} ms",
        [
            "contender",
            "reads",
            "writes",
            "loads",
            "keys cached",
            "stale entries",
            "caller errors",
            "note",
        ],
        rows,
    )
    return markdown, stale


# -- 5. hit ratio on Zipf(1.0) ------------------------------------------------------------------


def _zipf(loop: asyncio.AbstractEventLoop, quick: bool) -> tuple[str, dict[str, float]]:
    universe, accesses = 100_000, 200_000
    sizes = (1_000,) if quick else (1_000, 10_000)
    rng = random.Random(7)
    cumulative = list(itertools.accumulate(1.0 / rank for rank in range(1, universe + 1)))
    names = [f"item:{i}" for i in range(universe)]
    rng.shuffle(names)  # popularity unrelated to the key's text
    trace = rng.choices(names, cum_weights=cumulative, k=accesses)
    rows = []
    ratios: dict[str, float] = {}
    for size in sizes:
        results: list[tuple[str, float, float, str]] = []
        for policy in ("tinylfu", "lru"):
            cache = Cache(
                MemoryTier(maxsize=size, ttl=3600, policy=policy),  # type: ignore[arg-type]
                namespace="zipf",
                default_ttl=3600,
                xfetch_beta=0,
            )
            began = time.perf_counter()
            for key in trace:
                cache.get_or_set(key, lambda: 1)
            elapsed = time.perf_counter() - began
            stats = cache.stats()
            ratio = stats.l1_hits / accesses
            label = "W-TinyLFU" if policy == "tinylfu" else "LRU"
            results.append(
                (f"hotpath MemoryTier {label}", ratio, elapsed, "Cache.get_or_set, L1 only")
            )
            cache.close()
        lru = functools.lru_cache(maxsize=size)(lambda key: 1)
        began = time.perf_counter()
        for key in trace:
            lru(key)
        elapsed = time.perf_counter() - began
        info = lru.cache_info()
        results.append(("functools.lru_cache", info.hits / accesses, elapsed, "C LRU, reference"))
        cw = _cashews(f"mem://?size={size}")

        async def replay(cw: Any = cw) -> tuple[int, float]:
            hits, began = 0, time.perf_counter()
            for key in trace:
                if await cw.get(key) is None:
                    await cw.set(key, 1, expire=3600)
                else:
                    hits += 1
            return hits, time.perf_counter() - began

        hits, elapsed = loop.run_until_complete(replay())
        loop.run_until_complete(cw.close())
        results.append(("cashews mem://", hits / accesses, elapsed, "LRU, get then set"))
        lru_ratio = results[1][1]
        for name, ratio, elapsed, note in results:
            rows.append(
                [
                    name,
                    f"{size:,}",
                    f"{ratio:.1%}",
                    f"{ratio / lru_ratio:.2f}",
                    f"{elapsed / accesses * 1e6:.2f}",
                    note,
                ]
            )
        ratios[f"tinylfu_{size}"] = results[0][1]
        ratios[f"lru_{size}"] = lru_ratio
    markdown = _table(
        f"L1 hit ratio, Zipf(1.0), {universe:,} keys, {accesses:,} accesses (cold start)",
        ["policy", "size", "hit ratio", "x LRU", "us per access", "note"],
        rows,
    )
    return markdown, ratios


# -- run -----------------------------------------------------------------------------------------


def run(quick: bool) -> str:
    began = time.perf_counter()
    with LocalStack(replicas=0, redis=True) as stack:
        url = stack.redis_url
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            console.print(f"[bold]cache[/]: payload {PAYLOAD_BYTES} bytes as JSON")
            l1 = _l1(url, loop, quick)
            l2_sync, l2_async, l2_ratios = _l2(url, loop, quick)
            stampede, per_key = _stampede(url, quick)
            stale, stale_counts = _stale(url, stack.primary.dsn, loop, quick)
            zipf, hit_ratios = _zipf(loop, quick)
        finally:
            loop.close()
    elapsed = time.perf_counter() - began
    size = "1,000"
    summary = [
        f"L2 hit, hotpath `Cache.get` L2-only against raw redis-py GET + orjson.loads: "
        f"{l2_ratios['sync_wall']:.2f}x wall ({l2_ratios['sync_added_us']:+.1f} us), "
        f"{l2_ratios['sync_cpu']:.2f}x client CPU "
        f"(target <= 1.10x); `AsyncCache.get` against redis.asyncio: "
        f"{l2_ratios['async_wall']:.2f}x wall.",
        "Loads per cold key (200 callers, 4 processes): "
        + ", ".join(f"{name} {value:.1f}" for name, value in per_key.items())
        + ".",
        "Stale entries after the race: "
        + ", ".join(f"{name} {value}" for name, value in stale_counts.items())
        + ".",
        f"Zipf hit ratio at {size} entries: W-TinyLFU {hit_ratios['tinylfu_1000']:.1%} "
        f"against LRU {hit_ratios['lru_1000']:.1%} "
        f"({hit_ratios['tinylfu_1000'] / hit_ratios['lru_1000']:.2f}x).",
    ]
    return (
        f"Payload: a {PAYLOAD_BYTES}-byte JSON object (nested dicts and lists). One Redis and "
        f"one PostgreSQL of the benchmark's own `LocalStack`; run took {elapsed:.0f} s.\n\n"
        f"### L1 hit\n\n{l1}\n\n"
        f"### L2 hit (sync)\n\n{l2_sync}\n\n"
        f"### L2 hit (async)\n\n{l2_async}\n\n"
        f"### stampede\n\n{stampede}\n\n"
        f"### stale entries after a reader/writer race\n\n{stale}\n\n"
        f"### L1 hit ratio on Zipf(1.0)\n\n{zipf}\n\n"
        + "\n".join(f"- {line}" for line in summary)
        + "\n"
    )
