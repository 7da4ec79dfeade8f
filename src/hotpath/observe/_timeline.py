"""Where a scope's wall time goes: flat ``(layer, start, end)`` spans and I/O operations.

Hooks (SQLAlchemy events, redis-py, HTTP clients, the event-loop monitor) append to the
current scope; nothing is a tree, so concurrent awaits (``gather``) need no parenting. At the
scope's end :func:`breakdown` splits its wall time over the layers with a sweep over the
spans: a moment with several layers in flight is shared evenly among them, a moment with none
is ``other``, so the parts add up to the scope's duration. Two layers are nested by
construction and mask the outer one: ``connect`` happens inside a ``pool_wait`` (a checkout
that had to open a connection), and nothing of the request moves while the event loop is
``blocked``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._records import LAYERS, CallSite, Layer
from ._values import no_values, not_read

if TYPE_CHECKING:
    from ._scope import Scope

# read per query and per request: bound once (see ``_records.LAYERS``)
_BLOCKED, _CONNECT, _OTHER, _POOL_WAIT = Layer.BLOCKED, Layer.CONNECT, Layer.OTHER, Layer.POOL_WAIT

Span = tuple[Layer, float, float]  # perf_counter seconds

# A timeline's (and a scope's) lists and sets until something is added: most requests leave
# most of them empty, and an empty list or set is still an object the garbage collector
# counts (a request's allocations are what set how often it runs: docs/benchmarks.md).
# Immutable, so a write that forgot to make its own container fails instead of sharing one.
NO_ITEMS: Any = ()
NO_SET: Any = frozenset()


class _NoDict(dict[Any, Any]):
    """The shared empty dict: read as any empty dict, refuses every write."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("NO_DICT is shared: make the scope's own dict before writing to it")

    __setitem__ = __delitem__ = setdefault = update = pop = popitem = clear = _refuse


NO_DICT: Any = _NoDict()


@dataclass(slots=True)
class IoOp:
    """One outbound operation the request-wide detectors judge (HTTP calls; queries long
    enough to matter)."""

    layer: Layer
    start: float
    end: float
    target: str  # what repeats: "GET host/path/{id}", or the statement's fingerprint
    label: str  # what a person reads: the URL template, or the redacted SQL
    dependency: str  # the server: "http://host:port", "db host:port"
    site: CallSite | None = None
    # parameter values and the values it returned, as text (outputs None: not known), read
    # when first asked for (``inputs_from(inputs_of)``: a function and its argument, not a
    # partial, one object less per operation): only the sequential-I/O detector does, for a
    # request over its budget, and most requests are not
    inputs_from: Callable[[Any], frozenset[str]] = no_values
    inputs_of: Any = None
    outputs_from: Callable[[Any], frozenset[str] | None] = not_read
    outputs_of: Any = None
    connection: int = 0  # DB: the connection it ran on (one connection runs one at a time)
    in_write_transaction: bool = False
    timeout: bool | None = None  # HTTP: whether the call had a timeout (None: not known)
    # made through an async client (an async engine, httpx.AsyncClient, aiohttp): the code
    # awaited it, so gather() can overlap it; a sync call (a `def` endpoint that FastAPI runs
    # in its thread pool, a Flask view) needs threads instead
    awaited: bool = False

    _inputs: frozenset[str] | None = None
    _outputs: tuple[frozenset[str] | None] | None = None

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000

    @property
    def inputs(self) -> frozenset[str]:
        if self._inputs is None:
            self._inputs = self.inputs_from(self.inputs_of)
        return self._inputs

    @property
    def outputs(self) -> frozenset[str] | None:
        if self._outputs is None:
            self._outputs = (self.outputs_from(self.outputs_of),)
        return self._outputs[0]


@dataclass(slots=True)
class LoopBlock:
    """A step of the event loop that ran longer than ``blocking_ms``: nothing else on the
    loop moved meanwhile."""

    start: float
    end: float
    scope_id: int  # id() of the scope whose step it was (0: not known)
    endpoint: str
    site: CallSite | None  # the application line the watchdog saw running, if it looked
    what: str  # "time.sleep(0.05)", "a sync database call", "response serialization"...
    cpu_bound: bool


