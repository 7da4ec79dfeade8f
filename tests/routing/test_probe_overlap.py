"""Two probes of one node may overlap (a first probe of ``start()`` still hanging when the
node's probe thread begins, or ``probe_now()``): the older unanswered one is what says the
node hangs, so a later probe does not make a hung node look freshly probed."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from hotpath.routing import ReplicaSet
from hotpath.routing._health import ProbeResult
from hotpath.routing._router import RoutedNode

from .conftest import Engines


def test_an_overlapping_probe_keeps_the_hung_probes_start(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ReplicaSet(engines.primary, engines.replicas, probe_interval_s=3600.0) as replicas:
        victim = replicas.router.nodes[1]
        real_query = ReplicaSet._query_probe
        gate = threading.Event()
        entered: list[threading.Event] = [threading.Event(), threading.Event()]

        def hung_query(self: ReplicaSet, node: RoutedNode) -> ProbeResult:
            if node is victim:  # the server neither answers nor drops the connection
                next(e for e in entered if not e.is_set()).set()
                gate.wait(30)
            return real_query(self, node)

        monkeypatch.setattr(ReplicaSet, "_query_probe", hung_query)
        probes: list[threading.Thread] = []

        def probe() -> None:
            thread = threading.Thread(target=replicas._probe_once, args=(victim,))
            probes.append(thread)
            thread.start()

        try:
            probe()
            assert entered[0].wait(30)
            first_started = victim.health.probe_started_at
            assert first_started is not None
            probe()  # overlaps the hung one
            assert entered[1].wait(30)
            assert victim.health.probe_started_at == first_started
        finally:
            gate.set()
            for thread in probes:
                thread.join(30)
        report: Any = next(n for n in replicas.status() if n.name == victim.name)
        assert victim.health.probe_started_at is None  # both answered
        assert report.healthy
