"""cache quick start: 50 concurrent callers, one load; a tag invalidation; the stats.

Run: .venv/bin/python examples/cache_quickstart.py   (starts its own local Redis)
"""

from __future__ import annotations

import threading
import time
from typing import Any

from hotpath.cache import Cache, MemoryTier, RedisTier
from hotpath.stack import LocalStack

loads: list[int] = []

with LocalStack(replicas=0, redis=True, postgres=False) as stack:
    cache = Cache(
        l1=MemoryTier(maxsize=10_000, ttl=30),
        l2=RedisTier(stack.redis_url),
        namespace="shop",
        default_ttl=300,
    )

    @cache.cached(ttl=300, key="user:{user_id}", tags=("user:{user_id}",))
    def get_user(user_id: int) -> dict[str, Any]:
        loads.append(user_id)
        time.sleep(0.2)  # a slow query
        return {"id": user_id, "name": "Ada"}

    callers = [threading.Thread(target=get_user, args=(42,)) for _ in range(50)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    print(f"50 concurrent callers, loader calls: {len(loads)}")
    print(f"cached: {get_user(42)}")
    cache.invalidate_tags("user:42")  # O(1): bumps the tag's version
    get_user(42)
    print(f"after invalidate_tags, loader calls: {len(loads)}")
    stats = cache.stats()
    print(
        f"l1_hits={stats.l1_hits} l2_hits={stats.l2_hits} misses={stats.misses} "
        f"loads={stats.loads} stampede_joins={stats.stampede_joins}"
    )
    cache.close()
