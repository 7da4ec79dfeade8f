"""Load-balancing policies: pick one replica among the eligible ones."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Protocol

from ._config import Policy


class Candidate(Protocol):
    @property
    def weight(self) -> float: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def lag_key(self) -> tuple[float, int]: ...


class Balancer:
    """Stateful picker for one replica set (the round-robin cursor lives here)."""

    def __init__(self, policy: Policy, seed: int | None = None) -> None:
        self.policy = policy
        self._turn = itertools.count()
        self._rng = random.Random(seed)

    def pick(self, candidates: Sequence[Candidate]) -> int:
        """Index into ``candidates`` (non-empty) of the replica to use."""
        if len(candidates) == 1:
            return 0
        if self.policy == "round_robin":
            return next(self._turn) % len(candidates)
        if self.policy == "random":
            weights = [c.weight for c in candidates]
            return self._rng.choices(range(len(candidates)), weights)[0]
        # least_in_flight: fewest connections in use per unit of weight; ties go to the less
        # lagged replica, then to a random one so equal replicas share the load.
        return min(
            range(len(candidates)),
            key=lambda i: (
                (candidates[i].in_flight + 1) / candidates[i].weight,
                candidates[i].lag_key,
                self._rng.random(),
            ),
        )
