"""A fresh database per test module, on the primary and (by replication) on every replica."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from ..stack import PostgresServer
from ._endpoints import ServerStack

_REDIS_DATABASES = 16


@dataclass(frozen=True)
class ModuleDatabase:
    """A database created for one test module: URLs for the primary and each replica."""

    name: str
    primary: PostgresServer
    replicas: list[PostgresServer]
    redis_url: str | None

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg) of this database on the primary."""
        return self.primary.url_for(self.name)

    @property
    def async_url(self) -> str:
        """SQLAlchemy URL for ``create_async_engine`` (asyncpg) on the primary."""
        return self.primary.url_for(self.name, driver="asyncpg")

    @property
    def dsn(self) -> str:
        return self.primary.dsn_for(self.name)

    @property
    def replica_urls(self) -> list[str]:
        return [r.url_for(self.name) for r in self.replicas]


def database_name(module: str) -> str:
    stem = re.sub(r"[^a-z0-9]+", "_", module.lower()).strip("_")[-40:]
    return f"t_{stem}_{secrets.token_hex(3)}"


@contextmanager
def fresh_database(stack: ServerStack, module: str, redis_db: int) -> Iterator[ModuleDatabase]:
    """Create an empty database (and flush a Redis database) for ``module``; drop it after."""
    name = database_name(module)
    with stack.primary.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis_url = None
    try:
        stack.wait_replicas_caught_up(timeout=30)
        if _has_redis(stack):
            redis_url = flushed_redis_url(stack, redis_db)
        yield ModuleDatabase(name, stack.primary, list(stack.replicas), redis_url)
    finally:
        with stack.primary.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _has_redis(stack: ServerStack) -> bool:
    try:
        _ = stack.redis_url
    except Exception:  # a stack started without Redis, or external servers without its URL
        return False
    return True


def flushed_redis_url(stack: ServerStack, db: int) -> str:
    """The URL of Redis database ``db`` of the stack, flushed (raises if it has no Redis)."""
    url = re.sub(r"/\d*$", "", stack.redis_url) + f"/{db % _REDIS_DATABASES}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url
