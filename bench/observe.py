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
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable

from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session, selectinload

from hotpath.observe import Profiler
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


def run(quick: bool) -> str:
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
    return "\n\n".join(sections) + f"\n\nnplusone 1.0.0 on the same workload: {status}.\n"
