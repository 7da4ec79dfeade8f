"""The cache's logic, shared by the sync and async twins without any I/O of its own.

Each operation is a generator ("flow") that yields small op objects (read Redis, take a lease,
run the loader, wait for another process's load...) and receives their results; the sync and
async drivers only execute ops. So every rule lives here once:

- L1, then L2, then a load; a value past its soft TTL (or picked by XFetch) is served while one
  caller refreshes it in the background; past its hard TTL it is gone.
- A load on a miss takes a Redis lease first (``SET NX PX``); callers that find the lease
  held wait to be woken by the holder's fill message, and the fill is stored only if the lease
  is still the holder's (an invalidation deletes it): no stale sets.
- Tags are version stamps: an entry records the versions it was loaded under (read *before*
  the load), and is valid only while they are current.
- Redis unavailable (error, timeout, open circuit) is a result, never an exception: the flow
  falls back to L1 and the loader, and counts it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from ..concurrent import BreakerState
from ._entry import (
    Entry,
    TagVersions,
    expiries,
    pack,
    safe_name,
    unpack,
    version_order,
)
from ._errors import CacheConfigError, SerializationError
from ._listener import Kind, Message, Waiters
from ._memory import MemoryTier
from ._options import CacheOptions
from ._redis import RedisTier
from ._stats import CacheStats, Counters, snapshot

log = logging.getLogger("hotpath.cache")


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


MISS: Final = _Sentinel("MISS")
UNAVAILABLE: Final = _Sentinel("UNAVAILABLE")  # Redis could not answer (error, timeout, circuit)
ABSENT: Final = _Sentinel("ABSENT")  # L2 holds no entry for the key
FOREIGN: Final = _Sentinel("FOREIGN")  # the key holds a Redis type hotpath never writes


@dataclass(slots=True)
class Unserved:
    """``serve_l2_reply`` could not serve: continue with the flow from ``reply``."""

    reply: Any


HIT, LEASE, HELD = 1, 2, 3


class Unsent(NamedTuple):
    """A write that did not reach Redis: to a key (a set or a delete) or a tag's invalidation."""

    kind: Kind
    name: str


@dataclass(slots=True)
class L2Reply:
    """What a driver's own L2 read (the fast path of an L1 miss) hands on to a flow when it
    could not serve it: the decoded entry (None if unreadable: already counted), and whether
    it was found not fresh (XFetch drew once: a second draw would change the odds)."""

    entry: Entry | None
    known_stale: bool = False


# -- ops: what a flow asks its driver to do -------------------------------------------------


@dataclass(slots=True)
class L2Get:
    name: str


@dataclass(slots=True)
class TagRead:
    tags: list[str]


@dataclass(slots=True)
class Acquire:
    """Returns ``(HIT, bytes, None)``, ``(LEASE, None, None)`` or ``(HELD, seconds, waiter)``;
    with ``wait`` the driver arms a waiter before asking, so no wake-up can be missed."""

    name: str
    token: str
    skip_entry: bool
    wait: bool


@dataclass(slots=True)
class Wait:
    waiter: Any
    timeout: float


@dataclass(slots=True)
class Fill:
    name: str
    token: str
    payload: bytes
    ttl_ms: int
    message: str


@dataclass(slots=True)
class Release:
    name: str
    token: str
    message: str


@dataclass(slots=True)
class Write:
    name: str
    payload: bytes
    ttl_ms: int
    message: str


@dataclass(slots=True)
class Delete:
    name: str
    message: str


@dataclass(slots=True)
class BumpTag:
    """Redis gives the tag its next version (returned) and announces it: ``message`` is the
    announcement without the version, which the script appends."""

    tag: str
    message: str


@dataclass(slots=True)
class Load:
    """Run the loader; the result is ``(value, seconds)``, or its exception is thrown in."""

    loader: Callable[[], Any]


@dataclass(slots=True)
class Refresh:
    """Refresh ``name`` in the background (at most one refresh per key per process)."""

    name: str
    loader: Callable[[], Any]
    ttl: float | None
    tags: tuple[str, ...]