@dataclass(slots=True)  # one per request: made and filled without a __dict__
class Timeline:
    """A scope's spans and operations (filled by the hooks while it records)."""

    # the spans and cache lookups, flat (layer, start, end, layer, start, end...): one list
    # rather than a tuple per span, each a container the garbage collector counts while
    # the request runs (``spans`` and ``cache_lookups`` give them as tuples)
    span_data: list[Any] = NO_ITEMS
    ops: list[IoOp] = NO_ITEMS
    # the text the request came with (its path and query): an operation's input equal to one
    # of its values did not come from an earlier operation's output
    known_text: str = ""
    writing_connections: set[int] = NO_SET
    op_targets: set[str] = NO_SET  # statements kept as operations so far
    connects: int = 0
    # checkouts under way: the statements SQLAlchemy runs on a new connection (the dialect's
    # first_connect: server version, settings) are its set-up, not the request's queries
    connecting: int = 0
    connect_started: float | None = None  # a connect under way (its span ends at checkout)
    connect_site: CallSite | None = None
    # why connections were opened on this request's path, when it is a pattern and not a
    # pool warming up: "NullPool", "an engine per request"
    connect_cause: str | None = None
    pool_size: str | None = None
    pool_wait_site: CallSite | None = None
    pool_waits: int = 0  # checkouts that found every connection taken
    redis_site: CallSite | None = None  # a slow Redis command's (the slowest, within 2x)
    redis_slowest_ms: float = 0.0
    blocks: list[LoopBlock] = NO_ITEMS  # filled when the scope concludes
    # hotpath.cache lookups, flat: key template, hit, ms in all, ms loading, call site of a miss
    lookup_data: list[Any] = NO_ITEMS

    @property
    def spans(self) -> list[Span]:
        data = self.span_data
        return list(zip(data[::3], data[1::3], data[2::3], strict=True))

    @property
    def cache_lookups(self) -> list[tuple[str, bool, float, float, CallSite | None]]:
        data = self.lookup_data
        return list(zip(data[::5], data[1::5], data[2::5], data[3::5], data[4::5], strict=True))

    def add_span(self, span: Span) -> None:
        if self.span_data is NO_ITEMS:
            self.span_data = [*span]
        else:
            self.span_data += span

    def add_op(self, op: IoOp) -> None:
        if self.ops is NO_ITEMS:
            self.ops = [op]
        else:
            self.ops.append(op)

    def add_op_target(self, target: str) -> bool:
        """Note a statement kept as an operation: whether it is its first."""
        if self.op_targets is NO_SET:
            self.op_targets = {target}
            return True
        if target in self.op_targets:
            return False
        self.op_targets.add(target)
        return True

    def note_writing(self, connection: int) -> None:
        if self.writing_connections is NO_SET:
            self.writing_connections = {connection}
        else:
            self.writing_connections.add(connection)

    def add_cache_lookup(self, lookup: tuple[str, bool, float, float, CallSite | None]) -> None:
        if self.lookup_data is NO_ITEMS:
            self.lookup_data = [*lookup]
        else:
            self.lookup_data += lookup


def recording_scopes(scope: Scope | None) -> Iterable[Scope]:
    while scope is not None:
        if scope.recording:
            yield scope
        scope = scope.parent


def union_ms(intervals: Iterable[tuple[float, float]]) -> float:
    """The wall time covered by at least one of ``intervals``."""
    total = 0.0
    current_start = current_end = None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None and current_start is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        elif end > current_end:
            current_end = end
    if current_end is not None and current_start is not None:
        total += current_end - current_start
    return total * 1000


def breakdown(start: float, end: float, span_data: list[Any]) -> dict[Layer, float]:
    """``{layer: ms}`` for the scope ``[start, end]`` whose spans are ``span_data`` (flat, as
    ``Timeline.span_data``); the values add up to its duration."""
    result = dict.fromkeys(LAYERS, 0.0)  # the tuple: iterating the enum is slower
    wall = end - start if end > start else 0.0
    if not span_data:
        result[_OTHER] = wall * 1000
        return result
    # (start, end, layer), clipped to the scope, in start order (tuples sort without a key).
    # A plain loop over the flat data: it runs per request, where a generator and the
    # tuples ``spans`` makes were each a call more
    clipped = []
    data = iter(span_data)
    for layer, s, e in zip(data, data, data):  # noqa: B905 - threes by construction
        if e > start and s < end:
            clipped.append((s if s > start else start, e if e < end else end, layer))
    clipped.sort()
    # Fast path: spans one after another (a sync request's queries): plain sums.
    previous_end = start
    for s, e, _ in clipped:
        if s < previous_end:
            break
        previous_end = e
    else:
        busy = 0.0
        for s, e, layer in clipped:
            result[layer] += (e - s) * 1000
            busy += e - s
        result[_OTHER] = (wall - busy) * 1000 if wall > busy else 0.0
        return result
    events: list[tuple[float, int, Layer]] = []
    for s, e, layer in clipped:
        events.append((s, 1, layer))
        events.append((e, -1, layer))
    events.sort(key=_event_order)
    active = dict.fromkeys(LAYERS, 0)
    at = start
    for time, delta, layer in events:
        if time > at:
            _share(result, active, (time - at) * 1000)
            at = time
        active[layer] += delta
    if end > at:
        _share(result, active, (end - at) * 1000)
    return result


def _event_order(event: tuple[float, int, Layer]) -> tuple[float, int]:
    return event[0], event[1]


def _share(result: dict[Layer, float], active: dict[Layer, int], ms: float) -> None:
    if active[_BLOCKED] > 0:
        result[_BLOCKED] += ms
        return
    layers = [layer for layer, count in active.items() if count > 0]
    if active[_CONNECT] > 0 and _POOL_WAIT in layers:
        layers.remove(_POOL_WAIT)
    if not layers:
        result[_OTHER] += ms
        return
    each = ms / len(layers)
    for layer in layers:
        result[layer] += each


def layer_unions(spans: list[Span]) -> dict[Layer, float]:
    """Per layer, the wall time with at least one of its operations in flight (ms)."""
    by_layer: dict[Layer, list[tuple[float, float]]] = {}
    for layer, s, e in spans:
        by_layer.setdefault(layer, []).append((s, e))
    return {layer: union_ms(intervals) for layer, intervals in by_layer.items()}
