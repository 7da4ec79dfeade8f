"""The plans of slow statement shapes: which shapes may be EXPLAINed now (once per shape
per interval, a few per minute), and the plans and flags taken."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from ..plans import PlanFlag, plan_root
from ._settings import ObserveSettings

Plan = tuple[Any, list[PlanFlag], bool]  # EXPLAIN JSON, its flags, whether ANALYZEd


class PlanStore:
    def __init__(self, settings: ObserveSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._plans: dict[str, Plan] = {}
        self._explained_at: dict[str, float] = {}
        self._recent: deque[float] = deque()

    def wants(self, fingerprint: str) -> bool:
        """Whether a slow run of ``fingerprint`` should be queued for EXPLAIN."""
        if self._settings.explain == "off":
            return False
        last = self._explained_at.get(fingerprint)
        return last is None or time.monotonic() - last > self._settings.explain_interval_s

    def claim(self, fingerprint: str) -> bool:
        """Reserve the right to EXPLAIN ``fingerprint`` now (per shape and per minute)."""
        now = time.monotonic()
        with self._lock:
            if not self.wants(fingerprint):
                return False
            while self._recent and now - self._recent[0] > 60:
                self._recent.popleft()
            if len(self._recent) >= self._settings.explain_per_minute:
                return False
            self._recent.append(now)
            self._explained_at[fingerprint] = now
            return True

    def store(self, fingerprint: str, plan: Any, flags: list[PlanFlag], analyzed: bool) -> None:
        self._plans[fingerprint] = (plan, flags, analyzed)

    def get(self, fingerprint: str) -> Plan | None:
        return self._plans.get(fingerprint)

    def cost(self, fingerprint: str) -> float | None:
        """The planner's total cost of ``fingerprint``'s plan (its estimate of the work, in
        the planner's units: a lookup by index costs a few, a scan of a large table
        thousands), or None without a plan."""
        entry = self._plans.get(fingerprint)
        if entry is None:
            return None
        try:
            return float(plan_root(entry[0])["Total Cost"])
        except (KeyError, TypeError, ValueError):
            return None

    def flags(self, fingerprint: str) -> list[PlanFlag]:
        entry = self._plans.get(fingerprint)
        return entry[1] if entry else []

    def explained(self) -> list[str]:
        """The shapes EXPLAIN was claimed for (tests read it)."""
        return list(self._explained_at)
