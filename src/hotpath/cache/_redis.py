"""The Redis tier (L2): how to reach Redis (URL or client; standalone, Sentinel-managed or
Cluster; sync and async), the Lua scripts that make leases and fills atomic, the Redis names
of entries, leases, tags and the invalidation channel, and the circuit breaker guarding it.

Every key's entry and lease share one hash tag (``ns:{key}`` and ``ns:{key}:lease``), so the
scripts touch one Cluster slot; tag versions live under ``ns:tag:{tag}``, one slot each.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.connection
import redis.sentinel

from ..concurrent import CircuitBreaker
from . import _checks as checks
from ._errors import CacheConfigError

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

# Whoever can write to Redis may have left anything under our names (another type, a
# number, a lease without expiry): reads go through pcall, so such a value reads as absent (a
# miss) instead of failing the script, and our writes (SET) replace it.
_READ = """
local function read(key)
  local ok, value = pcall(redis.call, 'GET', key)
  if ok then return value end
  return false
end
"""

# KEYS: entry, lease. ARGV: token, lease ms, "1" to skip reading the entry.
# -> {1, entry} present | {2} lease taken | {3, ms left} someone else holds the lease
# A lease without expiry or with more time left than any lease we take is not one of ours:
# it is replaced, or it would block every loader of the key.
ACQUIRE = (
    _READ
    + """
if ARGV[3] == '0' then
  local v = read(KEYS[1])
  if v then return {1, v} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
local left = redis.call('PTTL', KEYS[2])
if left < 0 or left > tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2}
end
return {3, left}
"""
)

# KEYS: entry, lease. ARGV: token, payload, ttl ms, channel, message.
# Stores only while the caller still holds its lease: an invalidation deletes the lease, so a
# value loaded before it can never be written after it (memcache leases).
FILL = (
    _READ
    + """
if read(KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""
)

