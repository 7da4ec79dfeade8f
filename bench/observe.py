"""Overhead of hotpath.observe on an ORM workload, and nplusone on the same workload.

Workloads (PostgreSQL from a LocalStack of the benchmark's own, over TCP):
- ``orm``: 100 users with their orders, selectin-loaded, every order touched;
- ``get``: 1,000 single-row ``session.get`` in one session.

Contenders per workload, interleaved round by round: no instrumentation (baseline);
instrumented but outside any scope; inside a scope with every detector on (tests and
development); inside a scope with production settings (slow and unbounded queries only).
Times are this process's CPU time: observe's cost is client-side CPU, and CPU time is not
skewed by other processes on a shared machine (wall-clock ratios are lower, since they also
contain the server's time). Each profiler is instrumented again every round (the baseline
needs no listeners at all) and runs one untimed scope first, so that the timed runs see the
steady state of an application that instrumented once at start-up. nplusone, the reference
N+1 detector for SQLAlchemy, is tried on the same workload: it no longer imports on
SQLAlchemy 2.x, which is recorded instead.

``shop``: the demo shop, optimized configuration (its requests are fast, so observe's share
shows), each in its own server process: one with observe's middleware and profiler as the
demo serves it (the breakdown and every detector on), one without observe at all. Each
round sends the same seeded, bounded closed-loop load on loopback to both servers at once
(after an untimed warm-up round), so that other processes on a shared machine weigh on both
alike. Reported:
requests/s, latency p50/p99 as the load generator sees it, and the server process's CPU time
per request, read from ``/__hotpath/cpu`` around each round (what observe adds to each
request; the runner's own calls, such as building observe's report, are not in it), as the
whole process's and as its event loop thread's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import httpx
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session, selectinload

from hotpath.demo._load import LoadSpec, run_load
from hotpath.demo._process import ShopServer, shop_server
from hotpath.demo._runner import FALLBACK_INDEXES, prepare_indexes
from hotpath.demo._server import serve
from hotpath.demo._workload import shop_mix
from hotpath.demo.shop import SCALES, load_shop
from hotpath.demo.shop.app import ShopSettings
from hotpath.demo.shop.fixes import Fixes
from hotpath.demo.shop.payments import PaymentBehaviour, create_payment_app
from hotpath.demo.shop.server import ServerOptions
from hotpath.observe import Profiler
from hotpath.observe._report import Timing
from hotpath.stack import LocalStack

from ._harness import Series, console, report, time_once
from ._shop_models import Base, User, seed

USERS = 1000
CPU = time.process_time
logging.getLogger("hotpath.observe").setLevel(logging.ERROR)  # findings are expected here


def _orm(engine: Engine) -> None:
    with Session(engine) as session:
        query = select(User).options(selectinload(User.orders)).order_by(User.id).limit(100)
        for user in session.scalars(query):
            for order in user.orders:
                _ = order.total


def _get(engine: Engine) -> None:
    with Session(engine) as session:
        for user_id in range(1, USERS + 1):
            session.get(User, user_id)


def _nplusone_status() -> str:
    try:
        import nplusone.ext.sqlalchemy  # noqa: F401
    except Exception as exc:
        return f"does not import on SQLAlchemy 2.x ({type(exc).__name__}: {exc})"
    return "imported"


def _measure(engine: Engine, work: Callable[[Engine], None], rounds: int) -> list[Series]:
    plain = Series("no instrumentation")
    outside = Series("instrumented, no scope")
    everything = Series("scope, all detectors")
    production = Series(
        "scope, production settings", note="slow + unbounded only, counts kept, not SQL"
    )
    all_on = Profiler(modes={"n_plus_one": "log", "duplicate": "log"})
    prod = Profiler(
        modes={"n_plus_one": "off", "duplicate": "off", "unused_eager_load": "off"},
        keep_queries=0,
    )
    for _ in range(3):  # warm caches, pools, pglast
        work(engine)

    def scoped(profiler: Profiler) -> Callable[[], None]:
        def run() -> None:
            with warnings.catch_warnings(), profiler.scope("bench"):
                warnings.simplefilter("ignore")
                work(engine)

        return run

    for _ in range(rounds):
        plain.samples.append(time_once(lambda: work(engine), CPU))
        for profiler, series in ((all_on, everything), (prod, production)):
            profiler.instrument(engine)
            # An application instruments once, at start-up; the first scope afterwards also
            # registers the per-mapper collection listeners. Untimed here, so that every
            # round measures the steady state rather than re-instrumenting.
            scoped(profiler)()
            if profiler is all_on:
                outside.samples.append(time_once(lambda: work(engine), CPU))
            series.samples.append(time_once(scoped(profiler), CPU))
            profiler.uninstrument()
    return [plain, outside, everything, production]


@dataclass
class _Served:
    """One shop server's share of the interleaved load."""

    name: str
    server: ShopServer
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    latency: Timing = field(default_factory=Timing)
    round_cpu_ms: list[float] = field(default_factory=list)  # CPU per request, each round
    loop_cpu_s: float = 0.0  # the event loop's thread alone
    round_loop_ms: list[float] = field(default_factory=list)


