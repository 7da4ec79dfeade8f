"""The in-process tier (L1): bounded entries with a TTL cap, the tag versions this process
knows, and a short log of recent invalidations so a fill that raced one is refused."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Literal

from . import _checks as checks
from ._entry import Entry, TagVersions, version_order
from ._errors import CacheConfigError
from ._policy import LruPolicy, Policy, TinyLfuPolicy

_LOG_SIZE = 4096
_ALL = "*"


class MemoryTier:
    """In-process cache tier.

    ``maxsize`` bounds the entry count and ``max_bytes`` (optional) their total size as stored
    in Redis (a proxy for memory: the objects themselves are usually a few times larger);
    ``ttl`` caps how long any entry lives here (the bound on staleness if an invalidation
    message is lost), ``policy`` is ``"tinylfu"`` (default) or ``"lru"``. Values are kept as
    Python objects and handed out as they are: treat them as read-only.
    """

    def __init__(
        self,
        maxsize: int = 10_000,
        ttl: float = 30.0,
        *,
        policy: Literal["tinylfu", "lru"] = "tinylfu",
        max_tags: int = 100_000,
        max_bytes: int | None = None,
    ) -> None:
        checks.count(maxsize, "maxsize", example="10_000")
        ttl = checks.seconds(ttl, "ttl", example="30")
        checks.count(max_tags, "max_tags", example="100_000")
        if max_bytes is not None:
            checks.count(max_bytes, "max_bytes", example="64 * 2**20")
        if policy not in ("tinylfu", "lru"):
            raise CacheConfigError(f"unknown policy {policy!r}; use 'tinylfu' or 'lru'")
        self.maxsize = maxsize
        self.ttl = ttl
        self.policy_name = policy
        self._max_tags = max_tags
        self._policy: Policy = TinyLfuPolicy(maxsize) if policy == "tinylfu" else LruPolicy(maxsize)
        self._entries: dict[str, tuple[Entry, float, str]] = {}
        self._tags: TagVersions = {}
        self._lock = threading.Lock()
        self._seq = 0
        self._log: deque[tuple[int, str]] = deque(maxlen=_LOG_SIZE)
        self._writes_in_flight: set[str] = set()  # write ids of this process's sets under way
        self.evictions = 0
        self.max_bytes = max_bytes
        self.bytes = 0  # the entries' total size (Entry.size)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> Entry | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if now >= found[1]:
                self._drop(key)
                return None
            self._policy.hit(key)
            return found[0]

    def mark(self) -> int:
        """A point in the invalidation log; pass it to :meth:`fill` after reading elsewhere."""
        return self._seq

    def fill(self, key: str, entry: Entry, since: int | None = None, write_id: str = "") -> bool:
        """Store ``entry`` unless ``key``, one of its tags, or everything was invalidated after
        ``since`` (then the value may predate the invalidation: refuse it). ``write_id`` names
        the write, so this process's own invalidation message for it can be recognised."""
        with self._lock:
            return self._fill_locked(key, entry, since, write_id)

    def _fill_locked(self, key: str, entry: Entry, since: int | None, write_id: str) -> bool:
        if since is not None and self._invalidated_since(since, key, entry.tags):
            return False
        if self.max_bytes is not None and entry.size > self.max_bytes:
            self._drop(key)  # bigger than the whole tier: not kept here (Redis has it)
            return False
        deadline = min(entry.hard_expiry, time.time() + self.ttl)
        previous = self._entries.get(key)
        self._entries[key] = (entry, deadline, write_id)
        self.bytes += entry.size
        if previous is not None:
            self.bytes -= previous[0].size
            self._policy.hit(key)
        else:
            for evicted in self._policy.insert(key):
                self._evicted(evicted)  # type: ignore[arg-type]
        while self.max_bytes is not None and self.bytes > self.max_bytes:
            victim = self._policy.victim()
            if victim is None:
                break
            self._policy.remove(victim)
            self._evicted(victim)  # type: ignore[arg-type]
        return key in self._entries

    def _evicted(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.bytes -= found[0].size
            self.evictions += 1

    def _drop(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.bytes -= found[0].size
            self._policy.remove(key)

    def changed_since(self, since: int, key: str, tags: tuple[str, ...]) -> bool:
        """Whether ``key``, one of ``tags`` or everything was invalidated after ``since``."""
        with self._lock:
            return self._invalidated_since(since, key, dict.fromkeys(tags, ""))

    def _invalidated_since(self, since: int, key: str, tags: TagVersions) -> bool:
        if since >= self._seq:
            return False
        if not self._log or self._log[0][0] > since + 1:
            return True  # the log no longer reaches back to ``since``
        names = {f"k:{key}", _ALL, *(f"t:{t}" for t in tags)}
        for seq, name in reversed(self._log):
            if seq <= since:
                return False
            if name in names:
                return True
        return False

    def _note(self, name: str) -> None:
        self._seq += 1
        self._log.append((self._seq, name))

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._note(f"k:{key}")
            self._drop(key)

    def begin_write(self, key: str, entry: Entry | None = None, write_id: str = "") -> int:
        """This process starts writing ``key`` to Redis (a set when ``entry`` is given, else a
        delete): drop what L1 holds (or hold ``entry``, the value written) and return the
        point to pass to :meth:`end_write`.

        Until the Redis write is done, another thread's read of Redis still returns the old
        value and may refill L1 with it; :meth:`end_write` undoes that."""
        with self._lock:
            self._note(f"k:{key}")
            self._drop(key)
            if write_id:
                self._writes_in_flight.add(write_id)
            begun = self._seq
            if entry is not None:
                self._fill_locked(key, entry, None, write_id)
        return begun

    def end_write(
        self, key: str, begun: int, entry: Entry | None = None, write_id: str = ""
    ) -> None:
        """The Redis write begun at ``begun`` is done: a second invalidation of ``key`` (a fill
        whose Redis read began before now is refused, one made meanwhile is dropped), then L1
        holds ``entry``, unless ``key`` or one of its tags was invalidated by someone else
        while the write was under way."""
        with self._lock:
            self._writes_in_flight.discard(write_id)
            keep = entry is not None and not self._invalidated_since(begun, key, entry.tags)
            self._note(f"k:{key}")
            self._drop(key)
            if keep:
                assert entry is not None
                self._fill_locked(key, entry, None, write_id)

    def invalidate_unless(self, key: str, write_id: str) -> None:
        """Invalidate ``key`` unless ``write_id`` names this process's own write of the value
        L1 holds, or one still under way (:meth:`end_write` settles L1 for it)."""
        with self._lock:
            if write_id and write_id in self._writes_in_flight:
                return
            found = self._entries.get(key)
            if found is not None and write_id and found[2] == write_id:
                return
            self._note(f"k:{key}")
            self._drop(key)

    def tag_versions(self, tags: tuple[str, ...] | list[str]) -> TagVersions | None:
        """The known versions of ``tags``, or None if any is unknown here."""
        known = self._tags
        try:
            return {t: known[t] for t in tags}
        except KeyError:
            return None

    def tags_current(self, tags: TagVersions) -> bool | None:
        """True if every tag still has the stored version, False if one moved, None if one is
        unknown here (ask Redis)."""
        known = self._tags
        for tag, version in tags.items():
            current = known.get(tag)
            if current is None:
                return None
            if current != version:
                return False
        return True

    def learn_tags(self, versions: TagVersions, since: int | None = None) -> None:
        """Remember tag versions read from Redis, skipping any invalidated here after
        ``since`` and any older than the version known here (a read that raced a newer
        invalidation): a tag's version never goes back."""
        with self._lock:
            for tag, version in versions.items():
                if since is not None and self._invalidated_since(since, "", {tag: ""}):
                    continue
                if self._is_newer(tag, version):
                    self._set_tag(tag, version)

    def set_tag(self, tag: str, version: str) -> None:
        """A tag moved to ``version`` (invalidated here or announced by another process). An
        older version than the one known here is a late message: ignored, so a tag never
        goes back. A version that is not a number is not one hotpath wrote: the tag is
        forgotten (asked of Redis next time)."""
        with self._lock:
            if version_order(version) is None:
                self._note(f"t:{tag}")
                self._tags.pop(tag, None)
            elif self._is_newer(tag, version):
                self._note(f"t:{tag}")
                self._set_tag(tag, version)

    def forget_tag(self, tag: str) -> None:
        """Invalidate ``tag`` without knowing its new version (Redis could not be told)."""
        with self._lock:
            self._note(f"t:{tag}")
            self._tags.pop(tag, None)

    def note_tag(self, tag: str) -> None:
        """An invalidation of ``tag`` begins here (its new version is not known yet): fills and
        tag reads that began before it are refused, and no in-process load is joined."""
        with self._lock:
            self._note(f"t:{tag}")

    def _is_newer(self, tag: str, version: str) -> bool:
        order = version_order(version)
        if order is None:
            return False
        known = self._tags.get(tag)
        if known is None:
            return True
        known_order = version_order(known)
        return known_order is None or order > known_order

    def _set_tag(self, tag: str, version: str) -> None:
        if tag not in self._tags and len(self._tags) >= self._max_tags:
            # Forgetting a tag would make entries stored under an older version look valid
            # again, so the table is never trimmed: everything is dropped instead.
            self._clear_locked()
        self._tags[tag] = version

    def clear(self) -> None:
        """Drop every entry and tag version (an invalidation of everything)."""
        with self._lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        self._note(_ALL)
        self._entries.clear()
        self.bytes = 0
        self._tags.clear()
        self._policy.clear()
