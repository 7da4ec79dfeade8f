"""Overhead of hotpath.observe on an ORM workload, and nplusone on the same workload.

Workloads (PostgreSQL from a LocalStack of the benchmark's own, over TCP):
- ``orm``: 100 users with their orders, selectin-loaded, every order touched;
- ``get``: 1,000 single-row ``session.get`` in one session.

Contenders per workload, interleaved round by round: no instrumentation (baseline);
instrumented but outside any scope; inside a profiled scope (every detector on, as in
tests and development). nplusone, the reference N+1 detector for SQLAlchemy, is tried on
the same workload: it no longer imports on SQLAlchemy 2.x, which is recorded instead.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session, selectinload

from hotpath.observe import Profiler
from hotpath.stack import LocalStack

from ._harness import Series, console, report, time_once
from ._shop_models import Base, User, seed

USERS = 1000


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
    plain, outside, inside = (
        Series("no instrumentation"),
        Series("instrumented, no scope"),
        Series("inside a profiled scope"),
    )
    profiler = Profiler(modes={"n_plus_one": "off", "duplicate": "off"})
    for _ in range(3):  # warm caches, pools, pglast
        work(engine)
    for _ in range(rounds):
        plain.samples.append(time_once(lambda: work(engine)))
        profiler.instrument(engine)
        outside.samples.append(time_once(lambda: work(engine)))

        def scoped() -> None:
            with profiler.scope("bench"):
                work(engine)

        inside.samples.append(time_once(scoped))
        profiler.uninstrument()
    return [plain, outside, inside]


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
