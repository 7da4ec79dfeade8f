"""hotpath.cache: a multi-tier cache (in-process L1 + Redis L2) that is fast, stampede-proof
and never stale, with sync (:class:`Cache`) and async (:class:`AsyncCache`) twins.

- :class:`MemoryTier` — the in-process tier (W-TinyLFU or LRU, TTL cap).
- :class:`RedisTier` — the shared tier (URL or client, Cluster, leases, circuit breaker).
- :class:`CacheOptions` — a cache's options, validated once (or keywords of the constructors).
- ``hotpath.cache.orm`` — SQLAlchemy: commit-aware invalidation and query-result caching.
"""

from ._async import AsyncCache
from ._errors import (
    CacheConfigError,
    CacheError,
    CacheKeyError,
    SerializationError,
    ValueTooLargeError,
)
from ._memory import MemoryTier
from ._options import CacheKeywords, CacheOptions
from ._redis import RedisTier
from ._serialize import (
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
    register_type,
)
from ._stats import CacheStats
from ._sync import Cache

__all__ = [
    "AsyncCache",
    "Cache",
    "CacheConfigError",
    "CacheError",
    "CacheKeyError",
    "CacheKeywords",
    "CacheOptions",
    "CacheStats",
    "JsonSerializer",
    "MemoryTier",
    "MsgpackSerializer",
    "PickleSerializer",
    "RedisTier",
    "SerializationError",
    "Serializer",
    "ValueTooLargeError",
    "register_type",
]
