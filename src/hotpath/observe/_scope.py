"""A scope: the unit of work (request, job, test) whose queries are recorded and judged.

The current scope lives in a ``contextvars.ContextVar``, so it follows asyncio tasks and
stays out of other threads. Recording is incremental and cheap: counters per statement
shape, and a call-site walk only from the second occurrence of a shape on (or for slow
queries). Findings are derived when the scope closes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.orm import RelationshipProperty

from ._callsite import SiteMemo, capture_call_site, ignored_at
from ._eager import TRACK_ATTR, EagerGroup, tracking_class
from ._fingerprint import shape_of
from ._records import CallSite, Finding, FindingKind, Layer, Mode, QueryRecord
from ._timeline import NO_DICT, NO_ITEMS, NO_SET, IoOp, Timeline
from ._values import not_read, parameter_values, result_values

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm.state import InstanceState

    from ._recorder import Recorder

# read per query and per request: bound once (see ``_records.LAYERS``)
_DB, _OTHER = Layer.DB, Layer.OTHER
_N_PLUS_ONE, _DUPLICATE, _UNUSED_EAGER_LOAD = (
    FindingKind.N_PLUS_ONE,
    FindingKind.DUPLICATE,
    FindingKind.UNUSED_EAGER_LOAD,
)

current_scope: ContextVar[Scope | None] = ContextVar("hotpath_observe_scope", default=None)
allowed_kinds: ContextVar[frozenset[str]] = ContextVar(
    "hotpath_observe_allowed", default=frozenset()
)

Chain = tuple["RelationshipProperty[Any]", ...]
Origin = tuple[Any, ...]  # identifies one result set (or the union of sibling lazy loads)
# Why an object's columns were loaded again, one object at a time (a column load):
# "expired" by a commit or expire(), "deferred" columns, a "subclass"'s own table that a
# query of the base class did not read, or an explicit "refresh".
ReloadReason = Literal["expired", "deferred", "subclass", "refresh"]
_MAX_PARAM_HASHES = 64
_MAX_DUPLICATE_KEYS = 10_000  # distinct (statement, parameters) remembered per scope


# where each statement long enough to be an operation of the request is issued (SiteMemo)
_operation_sites = SiteMemo()
_failed_listeners: set[str] = set()  # listeners whose bug was logged (once each)


def log_listener_bug(name: str) -> None:
    """Log, once per listener, an exception a listener caught: a listener runs inside the
    application's ORM or driver call, where observe must never raise."""
    if name not in _failed_listeners:
        _failed_listeners.add(name)
        logging.getLogger("hotpath.observe").exception(
            "hotpath: observe's %s listener failed (reported once, ignored from now on)", name
        )


def _suppressed(kind: FindingKind, site: CallSite | None) -> bool:
    return kind.value in allowed_kinds.get() or ignored_at(site, kind.value)


@dataclass
class Execution:
    """One ORM execution in the scope and where its rows sit in the relationship graph."""

    chain: Chain
    relationship_load: bool
    lazy_origin: Origin | None = None
    lazy_key: tuple[Origin, str] | None = None


# The execution token of eager relationship loads (selectin, subquery): they share one
# execution, registered in every scope, since only "this is a relationship load" matters.
EAGER_TOKEN = 0
_EAGER_EXECUTION = Execution((), relationship_load=True)


@dataclass
class ShapeGroup:
    """Executions of one statement shape from one call site."""

    sql: str
    count: int = 0
    total_ms: float = 0.0
    param_hashes: set[int] = field(default_factory=set)
    suppressed: bool = False


@dataclass
class LazyGroup:
    """Lazy loads of one relationship for instances of one result set."""

    chain: Chain
    parents: set[int] = field(default_factory=set)
    queries: int = 0
    total_ms: float = 0.0
    call_site: CallSite | None = None
    sql: str | None = None
    suppressed: bool = False
    # set for column loads (objects' columns loaded one at a time), None for relationships
    reason: ReloadReason | None = None
    columns: tuple[str, ...] = ()
    mapper: Any = None  # the class whose columns were loaded


