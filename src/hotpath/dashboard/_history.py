"""The page's memory: a ring of per-endpoint figures, one sample per poll.

The report's figures are cumulative (since the run started), so a sample keeps the count and
total time as well: the page turns two samples into the throughput and mean latency of the
interval between them. Kept in the server, not the browser, so a page opened late (or
reloaded) still sees the run's recent past.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

# one endpoint in one sample: [count, total_ms, p50_ms, p95_ms, p99_ms, {layer: mean ms}]
Point = list[Any]


class History:
    """At most ``size`` samples of a RUN STATE's endpoints, oldest first. Thread-safe."""

    def __init__(self, size: int) -> None:
        self._samples: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def sample(self, state: Mapping[str, Any], now: float | None = None) -> None:
        endpoints: dict[str, Point] = {}
        for stats in (state.get("report") or {}).get("endpoints", []):
            endpoints[str(stats["name"])] = [
                stats["count"],
                round(float(stats.get("total_ms", 0.0)), 3),
                round(float(stats["p50_ms"]), 3),
                round(float(stats["p95_ms"]), 3),
                round(float(stats["p99_ms"]), 3),
                {layer: round(float(ms), 3) for layer, ms in stats.get("breakdown_ms", {}).items()},
            ]
        with self._lock:
            self._samples.append({"t": time.time() if now is None else now, "endpoints": endpoints})

    def samples(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._samples)

    def __len__(self) -> int:
        return len(self._samples)
