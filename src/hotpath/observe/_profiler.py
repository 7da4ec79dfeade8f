"""``Profiler``: instruments engines and sessions through SQLAlchemy's public events and
hands out scopes; owns configuration, plans of slow shapes, and the roll-ups."""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from time import perf_counter
from typing import Any, Literal, TypeVar, overload

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapper, ORMExecuteState, Session

from .._errors import HotpathError
from ..plans import PlanFlag
from ._detect import find_problems
from ._explain import explain_async, explain_sync
from ._otel import export as export_to_otel
from ._records import ERRORS, MODES, Finding, FindingKind, Mode, QueryBudgetError
from ._report import Report, Rollup, Timing, build_report
from ._scope import (
    EAGER_TOKEN,
    Execution,
    Scope,
    allowed_kinds,
    collection_listener,
    current_scope,
    log_listener_bug,
    relationships,
)

logger = logging.getLogger("hotpath.observe")

TOKEN = "hotpath_observe"  # execution option tying rows to the ORM execution that loaded them
ExplainMode = Literal["off", "plan", "analyze"]
DEFAULT_MODES: dict[FindingKind, Mode] = {
    FindingKind.N_PLUS_ONE: "warn",
    FindingKind.DUPLICATE: "log",
    FindingKind.SLOW_QUERY: "log",
    FindingKind.UNBOUNDED_RESULT: "log",
    FindingKind.UNUSED_EAGER_LOAD: "log",
}
_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(listener: _F) -> _F:
    """A listener runs inside the application's ORM or driver call: a bug in it must never
    become the application's exception. It is logged once, and the call goes on."""

    @functools.wraps(listener)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return listener(*args, **kwargs)
        except Exception:
            log_listener_bug(listener.__name__)
            return None

    return guarded  # type: ignore[return-value]


class ObserveConfigError(HotpathError, ValueError):
    """A Profiler option has a value it cannot take."""


class HotpathWarning(UserWarning):
    """Category of the warnings observe emits in "warn" mode."""


def parse_modes(modes: Mapping[str, Mode] | None) -> dict[FindingKind, Mode]:
    parsed = dict(DEFAULT_MODES)
    for key, mode in (modes or {}).items():
        try:
            kind = FindingKind(key)
        except ValueError:
            known = ", ".join(k.value for k in FindingKind)
            raise ObserveConfigError(f"unknown detector {key!r}: use one of {known}") from None
        if mode not in MODES:
            raise ObserveConfigError(f"mode {mode!r} for {key}: use one of {', '.join(MODES)}")
        parsed[kind] = mode
    return parsed


