"""What a cache counts, and the snapshot :meth:`Cache.stats` returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class Counters:
    """Live counters (plain ints: under heavy thread contention a hit may go uncounted)."""

    l1_hits: int = 0
    l2_hits: int = 0
    misses: int = 0
    loads: int = 0
    load_seconds: float = 0.0
    load_errors: int = 0
    stale_served: int = 0
    stale_on_error: int = 0
    refreshes: int = 0
    stampede_joins: int = 0
    lease_waits: int = 0
    wait_timeouts: int = 0
    stale_sets_refused: int = 0
    redis_errors: int = 0
    redis_skipped: int = 0
    degraded_loads: int = 0
    writes_failed: int = 0
    writes_replayed: int = 0
    invalidations_received: int = 0
    l1_flushes: int = 0
    decode_errors: int = 0


@dataclass
class CacheStats(Counters):
    """A snapshot of a cache's counters plus its tiers' state.

    ``stampede_joins``: callers that shared another caller's load in this process;
    ``lease_waits``: waits for another process's load; ``stale_sets_refused``: loads whose
    value was not stored because the key or a tag was invalidated while they ran;
    ``redis_skipped``: calls not sent because the circuit was open; ``writes_failed``: sets,
    deletes and tag invalidations that could not reach Redis (applied to L1 at once, sent
    again by a later call: ``writes_replayed``).
    """

    l1_size: int = 0
    l1_evictions: int = 0
    circuit: str = "closed"
    channel_connected: bool = False
    channel_drops: int = 0

    @property
    def hits(self) -> int:
        return self.l1_hits + self.l2_hits

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "hits": self.hits, "hit_ratio": self.hit_ratio}


def snapshot(counters: Counters, **state: object) -> CacheStats:
    values = {f.name: getattr(counters, f.name) for f in fields(Counters)}
    return CacheStats(**values, **state)  # type: ignore[arg-type]
