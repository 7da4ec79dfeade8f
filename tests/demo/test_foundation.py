"""The demo's building blocks: deterministic data, Zipf popularity, the bounded load generator."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import psycopg
import pytest
from fastapi import FastAPI, HTTPException

from hotpath.demo._load import LoadSpec, LoadTargetError, Recorder, run_load
from hotpath.demo._server import serve
from hotpath.demo.shop import SCALES, generate, load_shop
from hotpath.demo.shop.data import Zipf
from hotpath.testing import ModuleDatabase


def test_generated_data_is_deterministic_per_seed() -> None:
    tiny = SCALES["tiny"]
    first = list(generate(tiny, seed=1)["orders"]())
    assert first == list(generate(tiny, seed=1)["orders"]())
    assert first != list(generate(tiny, seed=2)["orders"]())
    assert len(first) == tiny.orders


def test_popularity_is_zipf_skewed() -> None:
    draws = Zipf(1000).draws(random.Random(3), 20_000)
    counts = Counter(draws)
    top_ten = sum(count for _, count in counts.most_common(10))
    assert top_ten / len(draws) > 0.3  # 1% of the items get over 30% of the picks
    assert len(counts) > 500  # ...and the long tail is still there


def test_load_shop_fills_every_table_with_copy(hotpath_db: ModuleDatabase) -> None:
    counts = load_shop(hotpath_db.dsn, SCALES["tiny"])
    with psycopg.connect(hotpath_db.dsn) as conn:
        for table, expected in counts.items():
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (expected,)
        indexes = [
            name
            for (name,) in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
            )
        ]
        partitions = [
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'order_events'::regclass"
            )
        ]
    assert all(name.endswith("_pkey") for name in indexes)  # primary keys only: naive
    assert {f"{table}_pkey" for table in counts} <= set(indexes)
    assert len(partitions) == 4  # order events: this month and the next three


def _slow_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        await asyncio.sleep(0.005)
        return {"id": item_id}

    @app.get("/broken")
    async def broken() -> dict[str, int]:
        raise HTTPException(503, "dependency down")

    return app


async def _get_item(recorder: Recorder, rng: random.Random) -> None:
    await recorder.request("GET /items/{id}", "GET", f"/items/{rng.randint(1, 100)}")


async def _get_broken(recorder: Recorder, rng: random.Random) -> None:
    await recorder.request("GET /broken", "GET", "/broken")


async def test_load_is_bounded_by_request_count_and_duration() -> None:
    with serve(_slow_app()) as base_url:
        capped = await run_load(
            base_url, [(1.0, _get_item)], LoadSpec(concurrency=4, duration_s=30, max_requests=40)
        )
        # stopped by the count, long before the 30 s: each of the 4 users may finish one in flight
        assert 40 <= capped.requests <= 43
        timed = await run_load(
            base_url,
            [(4.0, _get_item), (1.0, _get_broken)],
            LoadSpec(concurrency=4, duration_s=0.5, max_requests=10**6),
        )
    assert timed.duration_s >= 0.5  # stopped by the duration (the count is out of reach)
    items, broken = timed.endpoints["GET /items/{id}"], timed.endpoints["GET /broken"]
    assert items.errors == 0
    assert broken.errors == broken.requests > 0
    assert items.requests > broken.requests  # the 4:1 mix
    assert items.latency.percentile_ms(50) >= 5.0  # the server's own sleep
    assert timed.throughput() > 0


async def _browse(recorder: Recorder, rng: random.Random) -> None:
    """A step of several requests, as the shop's browsing is: it stops once the time is up."""
    for _ in range(rng.randint(1, 6)):
        await recorder.request("GET /items/{id}", "GET", f"/items/{rng.randint(1, 100)}")
        if recorder.expired:
            return


async def test_load_bounded_by_work_serves_the_same_requests_every_time() -> None:
    work = LoadSpec(concurrency=3, duration_s=30, steps_per_user=4, seed=5)
    with serve(_slow_app()) as base_url:
        first = await run_load(base_url, [(1.0, _browse)], work)
        again = await run_load(base_url, [(1.0, _browse)], work)
        other = await run_load(base_url, [(1.0, _browse)], LoadSpec(3, 30, steps_per_user=4))
        capped = await run_load(
            base_url, [(1.0, _browse)], LoadSpec(concurrency=3, duration_s=0.05, steps_per_user=50)
        )
    assert first.steps == again.steps == 12  # every user ran exactly its 4 actions
    assert first.complete
    assert again.complete
    assert first.requests == again.requests  # the same actions: the same requests
    assert other.steps == 12  # another seed: other draws, the same amount of work
    assert first.mean_ms() >= 5.0  # the server's own sleep
    # the duration stays a cap: stopped with work left, the run says so
    assert not capped.complete
    assert capped.steps < 150


async def test_load_refuses_anything_but_loopback() -> None:
    with pytest.raises(LoadTargetError, match=r"only targets 127\.0\.0\.1"):
        await run_load("http://10.0.0.5:8000", [(1.0, _get_item)], LoadSpec(duration_s=0.1))