@dataclass
class SlowGroup:
    sql: str
    call_site: CallSite | None
    count: int = 0
    max_ms: float = 0.0
    total_ms: float = 0.0
    suppressed: bool = False


@dataclass
class PendingExplain:
    engine: Engine
    statement: str
    parameters: Any
    fingerprint: str


class Scope:
    """Everything recorded for one unit of work; use through ``Profiler.scope(name)``."""

    # one per request: its attributes in slots, not in a dict of its own
    __slots__ = (
        "_duplicate_ms",
        "_duplicate_sites",
        "_duplicate_suppressed",
        "_duplicates",
        "_eager",
        "_executions",
        "_flushing_sessions",
        "_foreign_sessions",
        "_last_group",
        "_lazy",
        "_lazy_targets",
        "_origin_cache",
        "_origin_chain",
        "_origin_root",
        "_reloaded",
        "_run_origins",
        "_shape_counts",
        "_shape_groups",
        "_slow",
        "_stopped_at",
        "_token",
        "_unbounded",
        "_walk_limit",
        "breakdown_ms",
        "capture_sites",
        "closed",
        "db_time_ms",
        "duration_ms",
        "ended",
        "findings",
        "is_async",
        "modes",
        "name",
        "namer",
        "parent",
        "pending_explains",
        "queries",
        "query_count",
        "recorder",
        "recording",
        "settings",
        "started",
        "timeline",
        "tracks_duplicates",
        "tracks_eager",
        "tracks_n_plus_one",
    )

    def __init__(
        self,
        recorder: Recorder,
        name: str,
        *,
        modes: dict[FindingKind, Mode] | None = None,
        capture_sites: bool = False,
    ) -> None:
        # the profiler's shared state: settings, plans, roll-ups; it concludes the scope
        self.recorder = recorder
        self.settings = settings = recorder.settings
        self.name = name
        # what the scope will be named, read before it is (a middleware names a request by its
        # route template once routing has run, by its raw path until its response starts)
        self.namer: Callable[[], str] | None = None
        self.capture_sites = capture_sites  # every query's call site (budgets list them)
        # the settings' own (read-only) mapping unless this scope overrides a mode
        self.modes: Mapping[FindingKind, Mode] = (
            {**settings.modes, **modes} if modes else settings.modes
        )
        # a detector that is off costs nothing: its bookkeeping is skipped entirely
        self.tracks_n_plus_one = self.modes[_N_PLUS_ONE] != "off"
        self.tracks_duplicates = self.modes[_DUPLICATE] != "off"
        self.tracks_eager = self.modes[_UNUSED_EAGER_LOAD] != "off"
        self.parent: Scope | None = None
        self.is_async = False
        self.started = 0.0
        self.ended = 0.0
        self.duration_ms = 0.0
        self.timeline = Timeline()
        # filled when the scope concludes: its wall time per layer (adds up to duration_ms)
        self.breakdown_ms: dict[Layer, float] = NO_DICT
        self.query_count = 0
        self.db_time_ms = 0.0
        # the lists, sets and dicts below start as the shared empty ones (NO_ITEMS, NO_SET,
        # NO_DICT) and are made when first written: most requests leave most of them empty,
        # and a request's live containers are what the garbage collector counts and promotes
        # (19 per scope made them a third of observe's cost in a served app: docs/benchmarks.md)
        self.queries: list[QueryRecord] = NO_ITEMS
        self.findings: list[Finding] = NO_ITEMS
        self.closed = False
        self.recording = False  # open, and not stopped early (stop_recording)
        self._stopped_at: float | None = None
        self._token: Token[Scope | None] | None = None
        self._shape_counts: dict[str, int] = NO_DICT
        self._last_group: dict[str, ShapeGroup] = NO_DICT  # shape -> group of the last site seen
        self._walk_limit = settings.shape_threshold + 1
        self._shape_groups: dict[tuple[str, CallSite | None], ShapeGroup] = NO_DICT
        self._duplicates: dict[tuple[str, int], int] = NO_DICT
        self._duplicate_sites: dict[tuple[str, int], CallSite | None] = NO_DICT
        self._duplicate_ms: dict[tuple[str, int], float] = NO_DICT
        self._duplicate_suppressed: set[tuple[str, int]] = NO_SET
        self._slow: dict[str, SlowGroup] = NO_DICT
        self._unbounded: dict[tuple[str, CallSite | None], tuple[str, int, bool]] = NO_DICT
        self.pending_explains: list[PendingExplain] = NO_ITEMS
        self._executions: dict[int, Execution] = NO_DICT  # and EAGER_TOKEN's, in every scope
        self._origin_chain: dict[Origin, Chain] = NO_DICT
        self._origin_cache: dict[tuple[int, Any], Origin] = NO_DICT
        self._run_origins: dict[int, Origin] = NO_DICT
        self._lazy: dict[tuple[Origin, str], LazyGroup] = NO_DICT
        self._lazy_targets: set[tuple[int, str]] = NO_SET  # (id(parent state), key) loading now
        self._eager: dict[Any, EagerGroup] = NO_DICT  # relationship property -> its group
        # id(state) -> its origin before a column load gave it the runid of that reload
        self._reloaded: dict[int, Origin] = NO_DICT
        self._origin_root: dict[Origin, Any] = NO_DICT  # query origin -> the mapper it selected
        self._flushing_sessions: list[Any] = NO_ITEMS  # sessions that flushed in this scope
        self._foreign_sessions: set[int] = NO_SET  # sessions that ran on other engines

    def current_name(self) -> str:
        """Its name as of now: the route template as soon as routing has matched one."""
        return self.namer() if self.namer is not None else self.name

    # -- entering and leaving ------------------------------------------------------------

    def __enter__(self) -> Scope:
        self._open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._close()
        self.recorder.conclude(self, raising=exc_type is None)

    async def __aenter__(self) -> Scope:
        self.is_async = True
        self._open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._close()
        if self.pending_explains:  # EXPLAIN's own queries are awaited
            await self.recorder.conclude_async(self, raising=exc_type is None)
        else:  # nothing to await: no coroutine more per request
            self.recorder.conclude(self, raising=exc_type is None)

    def _open(self) -> None:
        if self._token is not None:
            raise RuntimeError(f"scope {self.name!r} is already open; make a new one per use")
        self.parent = current_scope.get()
        self._token = current_scope.set(self)
        self.started = time.perf_counter()
        self.recording = True

    def stop_recording(self) -> None:
        """The unit of work is done though its code goes on (a response fully sent, then
        Starlette's background tasks): stop its clock, and record nothing more into it."""
        if self.recording:
            self.recording = False
            self._stopped_at = time.perf_counter()

    def _close(self) -> None:
        self.recording = False
        self.ended = ended = (
            self._stopped_at if self._stopped_at is not None else time.perf_counter()
        )
        self.duration_ms = (ended - self.started) * 1000
        assert self._token is not None
        try:
            current_scope.reset(self._token)
        except ValueError:  # closed in another context (e.g. a different task): just unset
            current_scope.set(self.parent)
        self.closed = True

    def server_timing(self) -> str:
        """A ``Server-Timing`` header value: the time so far in every layer (the request is
        still running: what is not in a layer yet is ``other``) and the query count."""
        from ._timeline import breakdown  # noqa: PLC0415 - one module, imported once

        now = time.perf_counter()
        parts = breakdown(self.started, now, self.timeline.span_data)
        entries = []
        for layer, ms in parts.items():
            if layer is _DB:
                entries.append(f'db;dur={ms:.1f};desc="{self.query_count} queries"')
            elif ms >= 0.05 or layer is _OTHER:
                entries.append(f"{layer.value};dur={ms:.1f}")
        entries.append(f"total;dur={(now - self.started) * 1000:.1f}")
        return ", ".join(entries)

    def _shown_sql(self, statement: str) -> str:
        """``statement`` as observe shows and exports it: literals redacted unless the
        profiler captures parameters."""
        return statement if self.settings.capture_params else shape_of(statement).redacted

    # -- recording (called from the profiler's event listeners) ---------------------------

    def _record_query(
        self,
        statement: str,
        parameters: Any,
        started: float,
        ended: float,
        rowcount: int,
        execution: Execution | None,
        engine: Engine,
        executemany: bool,
        connection: int,
        cursor: Any,
    ) -> None:
        duration_ms = (ended - started) * 1000
        shape = shape_of(statement)  # cached per statement string: one dict lookup
        fingerprint = shape.fingerprint
        settings = self.settings
        relationship_load = execution is not None and execution.relationship_load
        # the unit of work's statements (a flush's INSERTs, cascade DELETEs) are not the
        # application's loop: judged by neither the shape nor the duplicate detector
        judged_elsewhere = relationship_load or bool(self._flushing_sessions and self._flushing())
        site = _Site()
        if self.capture_sites:
            site.get()
        params_hash = 0
        if not judged_elsewhere and not executemany:
            # relationship loads are judged by the ORM detector, never by shape or duplicate,
            # so only other statements pay for hashing their parameters
            scope: Scope | None = self
            while scope is not None:
                if scope.recorder is self.recorder and (
                    scope.tracks_duplicates or scope.tracks_n_plus_one
                ):
                    params_hash = _hash_params(parameters)
                    break
                scope = scope.parent
        recorder = self.recorder
        span = (_DB, started, ended)
        scope = self
        while scope is not None:  # this scope and the ones of this profiler it is nested in
            if scope.recorder is recorder:  # another profiler's scopes hear from their own
                scope._add(statement, fingerprint, params_hash, duration_ms, judged_elsewhere, site)
                scope.timeline.add_span(span)
            scope = scope.parent
        timeline = self.timeline
        if not shape.is_select:
            timeline.note_writing(connection)
        if duration_ms >= settings.sequential_min_ms:
            self._keep_operation(
                statement, fingerprint, parameters, started, ended, engine, connection, cursor, site
            )
        if duration_ms >= settings.slow_query_ms:
            self._note_slow(statement, fingerprint, duration_ms, site.get())
            if self.modes[FindingKind.SLOW_QUERY] != "off" and recorder.plans.wants(fingerprint):
                explain = PendingExplain(engine, statement, parameters, fingerprint)
                if self.pending_explains is NO_ITEMS:
                    self.pending_explains = [explain]
                else:
                    self.pending_explains.append(explain)
        if shape.is_select and not shape.has_limit and rowcount > settings.max_rows:
            where = site.get()
            key = (fingerprint, where)
            if key not in self._unbounded:
                if self._unbounded is NO_DICT:
                    self._unbounded = {}
                suppressed = _suppressed(FindingKind.UNBOUNDED_RESULT, where)
                self._unbounded[key] = (statement, rowcount, suppressed)
        if len(self.queries) < settings.keep_queries:
            if self.queries is NO_ITEMS:
                self.queries = []
            self.queries.append(
                QueryRecord(
                    self._shown_sql(statement),
                    fingerprint,
                    duration_ms,
                    rowcount,
                    _server_of(engine),
                    parameters
                    if settings.capture_params
                    else ("<redacted>" if parameters else None),
                    site.site,  # only when it was taken anyway: never a walk just for this
                    relationship_load,
                )
            )

    def _keep_operation(
        self,
        statement: str,
        fingerprint: str,
        parameters: Any,
        started: float,
        ended: float,
        engine: Engine,
        connection: int,
        cursor: Any,
        site: _Site,
    ) -> None:
        """Keep a statement long enough to be worth running concurrently, for the
        sequential-I/O detector, with what it read (to tell dependent queries from
        independent ones). A statement seen before in the scope is a loop, which that
        detector leaves to the N+1 and duplicate ones: it is counted, not walked nor read
        again."""
        timeline = self.timeline
        first = timeline.add_op_target(fingerprint)
        where = None
        outputs_from, outputs_of = result_values(cursor) if first else (not_read, None)
        if first:
            where = site.site if site.taken else _operation_sites.site(fingerprint)
        timeline.add_op(
            IoOp(
                _DB,
                started,
                ended,
                fingerprint,
                self._shown_sql(statement) if first else "",
                f"db {_server_of(engine)}",
                where,
                inputs_from=parameter_values,
                inputs_of=parameters if first else None,
                outputs_from=outputs_from,
                outputs_of=outputs_of,
                connection=connection,
                in_write_transaction=connection in timeline.writing_connections,
                awaited=engine.dialect.is_async,
            )
        )

    def _add(
        self,
        statement: str,
        fingerprint: str,
        params_hash: int,
        duration_ms: float,
        relationship_load: bool,
        site: _Site,
    ) -> None:
        self.query_count += 1
        self.db_time_ms += duration_ms
        if relationship_load:
            return  # judged by the ORM detector, which knows the relationship
        if self.tracks_n_plus_one:
            self._track_shape(statement, fingerprint, params_hash, duration_ms, site)
        if params_hash and self.tracks_duplicates:
            key = (statement, params_hash)
            # each dict made at its first write (most scopes repeat no statement: the two
            # for repeats are never made)
            if self._duplicates is NO_DICT:
                self._duplicates = {}
            count = self._duplicates.get(key, 0) + 1
            if count > 1 or len(self._duplicates) < _MAX_DUPLICATE_KEYS:
                # a long scope (a batch job) runs millions of distinct statements: past the
                # bound only those already seen are counted
                self._duplicates[key] = count
            if count >= 2:  # the repeats' time: what reusing the first result saves
                if self._duplicate_ms is NO_DICT:
                    self._duplicate_ms, self._duplicate_sites = {}, {}
                self._duplicate_ms[key] = self._duplicate_ms.get(key, 0.0) + duration_ms
            if count == 2:
                where = site.get()
                self._duplicate_sites[key] = where
                if _suppressed(FindingKind.DUPLICATE, where):
                    if self._duplicate_suppressed is NO_SET:
                        self._duplicate_suppressed = set()
                    self._duplicate_suppressed.add(key)

    def _track_shape(
        self, statement: str, fingerprint: str, params_hash: int, duration_ms: float, site: _Site
    ) -> None:
        if self._shape_counts is NO_DICT:
            self._shape_counts = {}
        seen = self._shape_counts[fingerprint] = self._shape_counts.get(fingerprint, 0) + 1
        if seen == 1:
            return
        if self._shape_groups is NO_DICT:  # a shape seen twice: made then, not per scope
            self._shape_groups, self._last_group = {}, {}
        # Walk the stack for the first runs of a shape and then at powers of two; runs in
        # between are attributed to the group of the last site seen (one dict lookup: no
        # call site to hash), which keeps loops cheap.
        if seen <= self._walk_limit or not seen & (seen - 1):
            where = site.get()
            group = self._shape_groups.get((fingerprint, where))
            if group is None:
                suppressed = _suppressed(FindingKind.N_PLUS_ONE, where)
                group = self._shape_groups[(fingerprint, where)] = ShapeGroup(
                    statement, suppressed=suppressed
                )
                if seen == 2:
                    group.count = 1  # the uncaptured first run is attributed to this site
            self._last_group[fingerprint] = group
        else:
            group = self._last_group[fingerprint]
        group.count += 1
        group.total_ms += duration_ms
        if len(group.param_hashes) < _MAX_PARAM_HASHES:
            group.param_hashes.add(params_hash)

    def _note_slow(
        self, statement: str, fingerprint: str, ms: float, site: CallSite | None
    ) -> None:
        group = self._slow.get(fingerprint)
        if group is None:
            if self._slow is NO_DICT:
                self._slow = {}
            group = self._slow[fingerprint] = SlowGroup(
                statement, site, suppressed=_suppressed(FindingKind.SLOW_QUERY, site)
            )
        group.count += 1
        group.max_ms = max(group.max_ms, ms)
        group.total_ms += ms

    # -- ORM bookkeeping ---------------------------------------------------------------------

    def _begin_execution(self, token: int, execution: Execution) -> None:
        if self._executions is NO_DICT:
            self._executions = {}
        self._executions[token] = execution

    def _execution(self, token: int | None) -> Execution | None:
        if token is None:
            return None
        return _EAGER_EXECUTION if token == EAGER_TOKEN else self._executions.get(token)

    def _origin_of(self, state: InstanceState[Any]) -> Origin:
        """The result set that produced ``state``: the query run SQLAlchemy's loader stamped
        on it, with lazy-load runs folded into one origin per (parent origin, relationship)
        so that nested loops group across parents."""
        if self._reloaded:
            # a column load stamped its own runid on the object: its result set is still the
            # one that loaded it first
            reloaded = self._reloaded.get(id(state))
            if reloaded is not None:
                return reloaded
        run = getattr(state, "runid", None)  # set by the ORM loader on every loaded instance
        if run is None:
            return ("object", id(state))
        lazy = self._run_origins.get(run)
        if lazy is not None:
            return lazy
        path = state.load_path
        origin = self._origin_cache.get((run, path))
        if origin is None:
            if self._origin_cache is NO_DICT:
                self._origin_cache, self._origin_root = {}, {}
            if self._origin_chain is NO_DICT:
                self._origin_chain = {}
            chain = relationships(path)
            origin = self._origin_cache[(run, path)] = ("query", run, chain)
            self._origin_chain[origin] = chain
            entities = path.path if path is not None else ()
            entity = entities[0] if entities else state.mapper
            self._origin_root[origin] = getattr(entity, "mapper", entity)
        return origin

    def _root_of(self, origin: Origin) -> Any:
        """The mapper the statement behind ``origin`` selected (None if unknown): a fix is
        an option of that statement."""
        while origin[0] == "lazy":
            origin = origin[1]
        return self._origin_root.get(origin)

    def _note_column_load(self, state: InstanceState[Any], orm_state: Any) -> Execution:
        """Columns of ``state``, an object already loaded, are being loaded again (before the
        query runs): keep its origin, and group the reload with the other objects' reloads
        of the same result set."""
        origin = self._origin_of(state)
        if self._reloaded is NO_DICT:
            self._reloaded = {}
        self._reloaded.setdefault(id(state), origin)
        mapper = state.mapper
        options = getattr(orm_state.statement, "_compile_options", None)
        loading = getattr(options, "_only_load_props", None) or state.expired_attributes
        keys = tuple(sorted(k for k in loading if k in mapper.column_attrs))
        reason: ReloadReason
        if state.expired:
            reason = "expired"
        elif orm_state.load_options._is_user_refresh:
            reason = "refresh"
        elif keys and all(getattr(mapper.attrs.get(k), "deferred", False) for k in keys):
            reason = "deferred"
        else:
            root = self._root_of(origin)
            tables = root.tables if root is not None else ()
            subclass = root is not None and mapper is not root and mapper.isa(root)
            reason = (
                "subclass"
                if subclass
                and any(
                    all(c.table not in tables for c in getattr(mapper.attrs.get(k), "columns", ()))
                    for k in keys
                )
                else "expired"
            )
        kind = f"{mapper.class_.__name__} columns ({reason})"
        key = (origin, kind)
        group = self._lazy.get(key)
        if group is None:
            if self._lazy is NO_DICT:
                self._lazy = {}
            group = self._lazy[key] = LazyGroup(
                self._chain_of(origin), reason=reason, columns=keys, mapper=mapper
            )
        group.parents.add(id(state))
        group.queries += 1
        if len(group.parents) == 2:
            group.call_site = capture_call_site()
            group.suppressed = _suppressed(FindingKind.N_PLUS_ONE, group.call_site)
        execution = Execution(group.chain, relationship_load=True)
        execution.lazy_key = key
        return execution

    def _note_flush(self, session: Any) -> None:
        if self._flushing_sessions is NO_ITEMS:
            self._flushing_sessions = [session]
        elif not any(s is session for s in self._flushing_sessions):
            self._flushing_sessions.append(session)

    def _flushing(self) -> bool:
        """Whether a Session of this scope is inside ``flush()`` (the unit of work is
        emitting its statements). ``Session._flushing`` is reset even when a flush fails."""
        sessions = self._flushing_sessions
        if not sessions:
            return False
        return any(session._flushing for session in sessions)

    def _note_foreign_session(self, session: Any) -> None:
        if self._foreign_sessions is NO_SET:
            self._foreign_sessions = set()
        self._foreign_sessions.add(session.hash_key)

    def _chain_of(self, origin: Origin) -> Chain:
        return self._origin_chain.get(origin, ())

    def _note_relationship_run(self, run: int, execution: Execution) -> None:
        """Rows of ``run`` came from a lazy load: their origin is the lazy-load group."""
        if execution.lazy_origin is not None and run not in self._run_origins:
            if self._run_origins is NO_DICT:
                self._run_origins = {}
            if self._origin_chain is NO_DICT:
                self._origin_chain = {}
            self._run_origins[run] = execution.lazy_origin
            self._origin_chain[execution.lazy_origin] = execution.chain

    def _note_lazy_load(
        self, parent: InstanceState[Any], prop: RelationshipProperty[Any], chain: Chain
    ) -> None:
        origin = self._origin_of(parent)
        key = (origin, str(prop))
        group = self._lazy.get(key)
        if group is None:
            if self._lazy is NO_DICT:
                self._lazy = {}
            group = self._lazy[key] = LazyGroup(chain)
        group.parents.add(id(parent))
        group.queries += 1
        if self._lazy_targets is NO_SET:
            self._lazy_targets = set()
        self._lazy_targets.add((id(parent), prop.key))
        if len(group.parents) == 2:  # first suspicion: now the call site is worth a walk
            group.call_site = capture_call_site()
            group.suppressed = _suppressed(FindingKind.N_PLUS_ONE, group.call_site)

    def _eager_group(self, prop: Any) -> EagerGroup:
        """The group of an eagerly loaded relationship, made at its first collection (whose
        call site, the query's, is then taken)."""
        group = self._eager.get(prop)
        if group is None:
            if self._eager is NO_DICT:
                self._eager = {}
            site = capture_call_site()
            group = self._eager[prop] = EagerGroup(
                f"{prop.parent.class_.__name__}.{prop.key}",
                call_site=site,
                suppressed=_suppressed(FindingKind.UNUSED_EAGER_LOAD, site),
            )
        return group

    def _lazy_statement(self, key: tuple[Origin, str], statement: str, duration_ms: float) -> None:
        group = self._lazy.get(key)
        if group is not None:
            group.total_ms += duration_ms
            if group.sql is None:
                group.sql = statement

    # -- what the detectors read ---------------------------------------------------------------

    def _lazy_groups(self) -> list[tuple[Origin, LazyGroup]]:
        return [(origin, group) for (origin, _), group in self._lazy.items()]

    def _eager_groups(self) -> list[EagerGroup]:
        return list(self._eager.values())

    def _duplicate_groups(self) -> list[tuple[str, int, CallSite | None, bool, float]]:
        """(statement, runs, call site, suppressed, ms of the repeats) per repeated run."""
        # _duplicate_sites holds exactly the repeated statements (set at the second run), so
        # the scope's end looks at those, not at every statement it ran
        return [
            (
                sql,
                self._duplicates[(sql, h)],
                site,
                (sql, h) in self._duplicate_suppressed,
                self._duplicate_ms.get((sql, h), 0.0),
            )
            for (sql, h), site in self._duplicate_sites.items()
        ]

    def _has_evidence(self) -> bool:
        """Whether any detector has something to judge (most scopes of a healthy app: no)."""
        return bool(
            self._lazy
            or self._shape_groups
            or self._duplicate_sites
            or self._slow
            or self._unbounded
            or self._eager
        )

    def _slow_groups(self) -> dict[str, SlowGroup]:
        return self._slow

    def _unbounded_groups(self) -> dict[tuple[str, CallSite | None], tuple[str, int, bool]]:
        return self._unbounded


