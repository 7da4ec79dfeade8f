"""The shop under uvicorn with two worker processes, as ``hotpath demo --workers 2`` serves
it: the runner's endpoints answer for the whole server (every request counted once, a reset
reaching every worker), and Redis answers what one worker's L1 does not have."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from hotpath.demo._load import LoadSpec, run_load
from hotpath.demo._process import ShopServer, shop_server
from hotpath.demo._server import serve
from hotpath.demo._workload import shop_mix
from hotpath.demo.shop import SCALES, load_shop
from hotpath.demo.shop.app import ShopSettings
from hotpath.demo.shop.fixes import Fixes
from hotpath.demo.shop.payments import PaymentBehaviour, create_payment_app
from hotpath.testing import ModuleDatabase

WORKERS = 2
# requests on fresh connections until every worker has served one: the kernel hands each
# connection to one of the workers accepting on the shared socket, so a few suffice
MAX_REQUESTS = 400
# a worker's answers after another worker's write that may still predate the invalidation
COHERENT_WITHIN = 5
RUNS = 2  # loads, each from a fresh set of connections
# three processes importing the app: over 30 s on a busy 2-core machine (it only bounds a failure)
START_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def server(hotpath_db: ModuleDatabase) -> Iterator[ShopServer]:
    load_shop(hotpath_db.dsn, SCALES["tiny"])
    with serve(create_payment_app(PaymentBehaviour(latency_s=0.001))) as payment_url:
        settings = ShopSettings(
            hotpath_db.async_url,
            payment_url,
            Fixes.only("cache"),
            redis_url=hotpath_db.redis_url,
            concurrency=4,
            workers=WORKERS,
        )
        with shop_server(settings, timeout=START_TIMEOUT_S) as running:
            yield running


def _get(server: ShopServer, path: str) -> None:
    # a connection of its own: the kernel picks a worker per connection
    response = httpx.get(f"{server.url}{path}", headers={"Connection": "close"}, timeout=30)
    assert response.status_code == 200, response.text


def _stats(server: ShopServer) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/__hotpath/stats", timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _reset(server: ShopServer) -> None:
    response = httpx.post(f"{server.url}/__hotpath/reset", timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["workers"] == WORKERS


def _served(stats: dict[str, Any]) -> dict[int, int]:
    return {int(w["pid"]): int(w["requests"]) for w in stats["workers"]}


def _until_every_worker_served(server: ShopServer, path: str, times: int = 1) -> int:
    """Requests ``path`` until every worker has served it ``times`` since the last reset; how
    many were sent."""
    for sent in range(1, MAX_REQUESTS + 1):
        _get(server, path)
        served = _served(_stats(server))
        if len(served) == WORKERS and all(count >= times for count in served.values()):
            return sent
    raise AssertionError(f"{MAX_REQUESTS} connections all went to one worker: {served}")


def test_stats_count_every_request_once_across_the_workers(server: ShopServer) -> None:
    _reset(server)
    sent = _until_every_worker_served(server, "/categories/2/products")
    for path in ("/products/3", "/users/4/orders", "/search?q=oak"):
        _get(server, path)
        sent += 1
    stats = _stats(server)
    served = _served(stats)
    assert len(served) == WORKERS
    assert all(count > 0 for count in served.values())
    assert sum(served.values()) == stats["requests"] == sent
    # observe's reports of both processes, merged by hotpath run's merge: each request once
    assert sum(e["count"] for e in stats["observe"]["endpoints"]) == sent
    report = httpx.get(f"{server.url}/__hotpath/report", timeout=60).json()
    assert sum(e["count"] for e in report["endpoints"]) == sent


def test_a_reset_reaches_every_worker(server: ShopServer) -> None:
    _reset(server)
    _until_every_worker_served(server, "/products/8")
    before = _stats(server)
    assert all(w["requests"] > 0 for w in before["workers"])
    assert before["observe"]["endpoints"]
    _reset(server)
    after = _stats(server)
    assert _served(after) == dict.fromkeys(_served(before), 0)
    assert after["requests"] == 0
    assert after["observe"]["endpoints"] == []
    assert all(not any(w["cache"].values()) for w in after["workers"])


def test_redis_answers_what_another_workers_l1_lacks(
    server: ShopServer, hotpath_db: ModuleDatabase
) -> None:
    assert hotpath_db.redis_url is not None
    with redis.Redis.from_url(hotpath_db.redis_url) as client:
        client.flushdb()  # this product's entries filled by no earlier test
    _reset(server)
    _get(server, "/products/21")
    first = _stats(server)
    filled_by = next(w for w in first["workers"] if w["requests"])
    assert filled_by["cache"]["misses"] > 0
    assert first["cache"]["l2_hits"] == 0
    _until_every_worker_served(server, "/products/21")
    stats = _stats(server)
    other = next(w for w in stats["workers"] if w["pid"] != filled_by["pid"])
    # the other worker's first read: not in its L1, found in Redis, never loaded again
    assert other["cache"]["l2_hits"] > 0
    assert other["cache"]["misses"] == 0
    assert stats["cache"]["misses"] == filled_by["cache"]["misses"]
    assert stats["cache"]["l2_hits"] == sum(w["cache"]["l2_hits"] for w in stats["workers"])


def test_an_order_placed_on_one_worker_reaches_the_other_workers_l1(server: ShopServer) -> None:
    user = 7
    orders = f"/users/{user}/orders"
    _reset(server)
    # the user's orders in both workers' L1: each answered them from it at least once
    _until_every_worker_served(server, orders, times=2)
    held = _stats(server)
    assert all(w["cache"]["l1_hits"] > 0 for w in held["workers"])
    before = _served(held)
    placed = httpx.post(
        f"{server.url}/orders",
        json={"user_id": user, "lines": [{"product_id": 5, "quantity": 1}]},
        headers={"Connection": "close"},
        timeout=30,
    )
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    after = _served(_stats(server))
    placed_by = next(pid for pid in after if after[pid] > before[pid])
    # the other worker's L1 held the list without the order: the invalidation published on
    # commit must drop it there too (L1 coherence across processes, by pub/sub: a read may
    # come before the message, hence a few answers; without it, L1 serves the list without
    # the order for its TTL, 30 s, far longer than these reads take)
    other_answers: list[bool] = []
    for _ in range(MAX_REQUESTS):
        if len(other_answers) == COHERENT_WITHIN:
            break
        before = _served(_stats(server))
        response = httpx.get(f"{server.url}{orders}", headers={"Connection": "close"}, timeout=30)
        assert response.status_code == 200, response.text
        after = _served(_stats(server))
        served_by = next(pid for pid in after if after[pid] > before[pid])
        if served_by != placed_by:
            other_answers.append(any(o["id"] == order_id for o in response.json()))
            if other_answers[-1]:
                break
    assert other_answers, "the other worker never answered"
    assert other_answers[-1], f"the other worker kept serving its stale L1: {other_answers}"


def test_the_load_generators_users_are_spread_over_the_workers(server: ShopServer) -> None:
    """Each user connects once and keeps its connection. On uvicorn's one shared socket the
    worker that wakes first accepts every connection waiting: in a 2-worker demo run, 4 of 9
    steps had every request on one worker. On a socket per worker the kernel spreads them
    (all 16 users on one of 2 workers: a chance of 1 in 32,768 per run)."""

    async def run() -> tuple[dict[str, Any], int]:
        # as the demo runs each step: warm up and reset on the runner's own connection,
        # which stays open during the load
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            await client.get("/products/1")
            await client.post("/__hotpath/reset")
            spec = LoadSpec(concurrency=16, duration_s=60.0, max_requests=64)
            load = await run_load(server.url, shop_mix(SCALES["tiny"]), spec)
            return (await client.get("/__hotpath/stats")).json(), load.requests

    spreads = []
    for _ in range(RUNS):
        stats, sent = asyncio.run(run())
        served = _served(stats)
        assert sum(served.values()) == stats["requests"] == sent
        spreads.append(sorted(served.values()))
    assert all(min(spread) > 0 for spread in spreads), spreads


@pytest.mark.faults
@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_cli_refuses_a_bad_worker_count(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hotpath", "demo", "--workers", value],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--workers" in lines[0]
    assert "Traceback" not in done.stderr
