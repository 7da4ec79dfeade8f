"""Redis of the stack: isolation per module, real pause and kill, and the Redis Cluster."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster

from hotpath.stack import LocalStack
from hotpath.testing import ModuleDatabase


def test_module_gets_its_own_flushed_redis_database(hotpath_db: ModuleDatabase) -> None:
    assert hotpath_db.redis_url is not None
    with redis.Redis.from_url(hotpath_db.redis_url) as client:
        assert client.dbsize() == 0
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"


def test_paused_redis_times_out_then_answers_after_resume(hotpath_local_stack: LocalStack) -> None:
    server = hotpath_local_stack.redis
    with redis.Redis.from_url(server.url, socket_timeout=0.3) as client:
        client.set("k", "v")
        server.pause()  # SIGSTOP: connections stay open, nothing answers
        try:
            with pytest.raises(redis.TimeoutError):
                client.get("k")
        finally:
            server.resume()
    with redis.Redis.from_url(server.url, socket_timeout=2) as client:
        assert client.get("k") == b"v"


def test_killed_redis_refuses_connections_until_started(hotpath_local_stack: LocalStack) -> None:
    server = hotpath_local_stack.redis
    server.kill()
    assert server.pid is None
    with pytest.raises(redis.ConnectionError), redis.Redis.from_url(server.url) as client:
        client.ping()
    server.start()
    with redis.Redis.from_url(server.url) as client:
        assert client.ping()


def test_redis_cluster_accepts_keys_across_slots(redis_cluster_stack: str) -> None:
    cluster = RedisCluster.from_url(redis_cluster_stack)
    try:
        masters = cluster.get_primaries()
        assert len(masters) == 3
        keys = [f"user:{i}" for i in range(60)]
        for key in keys:
            cluster.set(key, key.upper())
        assert all(cluster.get(key) == key.upper().encode() for key in keys)
        owners = {cluster.get_node_from_key(key).port for key in keys}
        assert owners == {m.port for m in masters}  # keys really spread over all 3 masters
        slots = {cluster.keyslot(key) for key in keys}
        assert len(slots) == len(keys)
    finally:
        cluster.close()
