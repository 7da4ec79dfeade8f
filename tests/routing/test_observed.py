"""Routing under observe: the profiler watches a routed session without routing it itself."""

from __future__ import annotations

from sqlalchemy import select

from hotpath.observe import Profiler
from hotpath.routing import ReplicaSet, routed_sessionmaker

from ._helpers import Counter
from .conftest import Engines


def test_observed_orm_reads_are_routed_and_counted_once(engines: Engines) -> None:
    # observe used to ask the session's get_bind which engine an ORM statement runs on: for
    # a routing session that chose a replica and counted a read, so every read was counted
    # twice (and the round robin advanced twice per statement)
    reads = 12
    with ReplicaSet(engines.primary, engines.replicas, probe_interval_s=0.1) as replicas:
        # a loop of reads is an N+1 by design here: logged, not warned
        profiler = Profiler(engines.primary, *engines.replicas, modes={"n_plus_one": "log"})
        try:
            # without retries: the default sessionmaker places reads in its own ORM hook, with
            # an explicit bind, before observe sees them
            Session = routed_sessionmaker(replicas, consistency="eventual", retry_reads=False)
            with profiler.scope("reads") as scope:
                for number in range(reads):
                    with Session() as session:
                        session.scalars(select(Counter).where(Counter.id == 1 + number % 2)).all()
            counted = sum(node.reads for node in replicas.status() if not node.writer)
        finally:
            profiler.uninstrument()
    assert scope.query_count == reads  # observe saw every statement of the routed session
    assert counted == reads