def collection_listener(recorder: Recorder, prop: Any) -> Callable[[Any, Any, Any], None]:
    """The ``init_collection`` listener of one relationship (listened raw: it gets the state).

    It runs for every collection an eager loader fills (a hundred for a selectinload of a
    hundred parents), so it is one flat function: the scope lookup, then, for a collection
    to watch, an identity test and two assignments; the verdict waits for the scope's end.
    """
    key = prop.key

    def on_init_collection(state: InstanceState[Any], collection: Any, adapter: Any) -> None:
        # guarded inline (it runs for every eagerly loaded collection): a bug here is logged
        # once and never raised into the application's ORM call
        try:
            scope = current_scope.get()
            if scope is None or scope.recorder is not recorder or not scope.tracks_eager:
                return
            if state.key is None:
                return  # a new object's empty collection, not a load
            if scope._foreign_sessions and state.session_id in scope._foreign_sessions:
                return  # loaded through an engine this profiler was not given
            lazy_targets = scope._lazy_targets
            if lazy_targets:
                target = (id(state), key)
                if target in lazy_targets:
                    lazy_targets.discard(target)
                    return  # a lazy load: it is being read right now
            group = scope._eager.get(prop) or scope._eager_group(prop)
            if group.used:
                return  # one of its collections was read: the relationship is used, stop watching
            cls = type(collection)
            if cls is not group.collection_class:
                group.collection_class, group.tracking_class = cls, tracking_class(cls)
            tracked = group.tracking_class
            if tracked is not None:  # its first read marks the group used (see _eager)
                collection.__dict__[TRACK_ATTR] = group
                collection.__class__ = tracked
                group.collections += 1
        except Exception:
            log_listener_bug("on_init_collection")

    return on_init_collection


