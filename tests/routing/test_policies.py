"""Balancing, token wait mode, ORM routing and metrics, on the session stack's replicas."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Integer, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hotpath.routing import ReplicaSet, RoutingCollector, routed_sessionmaker, use_token
from hotpath.testing import ServerStack

from ._helpers import PORT, VALUE
from .conftest import Engines


class Base(DeclarativeBase):
    pass


class CounterRow(Base):
    __tablename__ = "counters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


@pytest.fixture
def replicas(engines: Engines) -> Iterator[ReplicaSet]:
    with ReplicaSet(engines.primary, engines.replicas, probe_interval_s=0.1) as replica_set:
        yield replica_set


def _ports(engines: Engines) -> dict[int | None, str]:
    return {e.url.port: f"replica{i}" for i, e in enumerate(engines.replicas, 1)} | {
        engines.primary.url.port: "primary"
    }


def test_least_in_flight_avoids_the_busy_replica_and_round_robin_alternates(
    engines: Engines,
) -> None:
    ports = _ports(engines)
    with ReplicaSet(engines.primary, engines.replicas, probe_interval_s=0.1) as replicas:
        Session = routed_sessionmaker(replicas, consistency="eventual")
        held = [engines.replicas[0].connect() for _ in range(3)]  # replica1 is busy
        try:
            served: Counter[str] = Counter()
            for _ in range(20):
                with Session() as session:
                    served[ports[session.execute(PORT).scalar_one()]] += 1
            assert served == {"replica2": 20}
        finally:
            for conn in held:
                conn.close()
    with ReplicaSet(
        engines.primary, engines.replicas, policy="round_robin", probe_interval_s=0.1
    ) as replicas:
        Session = routed_sessionmaker(replicas, consistency="eventual")
        order = []
        for _ in range(6):
            with Session() as session:
                order.append(ports[session.execute(PORT).scalar_one()])
        assert order in (["replica1", "replica2"] * 3, ["replica2", "replica1"] * 3)


def test_wait_mode_reads_from_a_replica_that_catches_up_within_the_wait(
    hotpath_stack: ServerStack, engines: Engines, replicas: ReplicaSet, resume_all: None
) -> None:
    ports = _ports(engines)
    fast = routed_sessionmaker(replicas)
    wait = routed_sessionmaker(replicas, mode="wait", wait_timeout_s=3.0)
    for replica in hotpath_stack.replicas:
        replica.pause_replay()
    with use_token(None):
        with fast() as session:
            session.execute(text("UPDATE counters SET value = value + 1 WHERE id = 1"))
            session.commit()
            written = session.execute(VALUE, {"id": 1}).scalar_one()  # fast: the primary
            assert ports[session.execute(PORT).scalar_one()] == "primary"

        def resume() -> None:
            for replica in hotpath_stack.replicas:
                replica.resume_replay()

        resumer = threading.Timer(0.3, resume)
        resumer.start()
        began = time.monotonic()
        with wait() as session:  # waits on the replica until it replays the token
            assert session.execute(VALUE, {"id": 1}).scalar_one() == written
            assert ports[session.execute(PORT).scalar_one()] != "primary"
        assert time.monotonic() - began >= 0.2
        resumer.join()
    assert replicas.stats()["token waits"] >= 1


def test_orm_reads_writes_and_autoflush_are_routed(engines: Engines, replicas: ReplicaSet) -> None:
    primary_port = engines.primary.url.port
    Session = routed_sessionmaker(replicas)
    with use_token(None), Session() as session:
        row = session.get(CounterRow, 2)
        assert row is not None
        assert session.execute(PORT).scalar_one() != primary_port  # the get went to a replica
        session.commit()
        row.value += 1  # dirty: the next query autoflushes, so it must read on the primary
        assert session.scalars(select(CounterRow.value).where(CounterRow.id == 2)).one() == (
            row.value
        )
        assert session.execute(PORT).scalar_one() == primary_port
        session.commit()
        fresh = session.scalars(select(CounterRow).where(CounterRow.id == 2)).one()
        assert fresh.value == row.value  # read-your-writes after the commit


def test_prometheus_collector_reports_nodes_and_events(
    engines: Engines, replicas: ReplicaSet
) -> None:
    registry = CollectorRegistry()
    registry.register(RoutingCollector(replicas, set_name="shop"))
    Session = routed_sessionmaker(replicas, consistency="eventual")
    for _ in range(5):
        with Session() as session:
            session.execute(PORT)
    reads = sum(
        registry.get_sample_value("hotpath_routing_reads_total", {"set": "shop", "node": n}) or 0
        for n in ("replica1", "replica2")
    )
    assert reads >= 5
    assert (
        registry.get_sample_value("hotpath_routing_healthy", {"set": "shop", "node": "replica1"})
        == 1
    )
    assert (
        registry.get_sample_value(
            "hotpath_routing_lag_seconds", {"set": "shop", "node": "replica2"}
        )
        is not None
    )


def test_malformed_incoming_token_is_ignored_by_the_middleware() -> None:
    from flask import Flask

    from hotpath.routing import WSGITokenMiddleware, current_token

    app = Flask(__name__)

    @app.get("/")
    def token() -> dict[str, str | None]:
        return {"token": current_token()}

    app.wsgi_app = WSGITokenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    client = app.test_client()
    client.set_cookie("hotpath_lsn", "not-a-position")
    assert client.get("/").json == {"token": None}
    client.set_cookie("hotpath_lsn", "0/16B3748")
    assert client.get("/").json == {"token": "0/16B3748"}
