"""The pool's errors and warnings; each message names the problem and the fix."""

from __future__ import annotations

import psycopg_pool
from sqlalchemy import exc as sa_exc

from .._errors import HotpathError


class PoolError(HotpathError):
    """Base class of hotpath.pool's errors."""


class PoolConfigError(PoolError, ValueError):
    """A plan or instrumentation option is out of range or unusable."""


class PoolExhaustedError(PoolError):
    """No connection within the acquire timeout; the message says who holds them."""


class QueuePoolExhaustedError(PoolExhaustedError, sa_exc.TimeoutError):
    """From a SQLAlchemy pool; still a ``sqlalchemy.exc.TimeoutError`` for existing handlers."""


class ConnectionPoolExhaustedError(PoolExhaustedError, psycopg_pool.PoolTimeout):
    """From a psycopg_pool pool; still a ``psycopg_pool.PoolTimeout`` for existing handlers."""


class SessionStateWarning(UserWarning):
    """Session state (SET, advisory locks, LISTEN, ...) used behind a transaction pooler."""


class PoolInstrumentationWarning(UserWarning):
    """``instrument_pool`` could not meter a pool fully; the message says what is missing."""
