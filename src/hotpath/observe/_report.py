"""Roll-ups across scopes with the same name (an endpoint, a job) and across profiled
functions, and the diagnosis they support: per endpoint its latency, where its time goes
(per layer), its bottleneck and the fixes ranked by the time each would save over the run;
across endpoints, the top fixes for the whole app. As JSON, a rich table or HTML."""

from __future__ import annotations

import html
import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Literal

import orjson
from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..plans import PlanFlag
from ._records import LAYERS, CallSite, Finding, FindingKind, Layer

if TYPE_CHECKING:
    from ._scope import Scope
    from ._settings import ObserveSettings

logger = logging.getLogger("hotpath.observe")

_MAX_US = 3_600_000_000  # one hour
OTHER_NAMES = "<other names>"

Bottleneck = Literal[
    "none",
    "n_plus_one",
    "duplicate",
    "slow_query",
    "missing_index",
    "unbounded_result",
    "connection_setup",
    "pool_wait",
    "sequential_io",
    "n_plus_one_http",
    "blocking_call",
    "slow_dependency",
    "cache_miss",
    "cpu",
]
# The class a fix of each kind removes (a slow query whose plan asks for an index is
# "missing_index"); and the class of the layer that takes most of an endpoint's time when
# no fix explains it.
_KIND_CLASS: dict[FindingKind, Bottleneck] = {
    FindingKind.N_PLUS_ONE: "n_plus_one",
    FindingKind.DUPLICATE: "duplicate",
    FindingKind.SLOW_QUERY: "slow_query",
    FindingKind.UNBOUNDED_RESULT: "unbounded_result",
    FindingKind.UNUSED_EAGER_LOAD: "slow_query",
    FindingKind.SEQUENTIAL_IO: "sequential_io",
    FindingKind.N_PLUS_ONE_HTTP: "n_plus_one_http",
    FindingKind.BLOCKING_CALL: "blocking_call",
    FindingKind.NO_TIMEOUT: "slow_dependency",
    FindingKind.SLOW_DEPENDENCY: "slow_dependency",
    FindingKind.CONNECTION_SETUP: "connection_setup",
    FindingKind.POOL_WAIT: "pool_wait",
    FindingKind.CACHE_MISS: "cache_miss",
    FindingKind.UNPRUNED_PARTITIONS: "slow_query",
}
_LAYER_CLASS: dict[Layer, Bottleneck] = {
    Layer.CONNECT: "connection_setup",
    Layer.POOL_WAIT: "pool_wait",
    Layer.DB: "slow_query",
    Layer.REDIS: "slow_dependency",
    Layer.HTTP: "slow_dependency",
    Layer.BLOCKED: "blocking_call",
    Layer.OTHER: "cpu",
}
# What a cache would answer is not why an endpoint is slow: the database time it would save
# has causes of its own (an N+1, a slow query), which name the bottleneck.
_NOT_A_CAUSE = {FindingKind.REPEATED_READ.value}
# a fix that saves less than this share of an endpoint's time does not name its bottleneck
_BOTTLENECK_SHARE = 0.05
_MAX_CACHE_NAMES = 100  # key templates followed per endpoint
_MAX_READ_KEYS = 20_000  # distinct reads (path and query) remembered per endpoint
# the layers a cached answer skips: the database's (opening a connection, waiting for one,
# the statements); an outbound HTTP call or the handler's own work may not be cacheable
_DATABASE_LAYERS = (Layer.CONNECT, Layer.POOL_WAIT, Layer.DB)
_LAYER_COUNT = len(LAYERS)
# Kinds whose instances in one endpoint are one fix though their details vary from request
# to request (which calls were long enough to count)
_ONE_PER_ENDPOINT = {FindingKind.SEQUENTIAL_IO}


def _histogram(digits: int = 3) -> HdrHistogram:
    return HdrHistogram(1, _MAX_US, digits)


def record(histogram: HdrHistogram, value: int) -> None:
    """``histogram.record_value(value)`` for ``1 <= value <= _MAX_US``, with hdrh's index
    arithmetic inlined (its pure-Python call chain was most of what a request's roll-up
    cost). Reads and writes ``counts``, ``total_count``, ``min_value``, ``max_value`` and
    the bucket constants: checked on hdrhistogram 0.10.x, where ``test_report`` compares it
    with ``record_value``."""
    unit = histogram.unit_magnitude
    half = histogram.sub_bucket_half_count_magnitude
    bucket = (value | histogram.sub_bucket_mask).bit_length() - unit - half - 1
    index = ((bucket + 1) << half) + (value >> (bucket + unit)) - histogram.sub_bucket_half_count
    histogram.counts[index] += 1
    histogram.total_count += 1
    histogram.min_value = min(histogram.min_value, value)
    histogram.max_value = max(histogram.max_value, value)