class Profiler:
    """Capture every query of a scope, find N+1s, duplicates, slow and unbounded queries.

    >>> profiler = Profiler(engine, slow_query_ms=50, explain="plan")   # doctest: +SKIP
    >>> with profiler.scope("GET /orders/{id}") as scope:               # doctest: +SKIP
    ...     handle_request()
    >>> scope.findings                                                   # doctest: +SKIP

    With no engines, ``instrument()`` listens on every ``Engine``. Outside a scope the
    listeners return at once.
    """

    def __init__(
        self,
        *engines: Engine | AsyncEngine,
        slow_query_ms: float = 100.0,
        explain: ExplainMode = "off",
        explain_timeout_ms: float = 2000.0,
        n_plus_one_threshold: int = 2,
        shape_threshold: int = 5,
        max_rows: int = 1000,
        capture_params: bool = False,
        modes: Mapping[str, Mode] | None = None,
        keep_queries: int = 1000,
        explain_interval_s: float = 300.0,
        explain_per_minute: int = 10,
        max_names: int = 1000,
    ) -> None:
        if explain not in ("off", "plan", "analyze"):
            raise ObserveConfigError(f"explain={explain!r}: use 'off', 'plan' or 'analyze'")
        if n_plus_one_threshold < 2 or shape_threshold < 2:
            raise ObserveConfigError("N+1 thresholds must be at least 2 (one load is not a loop)")
        if slow_query_ms <= 0 or max_rows < 1:
            raise ObserveConfigError("slow_query_ms and max_rows must be positive")
        self.slow_query_ms = slow_query_ms
        self.explain = explain
        self.explain_timeout_ms = explain_timeout_ms
        self.n_plus_one_threshold = n_plus_one_threshold
        self.shape_threshold = shape_threshold
        self.max_rows = max_rows
        self.capture_params = capture_params
        self.modes = parse_modes(modes)
        self.keep_queries = keep_queries
        self.explain_interval_s = explain_interval_s
        self.explain_per_minute = explain_per_minute
        # Distinct scope names rolled up (three histograms each, ~0.5 MiB): past this, new
        # names (raw paths of a URL scan, say) share OTHER_NAMES.
        self.max_names = max_names
        self._targets: list[Any] = []
        # relationship property -> (its class attribute, its init_collection listener or None)
        self._watched: dict[Any, tuple[Any, Callable[..., None] | None]] = {}
        self._seen_mappers: set[Any] = set()
        self._orm_listening = False
        self._load_listening = False
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        self._rollups: dict[str, Rollup] = {}
        self._timings: dict[str, Timing] = {}
        self._plans: dict[str, tuple[Any, list[PlanFlag], bool]] = {}
        self._explained_at: dict[str, float] = {}
        self._recent_explains: deque[float] = deque()
        if engines:
            self.instrument(*engines)

    # -- instrumentation -------------------------------------------------------------------

    def instrument(self, *engines: Engine | AsyncEngine) -> Profiler:
        """Listen on ``engines`` (every Engine when none are given) and on ORM sessions.

        Idempotent: instrumenting the same engine twice adds no second listener.
        """
        targets: tuple[Any, ...] = engines or (Engine,)
        for target in targets:
            sync = target.sync_engine if isinstance(target, AsyncEngine) else target
            if any(sync is t for t in self._targets):
                continue
            event.listen(sync, "before_cursor_execute", self._before_cursor_execute)
            event.listen(sync, "after_cursor_execute", self._after_cursor_execute)
            self._targets.append(sync)
        if not self._orm_listening:
            event.listen(Session, "do_orm_execute", self._on_orm_execute)
            event.listen(Session, "before_flush", self._on_before_flush)
            self._orm_listening = True
        return self

    def _listen_for_loads(self) -> None:
        # Per-instance ``load`` events cost a call for every row the ORM builds; they are only
        # needed to follow rows produced by lazy loads, so they start with the first one seen.
        with self._lock:
            if not self._load_listening and self._orm_listening:
                event.listen(Mapper, "load", self._on_load)
                self._load_listening = True

    def uninstrument(self) -> None:
        """Remove every listener this profiler added."""
        for target in self._targets:
            event.remove(target, "before_cursor_execute", self._before_cursor_execute)
            event.remove(target, "after_cursor_execute", self._after_cursor_execute)
        self._targets.clear()
        for attribute, listener in self._watched.values():
            if listener is not None:
                event.remove(attribute, "init_collection", listener)
        self._watched.clear()
        self._seen_mappers.clear()
        if self._orm_listening:
            event.remove(Session, "do_orm_execute", self._on_orm_execute)
            event.remove(Session, "before_flush", self._on_before_flush)
            self._orm_listening = False
        if self._load_listening:
            event.remove(Mapper, "load", self._on_load)
            self._load_listening = False

    @property
    def instrumented(self) -> bool:
        return bool(self._targets)

    # -- scopes --------------------------------------------------------------------------------

    def scope(self, name: str, *, modes: Mapping[str, Mode] | None = None) -> Scope:
        """A unit of work to record: ``with profiler.scope(name):`` or ``async with``."""
        if not modes:  # the common case (one scope per request): the profiler's modes as they are
            return Scope(self, name)
        return Scope(
            self,
            name,
            modes=parse_modes({**{k.value: v for k, v in self.modes.items()}, **modes}),
        )

    @staticmethod
    def current_scope() -> Scope | None:
        return current_scope.get()

    @contextlib.contextmanager
    def allow(self, *kinds: str) -> Iterator[None]:
        """Suppress findings of ``kinds`` (e.g. ``"n_plus_one"``) caused inside the block."""
        for kind in kinds:
            parse_modes({kind: "off"})  # validates the name
        token = allowed_kinds.set(allowed_kinds.get() | frozenset(kinds))
        try:
            yield
        finally:
            allowed_kinds.reset(token)

    @contextlib.contextmanager
    def assert_max_queries(self, limit: int, name: str = "query budget") -> Iterator[Scope]:
        """Fail with :class:`QueryBudgetError` (listing the queries) if the block runs more
        than ``limit`` queries."""
        scope = Scope(self, name, modes=dict.fromkeys(FindingKind, "off"), capture_sites=True)
        with scope:
            yield scope
        if scope.query_count > limit:
            lines = [f"{name}: {scope.query_count} queries ran, the budget is {limit}:"]
            for q in scope.queries[:50]:
                lines.append(f"  {q.duration_ms:7.2f} ms  {' '.join(q.sql.split())[:140]}")
                if q.call_site:
                    lines.append(f"             at {q.call_site}")
            raise QueryBudgetError("\n".join(lines))

    def _finish(self, scope: Scope, *, raising: bool) -> None:
        if scope.pending_explains:
            # hotpath's own EXPLAIN queries belong to no scope (an enclosing one included)
            token = current_scope.set(None)
            try:
                explain_sync(self, scope.pending_explains)
            finally:
                current_scope.reset(token)
        self._conclude(scope, raising)

    async def _finish_async(self, scope: Scope, *, raising: bool) -> None:
        if scope.pending_explains:
            token = current_scope.set(None)
            try:
                await explain_async(self, scope.pending_explains)
            finally:
                current_scope.reset(token)
        self._conclude(scope, raising)

    def _conclude(self, scope: Scope, raising: bool) -> None:
        scope.findings = find_problems(scope, self)
        export_to_otel(scope)
        self._rollup(scope.name).add(
            scope.duration_ms, scope.query_count, scope.db_time_ms, scope.findings
        )
        to_raise: list[Finding] = []
        for finding in scope.findings:
            mode = scope.modes[finding.kind]
            if mode == "log":
                logger.warning("hotpath %s: %s", scope.name, finding.describe())
            elif mode == "warn":
                warnings.warn(f"{scope.name}: {finding.describe()}", HotpathWarning, stacklevel=4)
            elif mode == "raise":
                to_raise.append(finding)
        if to_raise and raising:
            raise ERRORS[to_raise[0].kind](to_raise)

    def _rollup(self, name: str) -> Rollup:
        with self._lock:
            rollup = self._rollups.get(name)
            if rollup is None:
                if len(self._rollups) >= self.max_names:
                    if OTHER_NAMES not in self._rollups:
                        logger.warning(
                            "hotpath: %d scope names rolled up; further names are counted as "
                            "%r (name scopes by route template, not raw path; or raise "
                            "Profiler(max_names=...))",
                            self.max_names,
                            OTHER_NAMES,
                        )
                    name = OTHER_NAMES
                    rollup = self._rollups.get(name)
                if rollup is None:
                    rollup = self._rollups[name] = Rollup()
            return rollup

    # -- function profiling --------------------------------------------------------------------

    @overload
    def profile(self, target: _F) -> _F: ...
    @overload
    def profile(self, target: str) -> _ProfileBlock: ...

    def profile(self, target: Any) -> Any:
        """Time a function (decorator, sync or async) or a block (``with profile("name")``)."""
        if callable(target):
            return _ProfileBlock(self, f"{target.__module__}.{target.__qualname__}")(target)
        return _ProfileBlock(self, str(target))

    def timing(self, name: str) -> Timing:
        with self._lock:
            timing = self._timings.get(name)
            if timing is None:
                timing = self._timings[name] = Timing()
            return timing

    def report(self) -> Report:
        """Roll-ups per scope name (latency percentiles, queries, findings) and functions."""
        return build_report(dict(self._rollups), dict(self._timings))

    def print_report(self) -> None:
        self.report().print()

    def reset(self) -> None:
        with self._lock:
            self._rollups.clear()
            self._timings.clear()

    # -- plans ---------------------------------------------------------------------------------

    def wants_explain(self, fingerprint: str) -> bool:
        if self.explain == "off":
            return False
        last = self._explained_at.get(fingerprint)
        return last is None or time.monotonic() - last > self.explain_interval_s

    def claim_explain(self, fingerprint: str) -> bool:
        """Reserve the right to EXPLAIN ``fingerprint`` now (per shape and per minute limits)."""
        now = time.monotonic()
        with self._lock:
            if not self.wants_explain(fingerprint):
                return False
            while self._recent_explains and now - self._recent_explains[0] > 60:
                self._recent_explains.popleft()
            if len(self._recent_explains) >= self.explain_per_minute:
                return False
            self._recent_explains.append(now)
            self._explained_at[fingerprint] = now
            return True

    def store_plan(
        self, fingerprint: str, plan: Any, flags: list[PlanFlag], analyzed: bool
    ) -> None:
        self._plans[fingerprint] = (plan, flags, analyzed)

    def plan_for(self, fingerprint: str) -> tuple[Any, list[PlanFlag], bool] | None:
        """(EXPLAIN JSON, flags, whether it was ANALYZEd) for a slow shape, once taken."""
        return self._plans.get(fingerprint)

    def plan_flags(self, fingerprint: str) -> list[PlanFlag]:
        entry = self._plans.get(fingerprint)
        return entry[1] if entry else []

    # -- listeners -------------------------------------------------------------------------------

    # Every listener fetches the current scope once and returns at once outside its own
    # scopes: that is the whole cost of an instrumented engine outside a scope. Inside another
    # profiler's scope (an app's middleware inside a test, say) it records into the nearest
    # scope of its own, and never into one that stopped recording (a task that outlived its
    # request, a background task after the response).

    @_guarded
    def _before_cursor_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        scope = current_scope.get()
        if scope is not None and scope.profiler is not self:
            scope = _own_scope(scope, self)
        if scope is not None and context is not None and scope.recording:
            context._hotpath_started = perf_counter()

    @_guarded
    def _after_cursor_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        scope = current_scope.get()
        if scope is not None and scope.profiler is not self:
            scope = _own_scope(scope, self)
        if scope is None or not scope.recording:
            return
        started = getattr(context, "_hotpath_started", None)
        if started is None:
            return
        duration_ms = (perf_counter() - started) * 1000
        rowcount = getattr(cursor, "rowcount", -1)
        token = context.execution_options.get(TOKEN)
        execution = None if token is None else scope.execution(token)
        engine = conn.engine
        url = engine.url
        scope.record_query(
            statement,
            parameters,
            duration_ms,
            rowcount if isinstance(rowcount, int) else -1,
            f"{url.host}:{url.port}",
            execution,
            engine,
            executemany,
        )
        if execution is not None and execution.lazy_key is not None:
            scope.lazy_statement(execution.lazy_key, statement)

    @_guarded
    def _on_before_flush(self, session: Session, flush_context: Any, instances: Any) -> None:
        scope = current_scope.get()
        if scope is not None and scope.profiler is not self:
            scope = _own_scope(scope, self)
        if scope is not None and scope.recording:
            scope.note_flush(session)

    def _binds_elsewhere(self, state: ORMExecuteState) -> bool:
        """Whether the ORM runs this statement on an engine this profiler was not given (the
        ORM events are global: every Session's executions reach this listener)."""
        if any(target is Engine for target in self._targets):
            return False  # instrumented with no engines: every engine is watched
        bind = state.session.get_bind(**state.bind_arguments)
        engine = getattr(bind, "engine", bind)
        return not any(engine is target for target in self._targets)

    @_guarded
    def _on_orm_execute(self, state: ORMExecuteState) -> None:
        scope = current_scope.get()
        if scope is not None and scope.profiler is not self:
            scope = _own_scope(scope, self)
        if scope is None or not scope.recording:
            return
        if self._binds_elsewhere(state):
            scope.note_foreign_session(state.session)
            return
        if scope.flushing():
            # the unit of work's own loads (cascades, dependency checks): not the app's loop
            state.update_execution_options(**{TOKEN: EAGER_TOKEN})
            return
        refreshed = state.load_options._refresh_state
        if refreshed is not None:
            # columns of an object already loaded (expired, deferred, a subclass's table, a
            # refresh): a reload, never a duplicate; one per object of one result is an N+1
            if not scope.tracks_n_plus_one:
                state.update_execution_options(**{TOKEN: EAGER_TOKEN})
                return
            token = next(self._tokens)
            scope.begin_execution(token, scope.note_column_load(refreshed, state))
            state.update_execution_options(**{TOKEN: token})
            return
        # ``loader_strategy_path`` once, rather than ``is_relationship_load`` (which computes
        # the compile options twice) and then the path again.
        path = state.loader_strategy_path if scope.tracks_n_plus_one else None
        if path is None or path.is_root:
            # A top-level query: its rows are tied to it through the load event's context,
            # so nothing to tag here; just make sure its collections are watched.
            mapper = state.bind_mapper
            if mapper is not None and mapper not in self._seen_mappers:
                self._seen_mappers.add(mapper)
                self._watch_collections(mapper)
            return
        parent = state.lazy_loaded_from
        chain = relationships(path) if parent is not None else ()
        if parent is None or not chain:
            # An eager relationship load (selectin, subquery): its queries only need to be
            # known as relationship loads, which one shared execution says for all of them.
            state.update_execution_options(**{TOKEN: EAGER_TOKEN})
            return
        if not self._load_listening:
            self._listen_for_loads()
        token = next(self._tokens)
        prop = chain[-1]
        origin = scope.origin_of(parent)
        execution = Execution((*scope.chain_of(origin), prop), relationship_load=True)
        execution.lazy_origin = ("lazy", origin, str(prop))
        execution.lazy_key = (origin, str(prop))
        scope.note_lazy_load(parent, prop, execution.chain)
        scope.begin_execution(token, execution)
        state.update_execution_options(**{TOKEN: token})

    def _watch_collections(self, mapper: Any) -> None:
        """Listen for collection creation on every collection reachable from ``mapper``."""
        pending = [mapper]
        while pending:
            for prop in pending.pop().relationships:
                if prop in self._watched:
                    continue
                attribute = prop.class_attribute
                listener = collection_listener(self, prop) if prop.uselist else None
                if listener is not None:
                    # raw + retval + include_key: SQLAlchemy then calls the listener as is,
                    # with the InstanceState, instead of through an adapter that looks up
                    # the object (which we would only turn back into its state).
                    event.listen(
                        attribute,
                        "init_collection",
                        listener,
                        raw=True,
                        retval=True,
                        include_key=True,
                    )
                self._watched[prop] = (attribute, listener)
                pending.append(prop.mapper)

    def _on_load(self, target: Any, context: Any) -> None:
        # Guarded inline rather than by _guarded: this runs for every row the ORM builds.
        try:
            if context is None:
                return  # merge(load=False), merge_frozen_result(load=False): no query
            token = context.execution_options.get(TOKEN)
            if not token:
                # Rows of top-level queries are traced through InstanceState.runid, and rows
                # of eager loads (EAGER_TOKEN, 0) need no tracing: only lazy-load rows go on.
                return
            scope = current_scope.get()
            if scope is not None and scope.profiler is not self:
                scope = _own_scope(scope, self)
            if scope is None or not scope.recording:
                return
            execution = scope.execution(token)
            if execution is not None:
                scope.note_relationship_run(context.runid, execution)
        except Exception:
            log_listener_bug("_on_load")


def _own_scope(scope: Scope | None, profiler: Profiler) -> Scope | None:
    """The nearest scope of ``profiler`` among ``scope`` and the scopes it is nested in."""
    while scope is not None and scope.profiler is not profiler:
        scope = scope.parent
    return scope


OTHER_NAMES = "<other names>"


class _ProfileBlock:
    """``profiler.profile("name")``: a context manager (sync/async) and a decorator."""

    def __init__(self, profiler: Profiler, name: str) -> None:
        self._timing = profiler.timing(name)
        self._started: list[float] = []

    def __enter__(self) -> _ProfileBlock:
        self._started.append(time.perf_counter())
        return self

    def __exit__(self, *_: object) -> None:
        self._timing.record_ms((time.perf_counter() - self._started.pop()) * 1000)

    async def __aenter__(self) -> _ProfileBlock:
        return self.__enter__()

    async def __aexit__(self, *_: object) -> None:
        self.__exit__()

    def __call__(self, fn: _F) -> _F:
        timing = self._timing
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    timing.record_ms((time.perf_counter() - started) * 1000)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timing.record_ms((time.perf_counter() - started) * 1000)

        return wrapper  # type: ignore[return-value]


AsyncFn = Callable[..., Awaitable[Any]]
