"""A replica set's options: one validated, frozen RoutingConfig, built once from ``config=``
and/or the keyword options, and passed through as is (real primary and replicas)."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from hotpath.routing import AsyncReplicaSet, ReplicaSet, RoutingConfig, RoutingConfigError
from hotpath.testing import ModuleDatabase

from .conftest import Engines


def test_keywords_and_a_config_build_one_frozen_config(engines: Engines) -> None:
    base = RoutingConfig(max_lag_s=5.0, eject_after=3)
    with ReplicaSet(
        engines.primary,
        engines.replicas,
        config=base,
        probe_interval_s=0.3,
        weights=[1, 2],
        policy="round_robin",
    ) as replicas:
        config = replicas.router.config
        assert config == dataclasses.replace(
            base, probe_interval_s=0.3, weights=(1, 2), policy="round_robin"
        )
        assert base.probe_interval_s == 0.5  # the caller's config is not changed
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.max_lag_s = 1.0  # type: ignore[misc]
        assert len(replicas.status()) == 3


def test_a_config_alone_is_passed_through_as_is(engines: Engines) -> None:
    config = RoutingConfig(max_lag_s=2.0, readmit_after=4)
    with ReplicaSet(engines.primary, engines.replicas, config=config) as replicas:
        assert replicas.router.config is config


@pytest.mark.faults
def test_an_unknown_option_is_named_with_the_known_ones(engines: Engines) -> None:
    with pytest.raises(RoutingConfigError, match=r"max_lag=1: not an option of a replica set"):
        ReplicaSet(engines.primary, engines.replicas, start=False, max_lag=1)  # type: ignore[call-arg]
    with pytest.raises(RoutingConfigError, match="weights=\\[1\\]: give one positive number"):
        ReplicaSet(engines.primary, engines.replicas, config=RoutingConfig(weights=[1]))


@pytest.mark.faults
async def test_async_an_unknown_option_is_named_and_a_config_is_passed_through(
    engines: Engines, hotpath_db: ModuleDatabase
) -> None:
    primary = create_async_engine(hotpath_db.async_url)
    replicas = [
        create_async_engine(r.url_for(hotpath_db.name, driver="asyncpg"))
        for r in hotpath_db.replicas
    ]
    try:
        with pytest.raises(RoutingConfigError, match=r"probe_every=1: not an option"):
            AsyncReplicaSet(primary, replicas, probe_every=1)  # type: ignore[call-arg]
        config = RoutingConfig(max_lag_s=3.0)
        async with AsyncReplicaSet(primary, replicas, config=config) as replica_set:
            assert replica_set.router.config is config
            assert len(replica_set.status()) == 3
    finally:
        for engine in [primary, *replicas]:
            await engine.dispose()