def _values_at_percentiles(histogram: HdrHistogram, ranks: Iterable[float]) -> dict[float, int]:
    """``histogram.get_value_at_percentile`` for each of ``ranks``, in one cumulative sum
    taken in C (hdrh walks its counts one Python call per bucket: tens of thousands per
    percentile). Reads ``counts`` and ``total_count``, checked on hdrhistogram 0.10.x; the
    rank -> target count -> highest equivalent value rule is hdrh's own."""
    last = histogram._counts_index_for(histogram.get_max_value())
    cumulative = list(accumulate(histogram.counts[: last + 1]))
    found = {}
    for rank in ranks:
        target = histogram.get_target_count_at_percentile(rank)
        index = min(bisect_left(cumulative, target), last)
        found[rank] = histogram.get_highest_equivalent_value(histogram.get_value_from_index(index))
    return found


# Values are folded into their histogram this many at a time (and whenever it is read): a
# scope's roll-up records nine values, and a list append each is most of what it then costs.
_FOLD_AT = 4096


class _Pending:
    """Values recorded into ``histogram`` since it was last read: callers append them to
    ``values`` (each ``1 <= value <= _MAX_US``), and ``flush`` folds them in one loop, with
    the histogram's constants read once and the bucket counts summed in a dict first (a
    ``counts[index] += 1`` on hdrh's ctypes array costs as much as the rest of a value's
    fold; a run's values fall in few buckets). The index arithmetic is ``record``'s.
    """

    __slots__ = ("half", "half_count", "histogram", "mask", "unit", "values")

    def __init__(self, histogram: HdrHistogram) -> None:
        self.histogram = histogram
        self.unit = histogram.unit_magnitude
        self.half = histogram.sub_bucket_half_count_magnitude
        self.mask = histogram.sub_bucket_mask
        self.half_count = histogram.sub_bucket_half_count
        self.values: list[int] = []  # each 1 <= value <= _MAX_US

    def flush(self) -> HdrHistogram:
        """The histogram with every pending value in it."""
        histogram = self.histogram
        values = self.values
        if not values:
            return histogram
        self.values = []
        unit, half, mask, half_count = self.unit, self.half, self.mask, self.half_count
        by_index: dict[int, int] = {}
        for value in values:
            bucket = (value | mask).bit_length() - unit - half - 1
            index = ((bucket + 1) << half) + (value >> (bucket + unit)) - half_count
            by_index[index] = by_index.get(index, 0) + 1
        counts = histogram.counts
        for index, count in by_index.items():
            counts[index] += count
        histogram.total_count += len(values)
        histogram.min_value = min(histogram.min_value, *values)
        histogram.max_value = max(histogram.max_value, *values)
        return histogram


class Timing:
    """Durations of one name (µs resolution, 3 significant digits).

    ``lock`` guards it (a roll-up gives its timings its own lock, and records them under it
    with ``add_ms``); it is reentrant: reading ``histogram`` or a count takes it too.
    Durations are kept as given and folded into the counts and the histogram when read (or
    every ``_FOLD_AT``): recording one is a list append.
    """

    def __init__(self, digits: int = 3, lock: threading.RLock | None = None) -> None:
        self._pending = _Pending(_histogram(digits))
        self._ms: list[float] = []  # recorded, not folded yet
        self._count = 0
        self._zeros = 0  # durations under 1 µs: kept out of the histogram (it starts at 1 µs)
        self._total_ms = 0.0
        self._lock = lock or threading.RLock()

    def _fold(self) -> None:
        """Fold the recorded durations in (the caller holds the lock)."""
        recorded = self._ms  # emptied in place: a roll-up appends to it directly
        if not recorded:
            return
        zeros = 0
        values = self._pending.values
        for ms in recorded:
            if ms < 0.001:
                zeros += 1
            else:
                value = int(ms * 1000)
                values.append(value if value < _MAX_US else _MAX_US)
        self._count += len(recorded)
        self._zeros += zeros
        self._total_ms += sum(recorded)
        recorded.clear()
        self._pending.flush()

    @property
    def histogram(self) -> HdrHistogram:
        """The durations recorded so far (under 1 µs excepted: ``zeros``)."""
        with self._lock:
            self._fold()
            return self._pending.flush()

    @property
    def count(self) -> int:
        with self._lock:
            self._fold()
            return self._count

    @property
    def zeros(self) -> int:
        with self._lock:
            self._fold()
            return self._zeros

    @property
    def total_ms(self) -> float:
        with self._lock:
            self._fold()
            return self._total_ms

    def record_ms(self, ms: float) -> None:
        with self._lock:
            self.add_ms(ms)

    def add_ms(self, ms: float) -> None:
        """``record_ms`` for a caller holding this timing's lock."""
        recorded = self._ms
        recorded.append(ms)
        if len(recorded) >= _FOLD_AT:
            self._fold()

    def record_zero(self) -> None:
        with self._lock:
            self._ms.append(0.0)

    def add_counts(self, count: int, zeros: int, total_ms: float) -> None:
        """Add another process's counts (its histogram is added to ``histogram``)."""
        with self._lock:
            self._count += count
            self._zeros += zeros
            self._total_ms += total_ms

    def percentile_ms(self, percentile: float) -> float:
        return self.percentiles_ms((percentile,))[percentile]

    def percentiles_ms(self, percentiles: tuple[float, ...]) -> dict[float, float]:
        """Several percentiles in one walk of the histogram (a report asks for three per
        timing, and a walk is the cost of a report)."""
        found = dict.fromkeys(percentiles, 0.0)
        recorded = self.count - self.zeros
        if recorded <= 0:
            return found
        # durations under 1 µs are counted apart: a percentile among them is 0
        within = {}
        for percentile in percentiles:
            below = percentile / 100 * self.count
            if below > self.zeros:
                within[percentile] = (below - self.zeros) / recorded * 100
        values = _values_at_percentiles(self.histogram, within.values())
        for percentile, rank in within.items():
            found[percentile] = float(values[rank]) / 1000
        return found

    def summary(self) -> dict[str, float]:
        recorded = self.count - self.zeros
        p50, p95, p99 = self.percentiles_ms((50, 95, 99)).values()
        return {
            "count": self.count,
            "mean_ms": self.total_ms / self.count if self.count else 0.0,
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
            "max_ms": float(self.histogram.get_max_value()) / 1000 if recorded else 0.0,
        }

    def merge(self, other: Timing) -> None:
        with self._lock:
            self.histogram.add(other.histogram)
            self.add_counts(other.count, other.zeros, other.total_ms)