Op = L2Get | TagRead | Acquire | Wait | Fill | Release | Write | Delete | BumpTag | Load | Refresh
Flow = Generator[Op, Any, Any]


def next_version(known: TagVersions | None) -> str:
    """A tag's next version made without Redis (an L1-only cache, or Redis unreachable): as
    Redis makes them (``BUMP_TAG``), the time in microseconds, or one past the known version."""
    now = time.time_ns() // 1000
    current = version_order(next(iter(known.values()))) if known else None
    return str(max(now, (current or 0) + 1))


class CacheCore:
    """Configuration, counters and flows of one cache (see the module doc)."""

    def __init__(self, l1: MemoryTier | None, l2: RedisTier | None, options: CacheOptions) -> None:
        if l1 is None and l2 is None:
            raise CacheConfigError(
                "a cache needs at least one tier: l1=MemoryTier(), l2=RedisTier(url)"
            )
        self.l1 = l1
        self.l2 = l2
        self.options = options
        # Copies of the options read on every call (an attribute less on the hot path).
        self.namespace = options.namespace
        self.beta = options.xfetch_beta
        self.serializer = options.resolved_serializer
        self.wait_timeout = (
            options.wait_timeout
            if options.wait_timeout is not None
            else (2 * l2.lease_ttl if l2 else 0.0)
        )
        self.origin = secrets.token_hex(6)
        self.counters = Counters()
        self.waiters = Waiters()
        self.channel_connected = l2 is None  # an L1-only cache is trivially coherent
        self.channel_drops = 0
        self._client_failures_logged: set[type[Exception]] = set()
        self._local_writes = 0  # sets, deletes and invalidations made by this process
        # Writes that did not reach Redis (circuit open, Redis down): a key's -> "" or a
        # tag's -> its new version. Until the drivers replay them (replay_ops), Redis
        # entries they concern are misses here, and the replay brings other processes along.
        self.unsent: dict[Unsent, str] = {}

    # -- names and small helpers ---------------------------------------------------------

    def name(self, key: str) -> str:
        return safe_name(key, "key")

    def tag_names(self, tags: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        return tuple(safe_name(t, "tag") for t in tags)

    def _message(self, kind: Kind, name: str, version: str = "") -> str:
        return Message(self.origin, kind, name, version).encode()

    def _l1(self) -> MemoryTier | None:
        """L1 when its contents can be trusted: it hears other processes' invalidations, or
        Redis is out of reach anyway (then L1 and the loader are all there is)."""
        if self.l1 is None:
            return None
        if self.channel_connected or (
            self.l2 is not None and self.l2.breaker.state is BreakerState.OPEN
        ):
            return self.l1
        return None

    def _new_entry(
        self, value: Any, ttl: float | None, seconds: float, versions: TagVersions
    ) -> Entry:
        options = self.options
        if value is None and options.negative_ttl is not None:
            life = options.negative_ttl if ttl is None else min(ttl, options.negative_ttl)
        else:
            life = options.default_ttl if ttl is None else ttl
        stale = life * 0.5 if options.stale_ttl is None else options.stale_ttl
        soft, hard = expiries(time.time(), life, stale, options.jitter)
        return Entry(value, soft, hard, seconds, versions)

    def _pack(self, entry: Entry, name: str) -> tuple[bytes, int]:
        payload = pack(entry, self.serializer, self.options.max_value_bytes, name)
        entry.size = len(payload)
        ttl_ms = max(1, int((entry.hard_expiry - time.time()) * 1000))
        return payload, ttl_ms

    def _decode(self, raw: Any) -> Entry | None:
        """The entry in a Redis reply, or None (counted, logged) if it cannot be read: whoever
        can write to Redis must not be able to make a read raise (an entry nested too deep
        for the decoder, a key of another Redis type, a malformed header or tag map)."""
        if raw is FOREIGN:
            error: Exception = SerializationError("the key holds a Redis type hotpath never writes")
        else:
            try:
                return unpack(raw, self.serializer)
            except Exception as failure:  # RecursionError included
                error = failure
        self.counters.decode_errors += 1
        log.warning("hotpath.cache: unreadable entry treated as a miss: %r", error)
        return None

    def _entry_of(self, reply: Any) -> Entry | None:
        if type(reply) is L2Reply:
            return reply.entry
        return self._decode(reply)

    def client_failed(self, error: Exception) -> None:
        """The Redis client raised something other than a Redis or network error: count it
        as Redis unavailable like those, and log each kind once with its traceback."""
        self.counters.redis_errors += 1
        kind = type(error)
        if kind not in self._client_failures_logged:
            self._client_failures_logged.add(kind)
            log.warning(
                "hotpath.cache: the Redis client raised %r; treated as Redis being unavailable "
                "(logged once per kind)",
                error,
                exc_info=error,
            )

    def mark(self) -> int:
        """Where this process's invalidations stand: L1's invalidation log, or without L1 the
        count of this process's writes. Taken before an L2 read, so the fill that follows is
        refused if the key or a tag was invalidated meanwhile (``MemoryTier.fill``), and as a
        load starts, so a caller may join it only while nothing was (:meth:`joinable`). Taken
        whether or not L1 is trusted right now: the circuit may open during the load that
        follows, and a fill must still see the invalidations made meanwhile."""
        return self.l1.mark() if self.l1 is not None else self._local_writes

    def joinable(self, mark: int, name: str, tags: tuple[str, ...]) -> bool:
        """Whether a caller may share this process's load of ``name`` started at ``mark``:
        not if the key or one of ``tags`` was invalidated since (that load may have read the
        data before the write, and the caller may be the writer: read-your-writes). Without
        L1 any write of this process since counts."""
        if self.l1 is not None:
            return not self.l1.changed_since(mark, name, tags)
        return mark == self._local_writes

    def serve_l2_reply(self, name: str, reply: Any, mark: int | None, *, early: bool) -> Any:
        """The fast path of an L1 miss, run by the drivers without a flow: the value of the
        L2 GET ``reply`` when nothing more must be asked (fresh, and no tags or tags L1 knows
        to be current), counted and copied to L1. Otherwise what the flow goes on from: the
        reply as it came (absent, unavailable) or an :class:`L2Reply`, so nothing is decoded
        twice. ``early``: whether XFetch may pick the value for an early refresh."""
        # A deliberate fork of the L2-hit rule (:meth:`_l2_hit`), kept inline because it is the
        # measured hot path of an L1 miss (bench cache "L2 hit"): no generator, no flow. It
        # serves only what needs no Redis read; anything else goes on in the flow's rule.
        if reply is UNAVAILABLE:
            return Unserved(reply)
        if reply is None:
            return Unserved(ABSENT)
        entry = self._usable(name, self._decode(reply))
        if entry is None:
            return Unserved(L2Reply(None))
        l1 = self._l1()
        if entry.tags and (l1 is None or l1.tags_current(entry.tags) is not True):
            return Unserved(L2Reply(entry))
        if not entry.is_fresh(time.time(), self.beta if early else 0.0):
            return Unserved(L2Reply(entry, known_stale=True))
        self.counters.l2_hits += 1
        if l1 is not None:
            l1.fill(name, entry, since=mark)
        return entry.value

    def fresh_from_l1(self, name: str) -> Any:
        """The fast path: a fresh, valid L1 value, or MISS (then run a flow)."""
        # A deliberate fork of the flows' L1 check, inline because it is the measured hot
        # path (bench cache "L1 hit"): no generator, no tag read (unknown tags are a MISS).
        l1 = self._l1()
        if l1 is None:
            return MISS
        now = time.time()
        entry = l1.get(name, now)
        if entry is None or not entry.is_fresh(now, self.beta):
            return MISS
        if entry.tags and l1.tags_current(entry.tags) is not True:
            return MISS
        self.counters.l1_hits += 1
        return entry.value

    # -- reading ---------------------------------------------------------------------------

    def _tags_valid(self, entry: Entry, mark: int | None) -> Generator[Op, Any, bool]:
        if not entry.tags:
            return True
        l1 = self._l1()
        if l1 is not None:
            known = l1.tags_current(entry.tags)
            if known is not None:
                return known
        if self.l2 is None:
            return False
        versions = yield TagRead(list(entry.tags))
        if versions is UNAVAILABLE:
            return False  # cannot tell whether it was invalidated: do not serve it
        if l1 is not None:
            l1.learn_tags(versions, since=mark)
        return all(versions[t] == v for t, v in entry.tags.items())

    def _snapshot(
        self, tags: tuple[str, ...], mark: int | None
    ) -> Generator[Op, Any, TagVersions | None]:
        """Tag versions to store a load under, read before the load starts; None if Redis
        cannot say."""
        if not tags:
            return {}
        l1 = self._l1()
        if l1 is not None:
            known = l1.tag_versions(tags)
            if known is not None:
                return known
        if self.l2 is None:
            assert self.l1 is not None
            self.l1.learn_tags({t: "" for t in tags if self.l1.tag_versions([t]) is None})
            return self.l1.tag_versions(tags)
        versions = yield TagRead(list(tags))
        if versions is UNAVAILABLE:
            return None
        if l1 is not None:
            l1.learn_tags(versions, since=mark)
        return dict(versions)

    def _l2_hit(
        self, name: str, entry: Entry | None, mark: int | None, *, fresh: bool
    ) -> Generator[Op, Any, Entry | None]:
        """The flows' L2-hit rule: ``entry`` (read from Redis after ``mark``) is served when
        no write of this process that Redis has not heard of concerns it, it is before its
        soft expiry (``fresh``) or its hard one, and its tags are current (asking Redis if L1
        cannot tell); then it is counted and copied to L1. The drivers' fast path
        (:meth:`serve_l2_reply`) applies the same rule without a flow."""
        entry = self._usable(name, entry)
        if entry is None:
            return None
        if time.time() >= (entry.soft_expiry if fresh else entry.hard_expiry):
            return None
        if entry.tags and not (yield from self._tags_valid(entry, mark)):
            return None
        self.counters.l2_hits += 1
        l1 = self._l1()
        if l1 is not None:
            l1.fill(name, entry, since=mark)
        return entry

    def get_flow(self, name: str, reply: Any = None, mark: int | None = None) -> Flow:
        """A fresh value (or MISS): ``get`` never loads, so it never serves stale either.

        ``reply`` is the driver's own L2 read (see :meth:`serve_l2_reply`), taken after
        ``mark``; without one the flow reads L2 itself."""
        now = time.time()
        l1 = self._l1()
        if l1 is not None:
            entry = l1.get(name, now)
            if (
                entry is not None
                and now < entry.soft_expiry
                and (yield from self._tags_valid(entry, None))
            ):
                self.counters.l1_hits += 1
                return entry.value
        if self.l2 is not None:
            if reply is None:
                mark = self.mark()
                reply = (yield L2Get(name)) or ABSENT
            if reply is not UNAVAILABLE and reply is not ABSENT:
                entry = yield from self._l2_hit(name, self._entry_of(reply), mark, fresh=True)
                if entry is not None:
                    return entry.value
        self.counters.misses += 1
        return MISS

    def get_or_set_flow(
        self,
        name: str,
        loader: Callable[[], Any],
        ttl: float | None,
        tags: tuple[str, ...],
        reply: Any = None,
        mark: int | None = None,
        stale: bool = True,
    ) -> Flow:
        """``reply`` and ``mark`` as for :meth:`get_flow`. ``stale=False``: a value past its
        ttl is a miss, and nothing is refreshed early or in the background (the loader runs
        only in the caller: one bound to the caller's state, such as an ORM session)."""
        now = time.time()
        beta = self.beta if stale else 0.0
        l1 = self._l1()
        if l1 is not None:
            entry = l1.get(name, now)
            if entry is not None and (yield from self._tags_valid(entry, None)):
                if entry.is_fresh(now, beta):
                    self.counters.l1_hits += 1
                    return entry.value
                if stale and entry.is_servable(now):
                    self.counters.l1_hits += 1
                    self.counters.stale_served += 1
                    yield Refresh(name, loader, ttl, tags)
                    return entry.value
        if reply is None:
            mark = self.mark()
        if self.l2 is None:
            self.counters.misses += 1
            return (yield from self._load_unleased(name, loader, ttl, tags, mark))
        if reply is None:
            reply = (yield L2Get(name)) or ABSENT  # (an entry is never empty bytes)
        if reply is UNAVAILABLE:
            self.counters.misses += 1
            return (yield from self._load_unleased(name, loader, ttl, tags, mark))
        present = reply is not ABSENT
        if present:
            # (With stale=False the driver's read drew no XFetch (early=stale): a reply it
            # found stale is past its soft expiry, which fresh=True refuses.)
            entry = yield from self._l2_hit(name, self._entry_of(reply), mark, fresh=not stale)
            if entry is not None:
                known_stale = type(reply) is L2Reply and reply.known_stale
                if stale and (known_stale or not entry.is_fresh(now, beta)):
                    self.counters.stale_served += 1
                    yield Refresh(name, loader, ttl, tags)
                return entry.value
        self.counters.misses += 1
        return (
            yield from self._load_leased(
                name, loader, ttl, tags, mark, skip_entry=present, stale=stale
            )
        )

    # -- loading ---------------------------------------------------------------------------

    def _run_loader(self, loader: Callable[[], Any]) -> Generator[Op, Any, tuple[Any, float]]:
        try:
            value, seconds = yield Load(loader)
        except Exception:
            self.counters.load_errors += 1
            raise
        self.counters.loads += 1
        self.counters.load_seconds += seconds
        return value, seconds

    def _load_unleased(
        self,
        name: str,
        loader: Callable[[], Any],
        ttl: float | None,
        tags: tuple[str, ...],
        mark: int | None,
    ) -> Flow:
        """No Redis (L1-only, or Redis unavailable): load, and keep the value in L1 only."""
        if self.l2 is not None:
            self.counters.degraded_loads += 1
        versions = yield from self._snapshot(tags, mark)
        value, seconds = yield from self._run_loader(loader)
        l1 = self._l1()
        if l1 is not None:
            if versions is None:  # Redis is down: the versions this process knows, or ""
                versions = {t: (l1.tag_versions([t]) or {}).get(t, "") for t in tags}
            entry = self._new_entry(value, ttl, seconds, versions)
            self._pack(entry, name)  # size and serializability checks apply to L1 too
            l1.fill(name, entry, since=mark)
        return value

    def _load_leased(
        self,
        name: str,
        loader: Callable[[], Any],
        ttl: float | None,
        tags: tuple[str, ...],
        mark: int | None,
        *,
        skip_entry: bool,
        stale: bool,
    ) -> Flow:
        versions = yield from self._snapshot(tags, mark)
        if versions is None:
            return (yield from self._load_unleased(name, loader, ttl, tags, mark))
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self.wait_timeout
        while True:
            answer = yield Acquire(name, token, skip_entry, wait=True)
            if answer is UNAVAILABLE:
                return (yield from self._load_unleased(name, loader, ttl, tags, mark))
            status, data, waiter = answer
            if status == HIT:
                entry = yield from self._l2_hit(name, self._decode(data), mark, fresh=not stale)
                if entry is not None:
                    return entry.value
                skip_entry = True
                continue
            if status == LEASE:
                return (yield from self._load_and_fill(name, token, loader, ttl, versions, mark))
            self.counters.lease_waits += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.counters.wait_timeouts += 1
                log.warning(
                    "hotpath.cache: gave up waiting %.1fs for another loader of %r; loading "
                    "without storing (raise RedisTier lease_ttl above your slowest loader)",
                    self.wait_timeout,
                    name,
                )
                value, _ = yield from self._run_loader(loader)
                return value
            yield Wait(waiter, min(max(data, 1.0) / 1000 + 0.005, remaining))
            skip_entry = False
            mark = self.mark()  # the fill that woke us is older than the read to come

    def _load_and_fill(
        self,
        name: str,
        token: str,
        loader: Callable[[], Any],
        ttl: float | None,
        versions: TagVersions,
        mark: int | None,
    ) -> Flow:
        """Holding the lease: load, then store only if the lease is still ours."""
        try:
            value, seconds = yield from self._run_loader(loader)
            entry = self._new_entry(value, ttl, seconds, versions)
            payload, ttl_ms = self._pack(entry, name)
        except BaseException:
            yield Release(name, token, self._message(Kind.KEY, name))
            raise
        l1 = self._l1()
        # L1 first, so this process's own fill message can never arrive before it.
        if l1 is not None:
            l1.fill(name, entry, since=mark, write_id=token)
        stored = yield Fill(name, token, payload, ttl_ms, self._message(Kind.KEY, name, token))
        if stored is False:
            self.counters.stale_sets_refused += 1
            if l1 is not None:
                l1.invalidate(name)
        elif stored is UNAVAILABLE:
            self.counters.writes_failed += 1
        return value

    def refresh_flow(
        self, name: str, loader: Callable[[], Any], ttl: float | None, tags: tuple[str, ...]
    ) -> Flow:
        """Background refresh of a stale (or XFetch-picked) value; a failure leaves the stale
        value in place until its hard TTL (fail-safe) and is counted."""
        self.counters.refreshes += 1
        mark = self.mark()
        try:
            if self.l2 is None:
                yield from self._load_unleased(name, loader, ttl, tags, mark)
                return None
            versions = yield from self._snapshot(tags, mark)
            if versions is None:
                return None
            token = secrets.token_hex(8)
            answer = yield Acquire(name, token, skip_entry=True, wait=False)
            if answer is UNAVAILABLE or answer[0] != LEASE:
                return None  # another process is refreshing it
            yield from self._load_and_fill(name, token, loader, ttl, versions, mark)
        except Exception as error:
            self.counters.stale_on_error += 1
            log.warning(
                "hotpath.cache: refresh of %r failed, serving the stale value: %r", name, error
            )
        return None

    # -- writing ---------------------------------------------------------------------------

    def set_flow(self, name: str, value: Any, ttl: float | None, tags: tuple[str, ...]) -> Flow:
        self._local_writes += 1
        l1 = self._l1()
        mark = self.mark()
        versions = yield from self._snapshot(tags, mark)
        if versions is None:
            versions = dict.fromkeys(tags, "")
        entry = self._new_entry(value, ttl, 0.0, versions)
        payload, ttl_ms = self._pack(entry, name)
        write_id = secrets.token_hex(8)
        kept = entry if l1 is not None else None
        # The write spans the Redis call: L1 is settled again once Redis has the new value,
        # since another thread's read of Redis meanwhile may have put the old one back.
        begun = self.l1.begin_write(name, kept, write_id) if self.l1 is not None else 0
        try:
            if self.l2 is not None:
                done = yield Write(name, payload, ttl_ms, self._message(Kind.KEY, name, write_id))
                self._check_written(done, "set", name, Unsent(Kind.KEY, name), "")
        finally:
            if self.l1 is not None:
                self.l1.end_write(name, begun, kept, write_id)
        return None

    def delete_flow(self, name: str) -> Flow:
        self._local_writes += 1
        begun = self.l1.begin_write(name) if self.l1 is not None else 0
        try:
            if self.l2 is not None:
                done = yield Delete(name, self._message(Kind.KEY, name))
                self._check_written(done, "delete", name, Unsent(Kind.KEY, name), "")
        finally:
            if self.l1 is not None:
                self.l1.end_write(name, begun)
        return None

    def invalidate_flow(self, tags: tuple[str, ...]) -> Flow:
        """Each tag gets its next version from Redis; versions only grow, so a late message or
        a tag read that raced this invalidation cannot take L1 back to an older one."""
        self._local_writes += 1
        for tag in tags:
            if self.l1 is not None:
                self.l1.note_tag(tag)
            version: Any = UNAVAILABLE
            if self.l2 is not None:
                version = yield BumpTag(tag, self._message(Kind.TAG, tag))
                self._check_written(
                    version, "invalidate_tags", tag, Unsent(Kind.TAG, tag), secrets.token_hex(8)
                )
            if self.l1 is not None:
                if version is UNAVAILABLE:  # no Redis (or none now): a version of our own
                    version = next_version(self.l1.tag_versions([tag]))
                self.l1.set_tag(tag, version)
        return None

    def _check_written(self, done: Any, what: str, name: str, unsent: Unsent, version: str) -> None:
        if done is UNAVAILABLE:
            self.counters.writes_failed += 1
            self.unsent[unsent] = version
            log.warning(
                "hotpath.cache: %s(%r) did not reach Redis: applied to this process's L1, and "
                "sent again by this process's next cache call once Redis answers (other "
                "processes may serve the old value until then)",
                what,
                name,
            )
        elif self.unsent:
            self.unsent.pop(unsent, None)  # this write supersedes the one that failed

    def replay_ops(self) -> list[tuple[Unsent, str, Op]]:
        """The writes to send again: a delete for a key (a failed set included: its value is
        not kept, and a delete is always safe) and the latest version of a tag."""
        ops: list[tuple[Unsent, str, Op]] = []
        for unsent, version in list(self.unsent.items()):
            kind, name = unsent
            op: Op
            if kind is Kind.KEY:
                op = Delete(name, self._message(Kind.KEY, name))
            else:
                op = BumpTag(name, self._message(Kind.TAG, name))
            ops.append((unsent, version, op))
        return ops

    def replayed(self, unsent: Unsent, version: str, done: Any) -> None:
        if done is not UNAVAILABLE and self.unsent.get(unsent) == version:
            del self.unsent[unsent]
            self.counters.writes_replayed += 1
            if self.l1 is not None:
                # Reads of Redis that began before the replay may hold the old entry or tag
                # version: refuse their fills. A tag's local version made while Redis was
                # away is not comparable with Redis's: ask Redis next time.
                kind, name = unsent
                if kind is Kind.KEY:
                    self.l1.invalidate(name)
                else:
                    self.l1.forget_tag(name)

    def _usable(self, name: str, entry: Entry | None) -> Entry | None:
        """``entry`` from Redis, unless a write of this process that Redis has not heard of
        yet concerns it (its key, or one of its tags): then it is a miss here."""
        if entry is None or not self.unsent:
            return entry
        unsent = self.unsent
        if Unsent(Kind.KEY, name) in unsent or any(
            Unsent(Kind.TAG, tag) in unsent for tag in entry.tags
        ):
            return None
        return entry

    # -- the invalidation channel ----------------------------------------------------------

    def on_message(self, message: Message) -> None:
        self.counters.invalidations_received += 1
        if message.kind is Kind.KEY:
            self.waiters.wake(message.name)
            if self.l1 is not None:
                if message.origin == self.origin:
                    self.l1.invalidate_unless(message.name, message.version)
                else:
                    self.l1.invalidate(message.name)
        elif message.kind is Kind.TAG and self.l1 is not None:
            self.l1.set_tag(message.name, message.version)  # an older one is ignored there

    def on_unreadable(self) -> None:
        """A message on the channel that hotpath did not send: ignored, counted."""
        self.counters.decode_errors += 1

    def on_connect(self) -> None:
        # Invalidations sent while we were away were missed: start from an empty L1. The first
        # connection too: a read of Redis in flight may have been overtaken by an invalidation
        # sent before we subscribed, so the flush refuses its fill (a load's own fill of Redis
        # is kept: its lease is what refuses a stale one there).
        self._flush()
        self.channel_connected = True

    def on_disconnect(self) -> None:
        self.channel_connected = False
        self.channel_drops += 1
        self._flush()
        self.waiters.wake_all()

    def _flush(self) -> None:
        if self.l1 is not None:
            self.l1.clear()
            self.counters.l1_flushes += 1

    def stats(self) -> CacheStats:
        return snapshot(
            self.counters,
            l1_size=len(self.l1) if self.l1 is not None else 0,
            l1_evictions=self.l1.evictions if self.l1 is not None else 0,
            circuit=self.l2.breaker.state.value if self.l2 is not None else "n/a",
            channel_connected=self.channel_connected,
            channel_drops=self.channel_drops,
        )
