"""The optimizations the demo switches on: one at a time as hotpath's diagnosis picks them (the
ladder), one alone (ablation) or all together."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

FIX_DESCRIPTIONS = {
    "pool": "a planned connection pool instead of a new connection per request",
    "eager": "joined loads and one grouped query where observe found N+1s; LIMIT, not all rows",
    "indexes": "the indexes hotpath advise recommends for this workload",
    "cache": "L1 + Redis cache, invalidated by tags on writes",
    "replicas": "reads on replicas with read-your-writes",
    "fanout": "parallel external calls with deadlines and a circuit breaker",
    "keyset": "keyset pagination instead of OFFSET",
    "offload": "the profile's sync risk check moved off the event loop (asyncio.to_thread)",
    "lean": "the category export serialized once by orjson, not walked by jsonable_encoder",
}


@dataclass(frozen=True)
class Fixes:
    """Which optimizations are on. ``Fixes()`` is the naive shop."""

    pool: bool = False
    eager: bool = False
    indexes: bool = False
    cache: bool = False
    replicas: bool = False
    fanout: bool = False
    keyset: bool = False
    offload: bool = False
    lean: bool = False

    @classmethod
    def naive(cls) -> Fixes:
        return cls()

    @classmethod
    def optimized(cls) -> Fixes:
        return cls(**{f.name: True for f in fields(cls)})

    @classmethod
    def only(cls, name: str) -> Fixes:
        if name not in FIX_DESCRIPTIONS:
            raise ValueError(f"unknown fix {name!r}: use one of {', '.join(FIX_DESCRIPTIONS)}")
        return replace(cls(), **{name: True})

    @property
    def label(self) -> str:
        names = [f.name for f in fields(self)]
        on = [name for name in names if getattr(self, name)]
        off = [name for name in names if not getattr(self, name)]
        if not on:
            return "naive"
        if not off:
            return "optimized"
        if len(on) > len(off):
            return "optimized without " + ", ".join(off)
        return "+" + "+".join(on)