@dataclass
class CacheUse:
    """The lookups of one cached thing (a key template) in one endpoint."""

    lookups: int = 0
    hits: int = 0
    hit_ms: float = 0.0
    miss_ms: float = 0.0
    load_ms: float = 0.0
    # the first lookups of the run, apart: a cache that starts cold then warms up
    early_lookups: int = 0
    early_hits: int = 0
    site: CallSite | None = None

    def add(self, hit: bool, ms: float, load_ms: float, site: CallSite | None, early: int) -> None:
        self.lookups += 1
        if self.lookups <= early:
            self.early_lookups += 1
            self.early_hits += hit
        if hit:
            self.hits += 1
            self.hit_ms += ms
        else:
            self.miss_ms += ms
            self.load_ms += load_ms
            self.site = self.site or site


def _planned(finding: Finding) -> bool:
    return bool(finding.plan_flags) or "plan_cost" in finding.details


def fuller_example(finding: Finding, example: Finding) -> bool:
    """Whether ``finding`` shows its fix better than ``example``: a plan's evidence first
    (a statement planned after its first runs), then the larger saving."""
    if _planned(finding) != _planned(example):
        return _planned(finding)
    return finding.saving_ms > example.saving_ms


@dataclass
class ReadRepeats:
    """The GET requests of one endpoint, and those that asked for what an earlier one of the
    run had asked (the same path and query): what a cache keyed by the request would have
    answered, with the database time each of those spent."""

    requests: int = 0
    repeats: int = 0
    repeat_ms: float = 0.0  # the repeats' database time
    seen: set[str] = field(default_factory=set)

    def add(self, scope: Scope) -> None:
        self.requests += 1
        key = scope.timeline.known_text
        if key in self.seen:
            self.repeats += 1
            layers = scope.breakdown_ms
            for layer in _DATABASE_LAYERS:  # a loop, not sum() over a generator: per request
                self.repeat_ms += layers.get(layer, 0.0)
        elif len(self.seen) < _MAX_READ_KEYS:  # past the bound new reads are not remembered
            self.seen.add(key)


@dataclass
class FixTotal:
    """One fix (kind, call site, change) summed over the scopes of a name that found it."""

    example: Finding
    scopes: int = 0
    saving_ms: float = 0.0


