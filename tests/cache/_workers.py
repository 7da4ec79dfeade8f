"""Code the cache tests run in other processes (``multiprocessing`` spawn: importable, top-level,
picklable arguments only)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import redis

from hotpath.cache import AsyncCache, Cache, MemoryTier, RedisTier


def _tier(url: str, cluster: bool = False, **options: Any) -> RedisTier:
    return RedisTier(url, cluster=cluster, health_interval=0.1, **options)


def _counting_loader(url: str, cluster: bool, counter: str, seconds: float) -> Any:
    client: Any = redis.cluster.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)

    def load() -> dict[str, Any]:
        calls = client.incr(counter)
        time.sleep(seconds)
        return {"pid": os.getpid(), "call": calls}

    return load


def stampede(
    url: str,
    ns: str,
    key: str,
    counter: str,
    callers: int,
    mode: str,
    barrier: Any,
    results: Any,
    cluster: bool = False,
) -> None:
    """``callers`` threads (mode "sync") or tasks ("async") of this process ask for one cold
    key at once, after every process is ready; the loader counts its calls in Redis."""
    load = _counting_loader(url, cluster, counter, 0.3)
    values: list[Any] = []
    errors: list[str] = []
    if mode == "sync":
        cache = Cache(MemoryTier(100), _tier(url, cluster), namespace=ns)
        start = threading.Barrier(callers)

        def call() -> None:
            start.wait()
            try:
                values.append(cache.get_or_set(key, load))
            except Exception as error:
                errors.append(repr(error))

        threads = [threading.Thread(target=call) for _ in range(callers)]
        barrier.wait(30)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        stats = cache.stats().as_dict()
        cache.close()
    else:

        async def main() -> dict[str, Any]:
            cache = AsyncCache(MemoryTier(100), _tier(url, cluster), namespace=ns)

            async def call() -> None:
                try:
                    values.append(await cache.get_or_set(key, load))
                except Exception as error:
                    errors.append(repr(error))

            await asyncio.to_thread(barrier.wait, 30)
            await asyncio.gather(*(call() for _ in range(callers)))
            stats = cache.stats().as_dict()
            await cache.aclose()
            return stats

        stats = asyncio.run(main())
    results.put({"pid": os.getpid(), "values": values, "errors": errors, "stats": stats})


def die_holding_the_lease(url: str, ns: str, key: str, naive_lock: str, holding: Any) -> None:
    """Take the cache's lease on ``key`` (and a naive lock without expiry), then crash."""
    client = redis.Redis.from_url(url)
    client.set(naive_lock, os.getpid(), nx=True)  # dogpile's default: no expiry

    def load() -> str:
        holding.set()
        time.sleep(0.05)
        os._exit(17)  # a crash: no release, no finally

    cache = Cache(None, _tier(url, lease_ttl=0.6), namespace=ns)
    cache.get_or_set(key, load)


def coherence_peer(url: str, ns: str, conn: Connection) -> None:
    """A second process with L1 + L2. Commands over ``conn``:

    ``("load", key)`` reads ``key`` until this process's L1 serves it, answers its value;
    ``("watch", key, old)`` spins on ``get(key)`` (an L1 hit while the copy is there) until it
    stops returning ``old`` and answers ``(time.monotonic() when it changed, new value)``;
    ``("stats",)`` answers the stats; ``("stop",)`` ends.
    """
    cache = Cache(MemoryTier(1000, ttl=30), _tier(url), namespace=ns)
    missing = object()
    try:
        while True:
            command = conn.recv()
            if command[0] == "load":
                # Until served from L1: the writer's own message may still drop a first copy.
                hits, deadline = cache.stats().l1_hits, time.monotonic() + 2
                value: Any = cache.get(command[1], "MISS")
                while cache.stats().l1_hits == hits and time.monotonic() < deadline:
                    value = cache.get(command[1], "MISS")
                    time.sleep(0.001)
                conn.send(value)
            elif command[0] == "watch":
                _, key, old = command
                conn.send("watching")
                deadline = time.monotonic() + 5
                value = missing
                while time.monotonic() < deadline:
                    value = cache.get(key, "MISS")
                    if value != old:
                        break
                conn.send((time.monotonic(), value))
            elif command[0] == "stats":
                conn.send(cache.stats().as_dict())
            else:
                break
    finally:
        cache.close()