async def _round(served: _Served, spec: LoadSpec, timed: bool) -> None:
    async with httpx.AsyncClient(base_url=served.server.url, timeout=30) as client:
        before = (await client.get("/__hotpath/cpu")).json()
        load = await run_load(served.server.url, shop_mix(SCALES["tiny"]), spec)
        after = (await client.get("/__hotpath/cpu")).json()
    if timed:
        served.requests += load.requests
        served.errors += load.errors
        served.seconds += load.duration_s
        spent = after["process_cpu_s"] - before["process_cpu_s"]
        on_loop = after["loop_cpu_s"] - before["loop_cpu_s"]
        served.cpu_s += spent
        served.loop_cpu_s += on_loop
        served.round_cpu_ms.append(1000 * spent / max(1, load.requests))
        served.round_loop_ms.append(1000 * on_loop / max(1, load.requests))
        served.latency.merge(load.overall_latency())


async def _together(contenders: list[_Served], spec: LoadSpec, timed: bool) -> None:
    await asyncio.gather(*(_round(served, spec, timed) for served in contenders))


def _shop_table(contenders: list[_Served]) -> str:
    bare = contenders[0]

    def rate(s: _Served) -> float:
        return s.requests / s.seconds

    def cpu_ms(s: _Served) -> float:
        return 1000 * s.cpu_s / s.requests

    def loop_ms(s: _Served) -> float:
        return 1000 * s.loop_cpu_s / s.requests

    lines = [
        "| server | requests | errors | req/s | p50 ms | p99 ms | server CPU ms/request "
        "| loop thread CPU ms/request | x req/s | x p50 | x p99 | x CPU/request "
        "| x loop CPU/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in contenders:
        p50, p99 = s.latency.percentile_ms(50), s.latency.percentile_ms(99)
        cells = [
            s.name,
            str(s.requests),
            str(s.errors),
            f"{rate(s):.1f}",
            f"{p50:.2f}",
            f"{p99:.2f}",
            f"{cpu_ms(s):.3f}",
            f"{loop_ms(s):.3f}",
            f"{rate(bare) / rate(s):.3f}",
            f"{p50 / bare.latency.percentile_ms(50):.3f}",
            f"{p99 / bare.latency.percentile_ms(99):.3f}",
            f"{cpu_ms(s) / cpu_ms(bare):.3f}",
            f"{loop_ms(s) / loop_ms(bare):.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    console.print(table)
    return table


@contextmanager
def optimized_shop(users: int) -> Iterator[ShopSettings]:
    """The settings of the optimized shop at tiny scale on a fresh local stack (a primary, a
    replica, Redis) and a payment stub answering in 50 ms: what the shop part of this bench
    and ``bench._observe_profile`` serve."""
    fixes = Fixes.optimized()
    with LocalStack(replicas=1, redis=True) as stack:
        with stack.primary.connect() as conn:
            conn.execute("DROP DATABASE IF EXISTS shop WITH (FORCE)")
            conn.execute("CREATE DATABASE shop")
        dsn = stack.primary.dsn_for("shop")
        load_shop(dsn, SCALES["tiny"])
        prepare_indexes(dsn, fixes, FALLBACK_INDEXES)
        stack.wait_replicas_caught_up(timeout=120)
        with serve(create_payment_app(PaymentBehaviour(latency_s=0.05))) as payment_url:
            yield ShopSettings(
                primary_url=stack.primary.url_for("shop", driver="asyncpg"),
                payment_url=payment_url,
                fixes=fixes,
                replica_urls=[r.url_for("shop", driver="asyncpg") for r in stack.replicas],
                redis_url=stack.redis_url,
                concurrency=users,
            )


def _shop(quick: bool) -> str:
    # rounds bounded by a request count: each server gets the same seeded request sequence,
    # so CPU per request compares the same work (a time bound lets the faster one do more
    # of the cheap, cached steps)
    rounds, requests, users = (2, 200, 8) if quick else (8, 500, 8)
    with optimized_shop(users) as settings, contextlib.ExitStack() as servers:
        # each server its own cache (keys and invalidations): with one cache, whichever
        # server asked for a key first paid its load and the other got a hit, a race that
        # moved a round's CPU per request by +-15%
        bare, observed = (
            servers.enter_context(
                shop_server(
                    replace(settings, cache_namespace=f"shop-{name}"),
                    options=ServerOptions(observe=observe),
                )
            )
            for name, observe in (("bare", False), ("observed", True))
        )
        contenders = [
            _Served("no observe", bare),
            _Served("observe, every detector", observed),
        ]
        spec = LoadSpec(concurrency=users, duration_s=120.0, max_requests=requests)
        # warm up (connections, statements, each server's own cache: the first rounds of a
        # cold cache cost up to twice the steady state's CPU per request), then every round
        # loads both servers at once with the same seeded requests: whatever else the
        # machine runs meanwhile weighs on both alike (rounds taken in turn measured the
        # machine's load as much as observe on a busy 2-core machine)
        for _ in range(2):
            asyncio.run(_together(contenders, spec, False))
        for _ in range(rounds):
            asyncio.run(_together(contenders, spec, True))
    head = (
        f"optimized shop (tiny scale), {users} users on loopback, {rounds} rounds of "
        f"{requests} requests per server, both servers loaded at once; ratios are observe / "
        "no observe "
        "(req/s: no observe / observe)"
    )
    plain, watched = contenders
    # each round loaded both at once: its ratio compares like with like, and the median of
    # the rounds' ratios is not moved by one round the machine disturbed more than the rest
    spread = "\n".join(
        _per_round(what, watched_ms, plain_ms)
        for what, watched_ms, plain_ms in (
            ("server CPU", watched.round_cpu_ms, plain.round_cpu_ms),
            # the requests' own work, without the process's other threads (the default
            # executor's CPU varies from server to server by a few % of the whole)
            ("event loop thread CPU", watched.round_loop_ms, plain.round_loop_ms),
        )
    )
    console.print(spread)
    return f"{head}\n\n{_shop_table(contenders)}\n\n{spread}"


def _per_round(what: str, watched_ms: list[float], plain_ms: list[float]) -> str:
    ratios = sorted(o / b for o, b in zip(watched_ms, plain_ms, strict=True))
    return (
        f"{what} per request, observe / no observe, per round: median "
        f"{statistics.median(ratios):.3f} (rounds from {ratios[0]:.3f} to {ratios[-1]:.3f})"
    )


def run(quick: bool) -> str:
    shop = _shop(quick)
    status = _nplusone_status()
    with LocalStack(replicas=0, redis=False) as stack:
        engine = create_engine(stack.primary.url)
        Base.metadata.create_all(engine)
        seed(engine, users=USERS, orders_per_user=5)
        sections = []
        for name, work, rounds in (
            ("orm", _orm, 30 if quick else 200),
            ("get", _get, 5 if quick else 30),
        ):
            series = _measure(engine, work, rounds)
            table = report(f"observe: {name}", series, baseline="no instrumentation")
            sections.append(f"### {name}\n\n{table}")
        engine.dispose()
    console.print(f"nplusone: {status}")
    sections.append(f"### shop under load\n\n{shop}")
    return "\n\n".join(sections) + f"\n\nnplusone 1.0.0 on the same workload: {status}.\n"