class Rollup:
    """Everything observed for one scope name."""

    def __init__(self) -> None:
        # one lock for the roll-up and its timings: a scope is added under it at once
        self._lock = threading.RLock()
        self.latency = Timing(lock=self._lock)
        self._queries = _Pending(_histogram())
        self._max_queries = 0
        self.db_ms = Timing(lock=self._lock)
        # per layer, its time in each scope (2 significant digits: 7 of them per name)
        self._layers = {layer: Timing(digits=2, lock=self._lock) for layer in LAYERS}
        # what add() appends to: the timings' own lists of durations not folded yet (a
        # timing folds its list when read), and each scope's breakdown, flat in LAYERS
        # order (one extend per scope rather than an append per layer), dealt to the layers'
        # timings when they are read
        self._latency_ms, self._db = self.latency._ms, self.db_ms._ms
        self._layer_values: list[float] = []
        # keyed by the call site itself: its text (a relative path) is made once per fix at
        # report time, not once per finding per scope
        self.fixes: dict[tuple[str, CallSite | None, str], FixTotal] = {}
        self.caches: dict[str, CacheUse] = {}
        self.reads = ReadRepeats()

    @property
    def layers(self) -> dict[Layer, Timing]:
        """Per layer, its time in each scope."""
        with self._lock:
            self._deal_layers()
            return self._layers

    def _deal_layers(self) -> None:
        """Give each layer's timing its values from the scopes' flat breakdowns (the caller
        holds the lock)."""
        values = self._layer_values
        if values:
            for index, timing in enumerate(self._layers.values()):
                timing._ms += values[index::_LAYER_COUNT]
            values.clear()

    def _fold(self) -> None:
        """Fold what add() appended into the histograms (the caller holds the lock): every
        ``_FOLD_AT`` scopes, so that a run nobody reads keeps no list longer than that."""
        self._deal_layers()
        for timing in (self.latency, self.db_ms, *self._layers.values()):
            timing._fold()
        self._queries.flush()

    @property
    def queries(self) -> HdrHistogram:
        """Queries per scope."""
        with self._lock:
            return self._queries.flush()

    @property
    def max_queries(self) -> int:
        return self._max_queries

    def merge_max_queries(self, most: int) -> None:
        with self._lock:
            self._max_queries = max(self._max_queries, most)

    def add(self, scope: Scope) -> None:
        with self._lock:
            # the timings' lists, appended to directly: nine method calls were most of what
            # a roll-up cost (floats: nothing the garbage collector counts)
            latency = self._latency_ms
            latency.append(scope.duration_ms)
            self._db.append(scope.db_time_ms)
            # breakdown() gives every layer, in LAYERS order
            self._layer_values += scope.breakdown_ms.values()
            queries = scope.query_count
            self._queries.values.append(queries if queries > 1 else 1)
            if queries > self._max_queries:  # noqa: PLR1730 - a compare, not a call, per scope
                self._max_queries = queries
            if len(latency) >= _FOLD_AT:
                self._fold()
            if scope.findings:
                self._add_findings(scope.findings)
            timeline = scope.timeline
            if timeline.known_text and scope.name.startswith("GET "):
                self.reads.add(scope)
            if timeline.lookup_data:
                self._add_cache_lookups(timeline.cache_lookups, scope.settings.cache_min_lookups)

    def _add_findings(self, findings: list[Finding]) -> None:
        for finding in findings:
            if finding.kind in _ONE_PER_ENDPOINT:
                key: tuple[str, CallSite | None, str] = (finding.kind.value, None, "")
            elif finding.kind is FindingKind.SLOW_QUERY and finding.fingerprint:
                # one statement is one fix: its plan (and the index it asks for) reaches
                # the scopes that conclude after it was taken, not those already running
                key = (finding.kind.value, finding.call_site, finding.fingerprint)
            else:
                # the fix, else the statement: a message carries the run's figures
                key = (
                    finding.kind.value,
                    finding.call_site,
                    finding.fix or finding.fingerprint or finding.message,
                )
            total = self.fixes.get(key)
            if total is None:
                total = self.fixes[key] = FixTotal(finding)
            elif fuller_example(finding, total.example):
                total.example = finding  # the fullest instance names the calls
            total.scopes += 1
            total.saving_ms += finding.saving_ms

    def _add_cache_lookups(
        self, lookups: list[tuple[str, bool, float, float, CallSite | None]], early: int
    ) -> None:
        for name, hit, ms, load_ms, site in lookups:
            use = self.caches.get(name)
            if use is None:
                if len(self.caches) >= _MAX_CACHE_NAMES:
                    continue
                use = self.caches[name] = CacheUse()
            use.add(hit, ms, load_ms, site, early)


# A thread's CPU clock is a system call, not a vDSO read: once per request it cost the served
# shop more than the rest of observe's bookkeeping (docs/benchmarks.md, observe). Read this
# often, the held time misses at most this much of the last stretch.
_CLOCK_READ_S = 0.02


@dataclass
class LoopUse:
    """How much of the run the event loop was held: its busy share. Held is what the loop's
    thread computed (its CPU clock, read on it as requests conclude, at most every
    ``_CLOCK_READ_S``: the requests' steps and the loop's own callbacks alike) and the sync
    waits the watchdog saw inside a step (``time.sleep``, a sync client: the loop held, its
    thread idle); a thread ready but waiting for a core (a machine busy with other
    processes) held nothing. Over the span from the first request to the last; snapshots of
    several processes (each with its own loop and clocks) add their held times and spans."""

    first: float = math.inf
    last: float = -math.inf
    waits_s: float = 0.0  # the sync waits inside steps
    # per loop thread: its CPU clock at the first and at the last read, and when (wall) that
    # last read was
    cpu: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    merged_span_s: float = 0.0  # the spans of other processes' snapshots
    merged_held_s: float = 0.0  # their held time

    def add(self, scope: Scope) -> None:
        """An async request concluded, on its loop's thread (the one whose clock is read)."""
        self.first = min(self.first, scope.started)
        self.last = max(self.last, scope.ended)
        thread = threading.get_ident()  # no system call (get_native_id's is one)
        clock = self.cpu.get(thread)
        if clock is None or scope.ended - clock[2] >= _CLOCK_READ_S:
            now = time.thread_time()
            self.cpu[thread] = (now if clock is None else clock[0], now, scope.ended)
        if scope.timeline.blocks:
            self.waits_s += sum(
                block.end - block.start
                for block in scope.timeline.blocks
                if block.scope_id == id(scope) and not block.cpu_bound
            )

    @property
    def held_s(self) -> float:
        computed = sum(last - first for first, last, _ in self.cpu.values())
        return computed + self.waits_s + self.merged_held_s

    @property
    def span_s(self) -> float:
        own = self.last - self.first if self.last > self.first else 0.0
        return own + self.merged_span_s

    @property
    def share(self) -> float | None:
        """The loop's busy share over the span of the requests (None: not measured, no async
        request)."""
        span = self.span_s
        return min(1.0, self.held_s / span) if span > 0 else None


