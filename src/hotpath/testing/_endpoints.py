"""Stacks the fixtures hand out: a :class:`LocalStack`, or existing servers named by env vars."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..stack import PostgresServer, StackError
from ..stack._postgres import wait_caught_up

PRIMARY_ENV = "HOTPATH_TEST_PRIMARY_URL"
REPLICAS_ENV = "HOTPATH_TEST_REPLICA_URLS"
REDIS_ENV = "HOTPATH_TEST_REDIS_URL"
REDIS_CLUSTER_ENV = "HOTPATH_TEST_REDIS_CLUSTER_URL"


class ServerStack(Protocol):
    """What tests may rely on from ``hotpath_stack``, local or external.

    Process control (``stop``/``start``/``kill`` on nodes) exists on a local stack only;
    tests that need it take the ``hotpath_local_stack`` fixture, which skips otherwise.
    """

    @property
    def primary(self) -> PostgresServer: ...

    @property
    def replicas(self) -> Sequence[PostgresServer]: ...

    @property
    def redis_url(self) -> str: ...

    def wait_replicas_caught_up(
        self, timeout: float = 5.0, replicas: Sequence[PostgresServer] | None = None
    ) -> None: ...


@dataclass
class ExternalStack:
    """Servers someone else runs, named by ``HOTPATH_TEST_*`` environment variables."""

    primary: PostgresServer
    replicas: list[PostgresServer] = field(default_factory=list)
    redis_url_value: str | None = None

    @property
    def redis_url(self) -> str:
        if not self.redis_url_value:
            raise StackError(f"{REDIS_ENV} is not set: set it to use Redis with external servers")
        return self.redis_url_value

    def wait_replicas_caught_up(
        self, timeout: float = 5.0, replicas: Sequence[PostgresServer] | None = None
    ) -> None:
        wait_caught_up(self.primary, replicas or self.replicas, timeout)

    @classmethod
    def from_env(cls) -> ExternalStack | None:
        primary_url = os.environ.get(PRIMARY_ENV)
        if not primary_url:
            return None
        replica_urls = [u for u in os.environ.get(REPLICAS_ENV, "").split(",") if u.strip()]
        return cls(
            PostgresServer.from_url(primary_url, "primary"),
            [
                PostgresServer.from_url(u.strip(), f"replica{i}")
                for i, u in enumerate(replica_urls, 1)
            ],
            os.environ.get(REDIS_ENV) or None,
        )
