"""L1 eviction policies: plain LRU, and W-TinyLFU (Caffeine's: a small LRU window, a
segmented LRU main space, and a frequency sketch deciding who is worth keeping)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

_HALVE = bytes(b >> 1 for b in range(256))


class Policy(Protocol):
    """Which keys to keep; the tier tells it about every hit, insert and removal."""

    def hit(self, key: Hashable) -> None: ...

    def insert(self, key: Hashable) -> list[Hashable]:
        """Record a new key; return the keys to evict (possibly the new key itself)."""
        ...

    def remove(self, key: Hashable) -> None: ...

    def victim(self) -> Hashable | None:
        """The key to evict next when something other than the count is over its bound."""
        ...

    def clear(self) -> None: ...


class LruPolicy:
    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def hit(self, key: Hashable) -> None:
        self._order.move_to_end(key)

    def insert(self, key: Hashable) -> list[Hashable]:
        self._order[key] = None
        if len(self._order) > self._maxsize:
            return [self._order.popitem(last=False)[0]]
        return []

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def victim(self) -> Hashable | None:
        return next(iter(self._order), None)

    def clear(self) -> None:
        self._order.clear()


class FrequencySketch:
    """Count-min sketch (2 rows of 8-bit counters capped at 15), halved every ``10 x size``
    increments so old popularity fades."""

    def __init__(self, size: int) -> None:
        width = 1 << max(4, (4 * size - 1).bit_length())
        self._mask = width - 1
        self._table = bytearray(2 * width)
        self._width = width
        self._additions = 0
        self._period = 10 * max(size, 1)

    def _slots(self, key: Hashable) -> tuple[int, int]:
        h = hash(key)
        return h & self._mask, self._width + ((h >> 17 ^ h * 0x9E3779B1) & self._mask)

    def increment(self, key: Hashable) -> None:
        i, j = self._slots(key)
        table = self._table
        if table[i] < 15:
            table[i] += 1
        if table[j] < 15:
            table[j] += 1
        self._additions += 1
        if self._additions >= self._period:
            self._table = self._table.translate(_HALVE)
            self._additions //= 2

    def estimate(self, key: Hashable) -> int:
        i, j = self._slots(key)
        return min(self._table[i], self._table[j])


_WINDOW, _PROBATION, _PROTECTED = 0, 1, 2


class TinyLfuPolicy:
    """W-TinyLFU: 1% window LRU; main space 20% probation / 80% protected; a candidate leaving
    the window enters the main space only if the sketch says it is used more than the victim."""

    def __init__(self, maxsize: int) -> None:
        self._window_cap = max(1, maxsize // 100)
        self._main_cap = max(1, maxsize - self._window_cap)
        self._protected_cap = max(1, int(self._main_cap * 0.8))
        self._sketch = FrequencySketch(maxsize)
        self._segments: tuple[OrderedDict[Hashable, None], ...] = (
            OrderedDict(),
            OrderedDict(),
            OrderedDict(),
        )
        self._where: dict[Hashable, int] = {}

    def hit(self, key: Hashable) -> None:
        self._sketch.increment(key)
        segment = self._where.get(key)
        if segment is None:
            return
        _, probation, protected = self._segments
        if segment == _PROBATION:
            del probation[key]
            protected[key] = None
            self._where[key] = _PROTECTED
            if len(protected) > self._protected_cap:
                demoted = protected.popitem(last=False)[0]
                probation[demoted] = None
                self._where[demoted] = _PROBATION
        else:
            self._segments[segment].move_to_end(key)

    def insert(self, key: Hashable) -> list[Hashable]:
        self._sketch.increment(key)
        window, probation, protected = self._segments
        window[key] = None
        self._where[key] = _WINDOW
        if len(window) <= self._window_cap:
            return []
        candidate = window.popitem(last=False)[0]
        if len(probation) + len(protected) < self._main_cap:
            probation[candidate] = None
            self._where[candidate] = _PROBATION
            return []
        victim_segment = probation if probation else protected
        victim = next(iter(victim_segment))
        if self._sketch.estimate(candidate) > self._sketch.estimate(victim):
            del victim_segment[victim]
            del self._where[victim]
            probation[candidate] = None
            self._where[candidate] = _PROBATION
            return [victim]
        del self._where[candidate]
        return [candidate]

    def victim(self) -> Hashable | None:
        # The main space's coldest first (probation, then protected), the window last: the
        # window holds the newest keys, which have not had their chance yet.
        for segment in (
            self._segments[_PROBATION],
            self._segments[_PROTECTED],
            *self._segments[:1],
        ):
            if segment:
                return next(iter(segment))
        return None

    def remove(self, key: Hashable) -> None:
        segment = self._where.pop(key, None)
        if segment is not None:
            del self._segments[segment][key]

    def clear(self) -> None:
        for segment in self._segments:
            segment.clear()
        self._where.clear()