class Rollups:
    """The roll-ups of one profiler, by scope name, bounded by ``max_names``."""

    def __init__(self, settings: ObserveSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self.by_name: dict[str, Rollup] = {}
        self.timings: dict[str, Timing] = {}
        self.loop = LoopUse()

    def add(self, scope: Scope) -> None:
        # a dict read needs no lock (the GIL makes it atomic): only a new name takes it
        rollup = self.by_name.get(scope.name) or self.rollup(scope.name)
        rollup.add(scope)
        if scope.is_async:
            with self._lock:
                self.loop.add(scope)

    def rollup(self, name: str) -> Rollup:
        with self._lock:
            rollup = self.by_name.get(name)
            if rollup is None:
                if len(self.by_name) >= self._settings.max_names:
                    if OTHER_NAMES not in self.by_name:
                        logger.warning(
                            "hotpath: %d scope names rolled up; further names are counted as "
                            "%r (name scopes by route template, not raw path; or raise "
                            "Profiler(max_names=...))",
                            self._settings.max_names,
                            OTHER_NAMES,
                        )
                    name = OTHER_NAMES
                    rollup = self.by_name.get(name)
                if rollup is None:
                    rollup = self.by_name[name] = Rollup()
            return rollup

    def timing(self, name: str) -> Timing:
        with self._lock:
            timing = self.timings.get(name)
            if timing is None:
                timing = self.timings[name] = Timing()
            return timing

    def clear(self) -> None:
        with self._lock:
            self.by_name.clear()
            self.timings.clear()
            self.loop = LoopUse()

    def report(self) -> Report:
        with self._lock:
            by_name, timings, loop = dict(self.by_name), dict(self.timings), self.loop.share
        return build_report(by_name, timings, self._settings, loop)


@dataclass
class Fix:
    """A fix, with the time it would save over the whole run (count x time) and the
    evidence behind it."""

    kind: str
    endpoint: str
    call_site: str | None
    change: str | None
    message: str
    scopes: int
    saving_ms: float
    share: float  # of the endpoint's total time
    evidence: dict[str, Any] = field(default_factory=dict)
    sql: str | None = None


@dataclass
class ScopeStats:
    """Per scope name: how many, how fast, where the time goes, its bottleneck and fixes."""

    name: str
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    queries_p50: int
    queries_max: int
    db_ms_p50: float
    findings: list[dict[str, Any]] = field(default_factory=list)
    breakdown_ms: dict[str, float] = field(default_factory=dict)  # mean per request
    layers: dict[str, dict[str, float]] = field(default_factory=dict)  # p50/p95/p99 each
    total_ms: float = 0.0
    budget_ms: float = 0.0
    bottleneck: Bottleneck = "none"
    fixes: list[Fix] = field(default_factory=list)


@dataclass
class FunctionStats:
    name: str
    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class Report:
    """What a profiler saw: per scope name (the diagnosis of each endpoint), the top fixes
    of the whole app, and the profiled functions."""

    scopes: list[ScopeStats]
    functions: list[FunctionStats]
    top_fixes: list[Fix] = field(default_factory=list)
    # the share of the run the event loop was held (async apps; see LoopUse)
    loop_busy: float | None = None

    def endpoint(self, name: str) -> ScopeStats:
        for stats in self.scopes:
            if stats.name == name:
                return stats
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoints": [_endpoint_dict(s) for s in self.scopes],
            "top_fixes": [_fix_dict(f) for f in self.top_fixes],
            "functions": [asdict(f) for f in self.functions],
            "loop_busy": None if self.loop_busy is None else round(self.loop_busy, 4),
        }

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2).decode()

    def print(self, console: Console | None = None) -> None:
        console = console or Console()
        table = Table(title="hotpath: where the time goes", expand=False)
        for column in ("endpoint", "n", "p50", "p95", "p99", "time by layer", "bottleneck"):
            table.add_column(column, overflow="fold")
        for s in self.scopes:
            table.add_row(
                escape(s.name),
                str(s.count),
                f"{s.p50_ms:.1f}",
                f"{s.p95_ms:.1f}",
                f"{s.p99_ms:.1f}",
                escape(_layer_text(s.breakdown_ms)),
                s.bottleneck,
            )
        console.print(table)
        if self.top_fixes:
            console.print("[bold]Fix first[/] (ranked by the time each saves over the run)")
        for rank, fix in enumerate(self.top_fixes[:10], 1):
            kind = escape("[" + fix.kind + "]")
            console.print(
                f"{rank:2}. {kind} {escape(fix.endpoint)}: saves ~{fix.saving_ms:,.0f} ms "
                f"({fix.share:.0%} of its time) - {escape(fix.message)}"
            )
            if fix.call_site:
                console.print(f"      at {escape(fix.call_site)}")
            if fix.change:
                console.print(f"      fix: {escape(fix.change)}")
        if self.functions:
            ftable = Table(
                "function", "calls", "mean ms", "p50", "p95", "p99", "max", title="functions"
            )
            for fn in self.functions:
                ftable.add_row(
                    escape(fn.name),
                    str(fn.count),
                    f"{fn.mean_ms:.2f}",
                    f"{fn.p50_ms:.2f}",
                    f"{fn.p95_ms:.2f}",
                    f"{fn.p99_ms:.2f}",
                    f"{fn.max_ms:.2f}",
                )
            console.print(ftable)

    def to_html(self, title: str = "hotpath diagnosis") -> str:
        """A self-contained page: per endpoint a stacked bar of its time by layer, its
        bottleneck, and the ranked fixes with their call sites."""
        return _html(self, title)