# KEYS: lease. ARGV: token, channel, message. Give a lease back (the load failed).
RELEASE = (
    _READ
    + """
if read(KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""
)

# KEYS: entry, lease. ARGV: payload, ttl ms, channel, message. An explicit set wins over any
# load in flight: the lease goes, so that load's older value is refused.
WRITE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# KEYS: entry, lease. ARGV: channel, message.
DELETE = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""

# KEYS: tag. ARGV: channel, message without its version. O(1) whatever the number of tagged
# entries. Versions only grow, so every process can ignore a late (older) one: the next is
# Redis's clock in microseconds, or one past the current version if that is ahead (so a tag
# key lost to eviction or a flush never brings back a version entries were stored under).
# Returns the new version (as a string: Lua numbers are doubles, exact below 2^53).
BUMP_TAG = (
    _READ
    + """
local now = redis.call('TIME')
local version = tonumber(now[1]) * 1000000 + tonumber(now[2])
local current = tonumber(read(KEYS[1]) or '')
if current and current >= version and current < 9007199254740991 and current % 1 == 0 then
  version = current + 1
end
version = string.format('%.0f', version)
redis.call('SET', KEYS[1], version)
redis.call('PUBLISH', ARGV[1], ARGV[2] .. version)
return version
"""
)

SCRIPTS = {
    "acquire": ACQUIRE,
    "fill": FILL,
    "release": RELEASE,
    "write": WRITE,
    "delete": DELETE,
    "bump_tag": BUMP_TAG,
}


class RedisTier:
    """The shared Redis tier.

    ``target`` is a URL (``cluster=True`` for a Redis Cluster seed URL) or a ready client:
    ``redis.Redis`` (also Sentinel's ``master_for(...)``), ``redis.cluster.RedisCluster`` or
    their ``redis.asyncio`` twins. With a URL, hotpath sets short socket timeouts
    (``socket_timeout``); with a client, its own timeouts apply, so keep them short.

    ``lease_ttl`` bounds how long one loader holds a key (a crashed holder blocks nobody
    longer); after ``failure_threshold`` consecutive Redis errors the circuit opens for
    ``reset_timeout`` seconds, during which calls use L1 and the loader without waiting on Redis.
    """

    def __init__(
        self,
        target: str | SyncClient | AsyncClient,
        *,
        cluster: bool = False,
        socket_timeout: float = 0.1,
        connect_timeout: float = 0.25,
        lease_ttl: float = 5.0,
        failure_threshold: int = 3,
        reset_timeout: float = 2.0,
        health_interval: float = 0.5,
    ) -> None:
        socket_timeout = checks.seconds(socket_timeout, "socket_timeout", example="0.1")
        connect_timeout = checks.seconds(connect_timeout, "connect_timeout", example="0.25")
        lease_ttl = checks.seconds(lease_ttl, "lease_ttl", example="5")
        checks.count(failure_threshold, "failure_threshold", example="3")
        reset_timeout = checks.seconds(reset_timeout, "reset_timeout", example="2")
        health_interval = checks.seconds(health_interval, "health_interval", example="0.5")
        if isinstance(target, str):
            _check_url(target)
        self.url = target if isinstance(target, str) else None
        self._client = None if isinstance(target, str) else target
        self.cluster = cluster or isinstance(
            target, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster
        )
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.lease_ttl = lease_ttl
        self.health_interval = health_interval
        self.breaker = CircuitBreaker(
            failure_threshold,
            reset_timeout,
            name="hotpath.cache redis",
            failure_types=(redis.RedisError, OSError),
        )
        self._sync: SyncClient | None = None
        self._async: AsyncClient | None = None

    def _options(self) -> dict[str, Any]:
        return {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.connect_timeout,
        }

    def sync_client(self) -> SyncClient:
        if self._sync is None:
            if self._client is None:
                assert self.url is not None
                cls = redis.cluster.RedisCluster if self.cluster else redis.Redis
                self._sync = cls.from_url(self.url, **self._options())
            elif isinstance(self._client, redis.Redis | redis.cluster.RedisCluster):
                self._sync = self._client
            else:
                raise CacheConfigError(
                    "Cache (sync) was given a redis.asyncio client; pass a redis.Redis / "
                    "RedisCluster client or a URL, or use AsyncCache"
                )
        return self._sync

    def async_client(self) -> AsyncClient:
        if self._async is None:
            if self._client is None:
                assert self.url is not None
                if self.cluster:
                    self._async = redis.asyncio.cluster.RedisCluster.from_url(
                        self.url, **self._options()
                    )
                else:
                    self._async = redis.asyncio.Redis.from_url(self.url, **self._options())
            elif isinstance(self._client, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster):
                self._async = self._client
            else:
                raise CacheConfigError(
                    "AsyncCache was given a sync redis client; pass a redis.asyncio client or "
                    "a URL, or use Cache"
                )
        return self._async

    def listener_client(self) -> SyncClient:
        """A sync client for the invalidation listener thread (both twins use one)."""
        if self._client is None or isinstance(
            self._client, redis.Redis | redis.cluster.RedisCluster
        ):
            return self.sync_client()
        if isinstance(self._client, redis.asyncio.cluster.RedisCluster):
            # Before its first command an async cluster client has no default node yet.
            manager = self._client.nodes_manager
            nodes = [self._client.get_default_node(), *manager.startup_nodes.values()]
            node = next(n for n in nodes if n is not None)
            return redis.cluster.RedisCluster(
                host=node.host, port=int(node.port), **self._options()
            )
        pool = self._client.connection_pool
        if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
            return _sync_sentinel_master(pool, self._options())
        kwargs = dict(pool.connection_kwargs)
        if "host" not in kwargs:
            raise CacheConfigError(
                "cannot derive a pub/sub connection from this redis.asyncio client (a unix "
                "socket?); pass RedisTier a URL instead"
            )
        keep = ("host", "port", "db", "username", "password")
        return redis.Redis(**{k: kwargs[k] for k in keep if k in kwargs}, **self._options())

    def close(self) -> None:
        if self._sync is not None and self._client is None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        if self._async is not None and self._client is None:
            await self._async.aclose()
            self._async = None


def _sync_sentinel_master(
    pool: redis.asyncio.sentinel.SentinelConnectionPool, options: dict[str, Any]
) -> redis.Redis:
    """A sync client on the same Sentinel-managed master as an async one (for the listener
    thread): the same sentinels, service, database and credentials."""
    manager = pool.sentinel_manager
    sentinels = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in manager.sentinels
    ]
    keep = ("db", "username", "password")
    kwargs = {k: pool.connection_kwargs[k] for k in keep if k in pool.connection_kwargs}
    # Called through Any: redis-py < 8 leaves Sentinel untyped, 8.x types it; no ignore comment
    # is right for both.
    sentinel_class: Any = redis.sentinel.Sentinel
    sentinel = sentinel_class(sentinels, sentinel_kwargs=_portable(manager.sentinel_kwargs))
    master: redis.Redis = sentinel.master_for(pool.service_name, **kwargs, **options)
    return master


def _portable(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """An async client's connection options a sync one can take: redis-py 8 puts its async
    ``Retry`` in an async Sentinel's ``sentinel_kwargs``, and a sync connection given it
    calls ``call_with_retry`` without awaiting the coroutine it returns (checked on redis-py
    8.2; "coroutine 'Retry.call_with_retry' was never awaited")."""
    return {
        key: value
        for key, value in (kwargs or {}).items()
        if not type(value).__module__.startswith("redis.asyncio")
    }


def _check_url(url: str) -> None:
    """Refuse a URL redis-py cannot connect with now, not at the first cache call (where it
    would only count as Redis being unavailable)."""
    parse: Any = redis.connection.parse_url  # untyped in redis-py
    try:
        parse(url)
    except ValueError as error:
        raise CacheConfigError(
            f"RedisTier got {_redacted(url)!r}, which is not a Redis URL ({error}); pass e.g. "
            "redis://host:6379/0, rediss://... or unix:///path/redis.sock, or a redis client"
        ) from None


def _redacted(url: str) -> str:
    """``url`` without a password that may be in it."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.partition(":")[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def entry_key(namespace: str, key: str) -> str:
    return f"{namespace}:{{{key}}}"


def lease_key(namespace: str, key: str) -> str:
    return f"{namespace}:{{{key}}}:lease"


def tag_key(namespace: str, tag: str) -> str:
    return f"{namespace}:tag:{{{tag}}}"


def channel_name(namespace: str) -> str:
    return f"{namespace}:hotpath:invalidations"