def relationships(path: Any) -> Chain:
    """The relationship properties along an ORM loader path (mappers skipped)."""
    if path is None:
        return ()
    return tuple(p for p in path.natural_path if isinstance(p, RelationshipProperty))


def _server_of(engine: Engine) -> str:
    url = engine.url
    return f"{url.host}:{url.port}"


def _hash_params(parameters: Any) -> int:
    """A hash of one statement's parameters (0: could not hash, not judged).

    Hashing the items is several times cheaper than hashing their ``repr`` (a selectin load
    of 100 parents has 100 parameters); values that compare equal (``1``, ``1.0``) hash
    alike, as PostgreSQL compares them. Unhashable values (JSON documents, arrays) fall back
    to the ``repr``.
    """
    if not parameters:
        return 1  # "no parameters" is a parameter set too: a repeat is a duplicate
    try:
        if type(parameters) is dict:
            return hash(tuple(parameters.items())) or 2
        return hash(parameters) or 2
    except TypeError:
        pass
    try:
        return hash(repr(parameters)) or 2
    except Exception:
        return 0


class _Site:
    """The call site of the query being recorded: walked at most once, and only when a
    detector asks for it (most queries never do)."""

    __slots__ = ("site", "taken")

    def __init__(self) -> None:
        self.site: CallSite | None = None
        self.taken = False

    def get(self) -> CallSite | None:
        if not self.taken:
            self.site, self.taken = capture_call_site(), True
        return self.site