def _layer_text(breakdown: dict[str, float]) -> str:
    total = sum(breakdown.values()) or 1.0
    parts = [
        f"{name} {ms / total:.0%}"
        for name, ms in sorted(breakdown.items(), key=lambda item: -item[1])
        if ms / total >= 0.01
    ]
    return " ".join(parts)


def _fix_dict(fix: Fix) -> dict[str, Any]:
    out = asdict(fix)
    out["saving_ms"] = round(fix.saving_ms, 3)
    out["share"] = round(fix.share, 4)
    return out


def _endpoint_dict(stats: ScopeStats) -> dict[str, Any]:
    out = asdict(stats)
    out["fixes"] = [_fix_dict(f) for f in stats.fixes]
    out["breakdown_ms"] = {k: round(v, 3) for k, v in stats.breakdown_ms.items()}
    return out


def _bottleneck(stats: ScopeStats) -> Bottleneck:
    if stats.p95_ms <= stats.budget_ms:
        return "none"
    for fix in stats.fixes:
        if fix.kind in _NOT_A_CAUSE:
            continue
        if fix.saving_ms > 0 and fix.share >= _BOTTLENECK_SHARE:
            kind = FindingKind(fix.kind)
            if kind is FindingKind.SLOW_QUERY and fix.evidence.get("missing_index"):
                return "missing_index"
            return _KIND_CLASS[kind]
    if not stats.breakdown_ms:
        return "cpu"
    largest = max(stats.breakdown_ms.items(), key=lambda item: item[1])[0]
    return _LAYER_CLASS[Layer(largest)]


# Kinds whose one-off occurrence is a warm-up (lazy imports, a TLS context loaded on the
# first request): listed only when they recur, or when every request had them.
_RECURRING = {FindingKind.BLOCKING_CALL.value}


def _fixes(name: str, rollup: Rollup, total_ms: float) -> list[Fix]:
    fixes = []
    scopes = rollup.latency.count
    for (kind, _, _), fix_total in rollup.fixes.items():
        if kind in _RECURRING and fix_total.scopes < 2 and fix_total.scopes < scopes:
            continue
        finding = fix_total.example
        fixes.append(
            Fix(
                kind,
                name,
                str(finding.call_site) if finding.call_site else None,
                finding.fix,
                finding.message,
                fix_total.scopes,
                fix_total.saving_ms,
                fix_total.saving_ms / total_ms if total_ms > 0 else 0.0,
                {**finding.details, "count": finding.count}
                # a slow query's plan problems (seq scan, misestimate...) travel with its fix
                | (
                    {"plan_flags": [flag_dict(f) for f in finding.plan_flags]}
                    if finding.plan_flags
                    else {}
                ),
                finding.sql,
            )
        )
    fixes.sort(key=lambda f: (-f.saving_ms, -f.scopes, f.kind))
    return fixes


def flag_dict(flag: PlanFlag) -> dict[str, Any]:
    """A plan flag as JSON-able data."""
    return {**asdict(flag), "severity": flag.severity.value}


def _starts_cold(use: CacheUse) -> bool:
    """Under half hits in the first lookups, at least 80% after them."""
    later = use.lookups - use.early_lookups
    if not use.early_lookups or not later:
        return False
    early_ratio = use.early_hits / use.early_lookups
    late_ratio = (use.hits - use.early_hits) / later
    return early_ratio < 0.5 and late_ratio >= 0.8


