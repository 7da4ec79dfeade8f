"""``Profiler``: instruments engines and sessions through SQLAlchemy's public events (and,
process-wide, the clients a request waits on) and hands out scopes. Its options are one
:class:`ObserveSettings`; what it shares with its scopes (plans, roll-ups, the conclusion
step) is a :class:`~hotpath.observe._recorder.Recorder`."""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, overload

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapper, ORMExecuteState, Session

from . import _hooks, _statements
from ._errors import ObserveConfigError, QueryBudgetError
from ._plans import Plan
from ._recorder import Recorder
from ._records import FindingKind, Mode
from ._report import Report, Timing
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
from ._settings import ObserveSettings, parse_modes
from ._snapshot import snapshot

TOKEN = "hotpath_observe"  # execution option tying rows to the ORM execution that loaded them
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


class Profiler:
    """Capture every query of a scope, find N+1s, duplicates, slow and unbounded queries,
    and where each request's whole time goes.

    >>> profiler = Profiler(engine, slow_query_ms=50, explain="plan")   # doctest: +SKIP
    >>> with profiler.scope("GET /orders/{id}") as scope:               # doctest: +SKIP
    ...     handle_request()
    >>> scope.findings, scope.breakdown_ms                               # doctest: +SKIP
    >>> profiler.report().print()                                        # doctest: +SKIP

    Options are the fields of :class:`ObserveSettings`, as keywords or as ``settings=``.
    With no engines, ``instrument()`` listens on every ``Engine``. Outside a scope the
    listeners and hooks return at once.
    """

    def __init__(
        self,
        *engines: Engine | AsyncEngine,
        settings: ObserveSettings | None = None,
        modes: Mapping[str, Mode] | None = None,
        **options: Any,
    ) -> None:
        if settings is not None and (options or modes):
            raise ObserveConfigError(
                "give the options either as settings=ObserveSettings(...) or as keywords, not both"
            )
        if settings is None:
            try:
                settings = ObserveSettings(modes=parse_modes(modes), **options)
            except TypeError as exc:
                known = ", ".join(sorted(ObserveSettings.__dataclass_fields__))
                raise ObserveConfigError(f"{exc}; the options are: {known}") from None
        self.settings = settings
        self._recorder = Recorder(settings)
        self._targets: list[Any] = []
        # relationship property -> (its class attribute, its init_collection listener or None)
        self._watched: dict[Any, tuple[Any, Callable[..., None] | None]] = {}
        self._seen_mappers: set[Any] = set()
        self._orm_listening = False
        self._load_listening = False
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        if engines:
            self.instrument(*engines)

    @property
    def modes(self) -> Mapping[FindingKind, Mode]:
        return self.settings.modes

    # -- instrumentation -------------------------------------------------------------------

    def instrument(self, *engines: Engine | AsyncEngine) -> Profiler:
        """Listen on ``engines`` (every Engine when none are given) and on ORM sessions.

        Idempotent: instrumenting the same engine twice adds no second listener, and once
        every Engine is listened to, single engines are covered (never counted twice).
        """
        if not engines and not any(t is Engine for t in self._targets):
            self._remove_engine_listeners()  # the class-wide listener covers them
        targets: tuple[Any, ...] = engines or (Engine,)
        for target in targets:
            sync = target.sync_engine if isinstance(target, AsyncEngine) else target
            if any(sync is t or t is Engine for t in self._targets):
                continue
            _statements.watch(None if sync is Engine else sync, self._statement)
            self._targets.append(sync)
        if not self._orm_listening:
            event.listen(Session, "do_orm_execute", self._on_orm_execute)
            event.listen(Session, "before_flush", self._on_before_flush)
            self._orm_listening = True
        _hooks.install()
        return self

    def _listen_for_loads(self) -> None:
        # Per-instance ``load`` events cost a call for every row the ORM builds; they are only
        # needed to follow rows produced by lazy loads, so they start with the first one seen.
        with self._lock:
            if not self._load_listening and self._orm_listening:
                event.listen(Mapper, "load", self._on_load)
                self._load_listening = True

    def _remove_engine_listeners(self) -> None:
        for target in self._targets:
            _statements.unwatch(None if target is Engine else target, self._statement)
        self._targets.clear()

    def uninstrument(self) -> None:
        """Remove every listener this profiler added (the process-wide I/O hooks stay: one
        ContextVar read per call outside scopes)."""
        self._remove_engine_listeners()
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
            return Scope(self._recorder, name)
        return Scope(self._recorder, name, modes=parse_modes(modes, base=self.settings.modes))

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
        scope = Scope(
            self._recorder, name, modes=dict.fromkeys(FindingKind, "off"), capture_sites=True
        )
        with scope:
            yield scope
        if scope.query_count > limit:
            lines = [f"{name}: {scope.query_count} queries ran, the budget is {limit}:"]
            for q in scope.queries[:50]:
                lines.append(f"  {q.duration_ms:7.2f} ms  {' '.join(q.sql.split())[:140]}")
                if q.call_site:
                    lines.append(f"             at {q.call_site}")
            raise QueryBudgetError("\n".join(lines))

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
        return self._recorder.rollups.timing(name)

    def report(self) -> Report:
        """Per scope name: latency, where the time goes by layer, the bottleneck and the
        ranked fixes; across names, the top fixes of the whole app; profiled functions."""
        return self._recorder.rollups.report()

    def print_report(self) -> None:
        self.report().print()

    def reset(self) -> None:
        self._recorder.rollups.clear()

    def snapshot(self) -> dict[str, Any]:
        """Everything rolled up so far, as JSON-able data another process can merge
        (:func:`merge_reports`): how ``hotpath run`` makes one report of many workers."""
        return snapshot(self._recorder.rollups)

    def plan_for(self, fingerprint: str) -> Plan | None:
        """(EXPLAIN JSON, flags, whether it was ANALYZEd) for a slow shape, once taken."""
        return self._recorder.plans.get(fingerprint)

    # -- listeners -------------------------------------------------------------------------------

    # Every listener fetches the current scope once and returns at once outside its own
    # scopes: that is the whole cost of an instrumented engine outside a scope. Inside another
    # profiler's scope (an app's middleware inside a test, say) it records into the nearest
    # scope of its own, and never into one that stopped recording (a task that outlived its
    # request, a background task after the response).

    # Told of every statement of its engines run inside a scope (``_statements``): guarded
    # inline (like _on_load), not by _guarded, whose wrapper was a third of its cost.

    def _statement(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
        started: float,
        ended: float,
    ) -> None:
        try:
            scope = current_scope.get()
            if scope is not None and scope.recorder is not self._recorder:
                scope = _own_scope(scope, self._recorder)
            if scope is None or not scope.recording:
                return
            rowcount = getattr(cursor, "rowcount", -1)
            token = context.execution_options.get(TOKEN)
            execution = None if token is None else scope._execution(token)
            connection = context.root_connection
            scope._record_query(
                statement,
                parameters,
                started,
                ended,
                rowcount if isinstance(rowcount, int) else -1,
                execution,
                connection.engine,
                executemany,
                id(connection),
                cursor,
            )
            if execution is not None and execution.lazy_key is not None:
                scope._lazy_statement(execution.lazy_key, statement, (ended - started) * 1000)
        except Exception:
            log_listener_bug("_statement")

    @_guarded
    def _on_before_flush(self, session: Session, flush_context: Any, instances: Any) -> None:
        scope = current_scope.get()
        if scope is not None and scope.recorder is not self._recorder:
            scope = _own_scope(scope, self._recorder)
        if scope is not None and scope.recording:
            scope._note_flush(session)

    def _binds_elsewhere(self, state: ORMExecuteState) -> bool:
        """Whether the ORM runs this statement on an engine this profiler was not given (the
        ORM events are global: every Session's executions reach this listener)."""
        targets = self._targets
        if Engine in targets:
            return False  # instrumented with no engines: every engine is watched
        session = state.session
        # a routing session names its engines: its get_bind would choose a replica and count
        # a read that the statement's own routing counts again
        engines = getattr(session, "hotpath_engines", None)
        binds = engines() if engines is not None else (session.get_bind(**state.bind_arguments),)
        # loops, not any() over generators: this runs per ORM execution. ``in`` compares
        # engines by identity (Engine defines no __eq__)
        for bind in binds:  # noqa: SIM110 - all() over a generator is a call more
            if getattr(bind, "engine", bind) in targets:
                return False
        return True

    @_guarded
    def _on_orm_execute(self, state: ORMExecuteState) -> None:
        scope = current_scope.get()
        if scope is not None and scope.recorder is not self._recorder:
            scope = _own_scope(scope, self._recorder)
        if scope is None or not scope.recording:
            return
        if self._binds_elsewhere(state):
            scope._note_foreign_session(state.session)
            return
        if scope._flushing():
            # the unit of work's own loads (cascades, dependency checks): not the app's loop
            state.update_execution_options(**{TOKEN: EAGER_TOKEN})
            return
        if not state.is_select:
            # text(), ORM insert/update/delete: no rows of mapped objects to follow (and no
            # load options: SQLAlchemy raises on reading them)
            return
        refreshed = state.load_options._refresh_state
        if refreshed is not None:
            # columns of an object already loaded (expired, deferred, a subclass's table, a
            # refresh): a reload, never a duplicate; one per object of one result is an N+1
            if not scope.tracks_n_plus_one:
                state.update_execution_options(**{TOKEN: EAGER_TOKEN})
                return
            token = next(self._tokens)
            scope._begin_execution(token, scope._note_column_load(refreshed, state))
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
        origin = scope._origin_of(parent)
        execution = Execution((*scope._chain_of(origin), prop), relationship_load=True)
        execution.lazy_origin = ("lazy", origin, str(prop))
        execution.lazy_key = (origin, str(prop))
        scope._note_lazy_load(parent, prop, execution.chain)
        scope._begin_execution(token, execution)
        state.update_execution_options(**{TOKEN: token})

    def _watch_collections(self, mapper: Any) -> None:
        """Listen for collection creation on every collection reachable from ``mapper``."""
        pending = [mapper]
        while pending:
            for prop in pending.pop().relationships:
                if prop in self._watched:
                    continue
                attribute = prop.class_attribute
                listener = collection_listener(self._recorder, prop) if prop.uselist else None
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
            if scope is not None and scope.recorder is not self._recorder:
                scope = _own_scope(scope, self._recorder)
            if scope is None or not scope.recording:
                return
            execution = scope._execution(token)
            if execution is not None:
                scope._note_relationship_run(context.runid, execution)
        except Exception:
            log_listener_bug("_on_load")


def _own_scope(scope: Scope | None, recorder: Recorder) -> Scope | None:
    """The nearest scope of ``recorder``'s profiler among ``scope`` and its parents."""
    while scope is not None and scope.recorder is not recorder:
        scope = scope.parent
    return scope


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