def _cache_fixes(
    name: str, rollup: Rollup, settings: ObserveSettings, total_ms: float
) -> list[Fix]:
    """cache_miss: a cached thing that costs more than it saves (its misses pay the cache's
    round trips on top of the load, its hits save the load), or one that starts cold."""
    if settings.modes[FindingKind.CACHE_MISS] == "off":
        return []
    fixes = []
    for template, use in rollup.caches.items():
        if use.lookups < settings.cache_min_lookups:
            continue
        misses = use.lookups - use.hits
        ratio = use.hits / use.lookups
        load = use.load_ms / misses if misses else 0.0
        overhead = max(0.0, (use.miss_ms - use.load_ms) / misses) if misses else 0.0
        hit_cost = use.hit_ms / use.hits if use.hits else 0.0
        saved = use.hits * max(0.0, load - hit_cost)
        added = misses * overhead
        evidence: dict[str, Any] = {
            "key": template,
            "lookups": use.lookups,
            "hit_ratio": round(ratio, 4),
            "load_ms": round(load, 3),
            "miss_overhead_ms": round(overhead, 3),
        }
        site = str(use.site) if use.site else None
        if ratio < settings.cache_min_hit_ratio and added > saved:
            message = (
                f"cache miss: {template} hits {ratio:.0%} of {use.lookups} lookups; its misses "
                f"add {added:,.0f} ms, its hits save {saved:,.0f} ms"
            )
            change = (
                "it costs more than it saves: cache something reused (a coarser key, a longer "
                "ttl, tags instead of short ttls), or drop the cache here"
            )
            saving = added - saved
        elif _starts_cold(use):
            late = (use.hits - use.early_hits) / max(1, use.lookups - use.early_lookups)
            cold_misses = use.early_lookups - use.early_hits - (1 - late) * use.early_lookups
            message = (
                f"cache miss: {template} starts cold ({use.early_hits} hits in its first "
                f"{use.early_lookups} lookups, {late:.0%} later)"
            )
            change = "warm it at start-up (load the hot keys before taking traffic)"
            saving = max(0.0, cold_misses) * max(0.0, load - hit_cost)
        else:
            continue
        fixes.append(
            Fix(
                FindingKind.CACHE_MISS.value,
                name,
                site,
                change,
                message,
                rollup.latency.count,
                saving,
                saving / total_ms if total_ms > 0 else 0.0,
                evidence,
            )
        )
    return fixes


def _repeat_fixes(
    name: str, rollup: Rollup, settings: ObserveSettings, total_ms: float
) -> list[Fix]:
    """repeated_read: GETs that asked for what an earlier request had (same path and query).
    A cache keyed by the request would answer them: it saves their database time, which is
    the database time of every request times the share that repeats (the hit ratio such a
    cache would have had over this run, from a cold start)."""
    reads = rollup.reads
    if settings.modes[FindingKind.REPEATED_READ] == "off" or reads.repeats < 2:
        return []
    if rollup.latency.percentile_ms(95) <= settings.budget_for(name):
        return []  # within its budget: a cache would add invalidation for nothing needed
    if reads.repeat_ms <= 0.0:
        return []  # repeats that cost the database nothing: nothing for a cache to save
    ratio = reads.repeats / reads.requests
    return [
        Fix(
            FindingKind.REPEATED_READ.value,
            name,
            None,
            f"cache the answer of {name}, invalidated by tags on writes: "
            "@cache.cached(ttl=..., key=..., tags=...)  # hotpath.cache; or the ORM query cache "
            "(hotpath.cache.orm)",
            f"repeated reads: {reads.repeats} of {reads.requests} requests ({ratio:.0%}) asked "
            f"for what an earlier one had (same path and query); their database time, "
            f"{reads.repeat_ms:,.0f} ms, is what a cache would save",
            reads.repeats,
            reads.repeat_ms,
            reads.repeat_ms / total_ms if total_ms > 0 else 0.0,
            {
                "requests": reads.requests,
                "repeats": reads.repeats,
                "hit_ratio": round(ratio, 4),
                "database_ms": round(reads.repeat_ms / reads.repeats, 3),
            },
        )
    ]


def build_report(
    rollups: dict[str, Rollup],
    timings: dict[str, Timing],
    settings: ObserveSettings,
    loop_busy: float | None = None,
) -> Report:
    scopes = []
    for name, rollup in sorted(rollups.items()):
        latency = rollup.latency.summary()
        total_ms = rollup.latency.total_ms
        fixes = (
            _fixes(name, rollup, total_ms)
            + _cache_fixes(name, rollup, settings, total_ms)
            + _repeat_fixes(name, rollup, settings, total_ms)
        )
        fixes.sort(key=lambda f: (-f.saving_ms, -f.scopes, f.kind))
        count = rollup.latency.count
        stats = ScopeStats(
            name,
            int(latency["count"]),
            latency["p50_ms"],
            latency["p95_ms"],
            latency["p99_ms"],
            latency["max_ms"],
            int(rollup.queries.get_value_at_percentile(50)) if count else 0,
            rollup.max_queries,
            rollup.db_ms.percentile_ms(50),
            findings=[_finding_row(f) for f in fixes],
            breakdown_ms={
                layer.value: timing.total_ms / count if count else 0.0
                for layer, timing in rollup.layers.items()
            },
            layers={
                layer.value: {
                    f"p{percentile}_ms": ms
                    for percentile, ms in timing.percentiles_ms((50, 95, 99)).items()
                }
                for layer, timing in rollup.layers.items()
            },
            total_ms=total_ms,
            budget_ms=settings.budget_for(name),
            fixes=fixes,
        )
        stats.bottleneck = _bottleneck(stats)
        scopes.append(stats)
    functions = [
        FunctionStats(name, **{k: v for k, v in t.summary().items() if k != "count"}, count=t.count)
        for name, t in sorted(timings.items())
    ]
    return Report(scopes, functions, _top(scopes), loop_busy)


def _finding_row(fix: Fix) -> dict[str, Any]:
    """The pre-diagnosis shape of a finding row (kept for readers of ``findings``)."""
    return {
        "kind": fix.kind,
        "message": fix.message,
        "call_site": fix.call_site,
        "fix": fix.change,
        "sql": fix.sql,
        "scopes": fix.scopes,
        "saving_ms": round(fix.saving_ms, 3),
    }


def _top(scopes: Iterable[ScopeStats]) -> list[Fix]:
    """The fixes of every endpoint, one change at one line once (a blocking call slows every
    endpoint in flight: one fix, its savings summed), by the time saved over the run."""
    merged: dict[tuple[str, str | None, str | None], Fix] = {}
    for stats in scopes:
        for fix in stats.fixes:
            key = (fix.kind, fix.call_site, fix.change)
            seen = merged.get(key)
            if seen is None:
                merged[key] = replace(fix, evidence=dict(fix.evidence))
                continue
            if fix.endpoint not in seen.endpoint.split(", "):  # one endpoint's twins: named once
                seen.endpoint = f"{seen.endpoint}, {fix.endpoint}"
            seen.scopes += fix.scopes
            seen.saving_ms += fix.saving_ms
            seen.share = max(seen.share, fix.share)
            if not seen.message or (fix.saving_ms > 0 and "in this request" in seen.message):
                seen.message = fix.message
    every = list(merged.values())
    every.sort(key=lambda f: (-f.saving_ms, -f.scopes, f.kind))
    return every


_COLOURS = {
    Layer.CONNECT: "#d62728",
    Layer.POOL_WAIT: "#ff7f0e",
    Layer.DB: "#1f77b4",
    Layer.REDIS: "#9467bd",
    Layer.HTTP: "#2ca02c",
    Layer.BLOCKED: "#8c564b",
    Layer.OTHER: "#bbbbbb",
}


def _html(report: Report, title: str) -> str:
    esc = html.escape
    rows = []
    for s in report.scopes:
        total = sum(s.breakdown_ms.values()) or 1.0
        bar = "".join(
            f'<span title="{layer.value} {s.breakdown_ms.get(layer.value, 0.0):.1f} ms" '
            f'style="width:{100 * s.breakdown_ms.get(layer.value, 0.0) / total:.2f}%;'
            f'background:{colour}"></span>'
            for layer, colour in _COLOURS.items()
        )
        rows.append(
            f"<tr><td>{esc(s.name)}</td><td>{s.count}</td><td>{s.p50_ms:.1f}</td>"
            f"<td>{s.p95_ms:.1f}</td><td>{s.p99_ms:.1f}</td>"
            f'<td><div class="bar">{bar}</div></td><td>{esc(s.bottleneck)}</td></tr>'
        )
    legend = "".join(
        f'<span class="key" style="background:{c}"></span>{esc(layer.value)} '
        for layer, c in _COLOURS.items()
    )
    fixes = "".join(
        f"<li><b>[{esc(f.kind)}]</b> {esc(f.endpoint)}: saves ~{f.saving_ms:,.0f} ms "
        f"({f.share:.0%}) &mdash; {esc(f.message)}"
        + (f"<br><code>{esc(f.call_site)}</code>" if f.call_site else "")
        + (f"<pre>{esc(f.change)}</pre>" if f.change else "")
        + "</li>"
        for f in report.top_fixes[:20]
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title><style>
body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}
td,th{{padding:4px 8px;border-bottom:1px solid #eee;text-align:left}}
.bar{{display:flex;width:320px;height:14px;background:#f4f4f4}}
.bar span{{display:block;height:14px}}
.key{{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}}
pre{{background:#f6f6f6;padding:6px;white-space:pre-wrap}}
</style></head><body><h1>{esc(title)}</h1>
<p>{legend}</p>
<table><tr><th>endpoint</th><th>n</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th>
<th>time by layer</th><th>bottleneck</th></tr>{"".join(rows)}</table>
<h2>Fix first</h2><ol>{fixes}</ol></body></html>
"""
