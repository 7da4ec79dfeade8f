"""hotpath.cache.orm: a cache that follows SQLAlchemy transactions.

``bind(sessions, cache)`` listens to a Session class, ``sessionmaker`` or
``async_sessionmaker`` (public ORM events only) and gives it two things:

- **Commit-aware writes.** :func:`invalidate_tags`, :func:`delete` and :func:`set` called on
  a session inside a transaction are queued and applied after COMMIT; a ROLLBACK (or a
  rolled-back SAVEPOINT) drops what was queued inside it.
- **Query-result caching.** ``select(...).execution_options(hotpath_cache=True)`` (or a
  :class:`CacheQuery` for a ttl and extra tags) caches the rows keyed by the statement and its
  parameters, tagged with every table the result came from (eager loads included). Any
  committed flush or ORM/Core DML through a bound session bumps those tables' versions, so
  cached queries are invalidated with no keys to name. Reads in a transaction with pending or
  flushed-but-uncommitted writes, or at an isolation level above READ COMMITTED, bypass the
  cache (they could see data no other transaction should cache).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Literal, TypeAlias

from pglast.visitors import Visitor
from sqlalchemy import event
from sqlalchemy.engine import Result
from sqlalchemy.engine.result import FrozenResult, IteratorResult, SimpleResultMetaData
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, SessionTransaction, sessionmaker
from sqlalchemy.orm.loading import merge_frozen_result
from sqlalchemy.sql.elements import ClauseElement, TextClause
from sqlalchemy.util import await_only, greenlet_spawn

from ._async import AsyncCache
from ._errors import CacheError, SerializationError
from ._orm_rows import (
    KEYS,
    TABLES,
    decode,
    encode,
    mapper_name,
    shape_id,
    statement_tables,
)
from ._sync import Cache

log = logging.getLogger("hotpath.cache")

OPTION: Final = "hotpath_cache"
"""The execution option that turns query caching on for a statement."""

_STATE_KEY: Final = "hotpath.cache.orm"
_SAFE_LEVELS: Final = frozenset({"READ COMMITTED", "READ UNCOMMITTED", "AUTOCOMMIT"})
_MAX_SHAPES: Final = 10_000

SessionTarget: TypeAlias = (
    type[Session] | sessionmaker[Any] | async_sessionmaker[Any] | Session | AsyncSession
)


def table_tag(table: str) -> str:
    """The tag every cached query reading ``table`` is stored under."""
    return f"table:{table}"


@dataclass(frozen=True, slots=True)
class CacheQuery:
    """Options of a cached query: ``execution_options(hotpath_cache=CacheQuery(ttl=60))``.

    ``tags`` are added to the table tags, so ``invalidate_tags`` can also drop the query.
    """

    ttl: float | None = None
    tags: tuple[str, ...] = ()


@dataclass
class QueryCacheStats:
    """What the query cache did: ``hits`` and ``misses`` count cached statements (the tiers'
    own counters are in ``cache.stats()``); ``bypassed`` ran uncached because the transaction
    had writes or a strict isolation level; ``unstorable`` could not be serialized."""

    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    unstorable: int = 0
    tables_invalidated: int = 0
    ops_applied: int = 0
    ops_dropped: int = 0
    ops_failed: int = 0  # cache operations that failed after a COMMIT (logged)


# The cache calls queued by this module's invalidate_tags / delete / set, run at COMMIT.
_CacheCall = Literal["tags", "delete", "set"]


@dataclass(slots=True)
class _Op:
    transaction: SessionTransaction
    # A queued cache call, or "tables": the tables a flush wrote (their table tags are
    # invalidated together at COMMIT, and they mark the transaction as one that wrote).
    kind: _CacheCall | Literal["tables"]
    args: tuple[Any, ...]


@dataclass
class _Pending:
    """What a session's open transaction will do to the cache when it commits."""

    ops: list[_Op] = field(default_factory=list)

    def has_writes(self) -> bool:
        return any(op.kind == "tables" for op in self.ops)


def _pending(session: Session) -> _Pending:
    found = session.info.get(_STATE_KEY)
    if found is None:
        found = session.info[_STATE_KEY] = _Pending()
    assert isinstance(found, _Pending)
    return found


def _sync_session(session: Session | AsyncSession) -> Session:
    return session.sync_session if isinstance(session, AsyncSession) else session


def _innermost(session: Session) -> SessionTransaction:
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:
        raise CacheError(
            "hotpath.cache.orm queues cache writes until COMMIT, but this session has no "
            "transaction; call it inside `with session.begin():` (or after a first query), "
            "or call the cache directly"
        )
    return transaction


def _queue(session: Session | AsyncSession, kind: _CacheCall, args: tuple[Any, ...]) -> None:
    sync = _sync_session(session)
    if _STATE_KEY + ".binding" not in sync.info and not _bound_via_class(sync):
        raise CacheError(
            "this session is not bound to a cache: call hotpath.cache.orm.bind(sessionmaker, "
            "cache) first"
        )
    _pending(sync).ops.append(_Op(_innermost(sync), kind, args))


def invalidate_tags(session: Session | AsyncSession, *tags: str) -> None:
    """Invalidate ``tags`` when the session's transaction commits (dropped on rollback)."""
    _queue(session, "tags", tags)


def delete(session: Session | AsyncSession, key: str) -> None:
    """Delete ``key`` when the session's transaction commits (dropped on rollback)."""
    _queue(session, "delete", (key,))


def set(  # the cache's own verb, shadowing the builtin in this module only
    session: Session | AsyncSession,
    key: str,
    value: Any,
    ttl: float | None = None,
    tags: Iterable[str] = (),
) -> None:
    """Write ``value`` through to the cache when the transaction commits (dropped on rollback)."""
    _queue(session, "set", (key, value, ttl, tuple(tags)))


_bindings_by_class: dict[type[Session], CacheBinding] = {}


def _bound_via_class(session: Session) -> bool:
    return any(isinstance(session, cls) for cls in _bindings_by_class)


def bind(target: SessionTarget, cache: Cache | AsyncCache, *, name: str = "") -> CacheBinding:
    """Make sessions of ``target`` cache-aware (see the module doc).

    ``target`` is a Session subclass, a ``sessionmaker``, an ``async_sessionmaker`` (its
    sessions get a private sync Session subclass to carry the events) or one session. Use an
    :class:`AsyncCache` with async sessions and a :class:`Cache` with sync ones. ``name``
    separates the query keys of different databases sharing a cache namespace.
    """
    return CacheBinding(target, cache, name=name)


class CacheBinding:
    """The listeners :func:`bind` installed; :meth:`unbind` removes them."""

    def __init__(self, target: SessionTarget, cache: Cache | AsyncCache, *, name: str) -> None:
        self.cache = cache
        self.name = name
        self.stats = QueryCacheStats()
        self._async = isinstance(cache, AsyncCache)
        self._target = self._event_target(target)
        self._shapes: dict[Any, tuple[str, frozenset[str]]] = {}
        self._learned: dict[str, frozenset[str]] = {}
        self._mappers: dict[str, Mapper[Any]] = {}
        self._listeners: list[tuple[str, Callable[..., Any]]] = [
            ("do_orm_execute", self._on_execute),
            ("after_flush", self._on_flush),
            ("after_commit", self._on_commit),
            ("after_soft_rollback", self._on_rollback),
            ("after_transaction_end", self._on_transaction_end),
        ]
        for name_, listener in self._listeners:
            # First in line: a query answered from the cache must not reach listeners that
            # would pick a node and connect for it (hotpath.routing's first-read placement).
            event.listen(self._target, name_, listener, insert=name_ == "do_orm_execute")

    def _event_target(self, target: SessionTarget) -> Any:
        if isinstance(target, async_sessionmaker):
            base = target.kw.get("sync_session_class", Session)
            subclass = type(f"HotpathCached{base.__name__}", (base,), {})
            target.kw["sync_session_class"] = subclass
            _bindings_by_class[subclass] = self
            return subclass
        if isinstance(target, AsyncSession):
            target.sync_session.info[_STATE_KEY + ".binding"] = self
            return target.sync_session
        if isinstance(target, Session):
            target.info[_STATE_KEY + ".binding"] = self
            return target
        if isinstance(target, sessionmaker):
            target.kw.setdefault("info", {})
            target.kw["info"] = {**target.kw["info"], _STATE_KEY + ".binding": self}
            return target
        if isinstance(target, type) and issubclass(target, Session):
            _bindings_by_class[target] = self
            return target
        raise CacheError(
            f"cannot bind {target!r}: pass a Session subclass, a sessionmaker, an "
            "async_sessionmaker or a session"
        )

    def unbind(self) -> None:
        for name_, listener in self._listeners:
            event.remove(self._target, name_, listener)
        for cls, binding in list(_bindings_by_class.items()):
            if binding is self:
                del _bindings_by_class[cls]

    # -- writes: what a transaction changed, applied at COMMIT -----------------------------

    def _note_tables(self, session: Session, tables: Iterable[str]) -> None:
        found = frozenset(tables)
        if found and session.in_transaction():
            _pending(session).ops.append(_Op(_innermost(session), "tables", (found,)))

    def _on_flush(self, session: Session, _flush_context: Any) -> None:
        tables: list[str] = []
        for obj in (*session.new, *session.dirty, *session.deleted):
            mapper = getattr(type(obj), "__mapper__", None)
            if mapper is None:
                continue
            tables.extend(str(t.fullname) for t in mapper.tables if hasattr(t, "fullname"))
            # Many-to-many rows live in secondary tables no mapper owns.
            for prop in mapper.relationships:
                secondary = prop.secondary
                if secondary is not None and hasattr(secondary, "fullname"):
                    tables.append(str(secondary.fullname))
        self._note_tables(session, tables)

    def _on_commit(self, session: Session) -> None:
        pending = session.info.pop(_STATE_KEY, None)
        if pending is None or not pending.ops:
            return
        tables: list[str] = []
        for op in pending.ops:
            if op.kind == "tables":
                tables.extend(op.args[0])
        if tables:
            self.stats.tables_invalidated += len(tables)
            self._apply_logged("tags", tuple(dict.fromkeys(table_tag(t) for t in tables)))
        for op in pending.ops:
            if op.kind != "tables":
                self.stats.ops_applied += 1
                self._apply_logged(op.kind, op.args)

    def _apply_logged(self, kind: _CacheCall, args: tuple[Any, ...]) -> None:
        """The database has committed: a cache operation that fails (a value too large or
        not serializable) is logged and the others still run, rather than raising out of
        ``commit()`` and skipping the rest."""
        try:
            self._apply(kind, args)
        except Exception as error:
            self.stats.ops_failed += 1
            log.error(
                "hotpath.cache.orm: after COMMIT, cache %s of %r failed: %r", kind, args[:1], error
            )

    def _apply(self, kind: _CacheCall, args: tuple[Any, ...]) -> None:
        cache = self.cache
        if kind == "tags":
            call: Any = cache.invalidate_tags(*args)
        elif kind == "delete":
            call = cache.delete(*args)
        else:
            call = cache.set(*args)
        if self._async:
            await_only(call)  # after_commit runs inside AsyncSession's greenlet

    def _on_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        """The outermost transaction ended without a COMMIT (which applied and cleared the
        queue first): by rollback, or by ``close()``, whose implicit rollback sends no
        ``after_soft_rollback``. Nothing queued in it may apply to a later transaction."""
        if transaction.parent is not None:
            return
        pending = session.info.pop(_STATE_KEY, None)
        if pending is not None:
            self.stats.ops_dropped += sum(1 for op in pending.ops if op.kind != "tables")

    def _on_rollback(self, session: Session, previous: SessionTransaction) -> None:
        pending = session.info.get(_STATE_KEY)
        if pending is None:
            return
        kept = [op for op in pending.ops if not _within(op.transaction, previous)]
        self.stats.ops_dropped += sum(
            1 for op in pending.ops if op.kind != "tables" and op not in kept
        )
        pending.ops = kept

    # -- reads: cached SELECTs -------------------------------------------------------------

    def _on_execute(self, state: ORMExecuteState) -> Result[Any] | None:
        if not state.is_select:
            if state.is_insert or state.is_update or state.is_delete:
                table = getattr(state.statement, "table", None)
                if table is not None and hasattr(table, "fullname"):
                    self._note_tables(state.session, [str(table.fullname)])
            elif isinstance(state.statement, TextClause):
                self._note_tables(state.session, _text_writes(state.statement.text))
            return None
        spec = state.execution_options.get(OPTION)
        if not spec or state.is_relationship_load or state.is_column_load:
            return None
        options = spec if isinstance(spec, CacheQuery) else CacheQuery()
        if not self._cacheable(state):
            self.stats.bypassed += 1
            return None
        identity = self._identity(state, options)
        if identity is None:
            self.stats.bypassed += 1
            return None
        key, tags, shape = identity
        return self._cached_result(state, key, tags, shape, options)

    def _cacheable(self, state: ORMExecuteState) -> bool:
        session = state.session
        if session.new or session.deleted or session.dirty:
            return False
        pending = session.info.get(_STATE_KEY)
        if pending is not None and pending.has_writes():
            return False
        bind = session.get_bind(mapper=state.bind_mapper)
        levels = [bind.get_execution_options().get("isolation_level")]
        # A level set for this transaction only (session.connection(execution_options=
        # {"isolation_level": ...})) lives on the connection the transaction holds.
        transaction = session.get_transaction()
        for held in getattr(transaction, "_connections", {}).values():
            levels.append(held[0].get_execution_options().get("isolation_level"))
        if levels[0] is None:
            levels[0] = getattr(bind.dialect, "default_isolation_level", None)
        return all(level is None or str(level).upper() in _SAFE_LEVELS for level in levels)

    def _identity(
        self, state: ORMExecuteState, options: CacheQuery
    ) -> tuple[str, tuple[str, ...], str] | None:
        statement = state.statement
        if not isinstance(statement, ClauseElement):
            return None
        cache_key = statement._generate_cache_key()
        if cache_key is None:
            return None  # SQLAlchemy cannot key this statement (e.g. a custom construct)
        shape, tables = self._shape(cache_key.key, statement)
        raw = state.parameters
        parameters: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {}
        if cache_key.bindparams:
            values = tuple(parameters.get(p.key, p.value) for p in cache_key.bindparams)
        else:
            values = tuple(parameters[k] for k in sorted(parameters))
        tables = tables | self._learned.get(shape, frozenset())
        # The same statement names other tables under another schema_translate_map (one
        # schema per tenant): from the statement, the session's binds or the engine.
        bind = state.session.get_bind(mapper=state.bind_mapper)
        translate = state.execution_options.get(
            "schema_translate_map"
        ) or bind.get_execution_options().get("schema_translate_map")
        schemas = sorted((str(k), str(v)) for k, v in (translate or {}).items())
        text = repr((self.name, shape, values, sorted(tables), schemas))
        key = "q:" + hashlib.blake2b(text.encode(), digest_size=20).hexdigest()
        tags = tuple(table_tag(t) for t in sorted(tables)) + options.tags
        return key, tags, shape

    def _shape(self, structure: Any, statement: Any) -> tuple[str, frozenset[str]]:
        # Statement objects differ per call but their cache-key structure does not (it is
        # what SQLAlchemy keys its own compiled cache by), so the digest and the table walk
        # run once per statement shape.
        found = self._shapes.get(structure)
        if found is None:
            found = (shape_id(structure), frozenset(statement_tables(statement)))
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.clear()
            self._shapes[structure] = found
        return found

    def _registry_mappers(self, state: ORMExecuteState) -> dict[str, Mapper[Any]]:
        if not self._mappers and state.all_mappers:
            for mapper in state.all_mappers[0].registry.mappers:
                self._mappers[mapper_name(mapper)] = mapper
        return self._mappers

    def _cached_result(
        self,
        state: ORMExecuteState,
        key: str,
        tags: tuple[str, ...],
        shape: str,
        options: CacheQuery,
    ) -> Result[Any]:
        live: list[tuple[Any, ...]] = []
        keys: list[str] = []
        loaded_here = False

        def load() -> dict[str, Any]:
            nonlocal loaded_here
            result = state.invoke_statement()
            keys.extend(str(k) for k in result.keys())  # noqa: SIM118 - quoted_name -> str
            if _requires_unique(result):
                result = result.unique()
            live.extend(tuple(row) for row in result.all())
            loaded_here = True
            return encode(keys, live)

        # stale=False: the loader runs this statement on the caller's Session, so it must
        # only ever run here and now, never as a background refresh in another thread.
        try:
            if self._async:
                assert isinstance(self.cache, AsyncCache)

                def async_load() -> Any:
                    return greenlet_spawn(load)

                data = await_only(
                    self.cache.get_or_set(key, async_load, options.ttl, tags, stale=False)
                )
            else:
                assert isinstance(self.cache, Cache)
                data = self.cache.get_or_set(key, load, options.ttl, tags, stale=False)
        except SerializationError as error:
            if not loaded_here:
                raise
            self.stats.unstorable += 1
            log.warning("hotpath.cache.orm: query result not cached: %s", error)
            return _result(keys, live)
        stored_tables = {table_tag(t) for t in data[TABLES]}
        if not stored_tables <= frozenset(tags):
            # Eager loads brought tables the statement does not name: key the shape with them
            # from now on (this entry was stored under too few tags and is never read again).
            self._learned[shape] = self._learned.get(shape, frozenset()) | frozenset(data[TABLES])
            if len(self._learned) > _MAX_SHAPES:
                self._learned.clear()
            if loaded_here:
                self.stats.misses += 1
                return _result(keys, live)
            self.stats.bypassed += 1
            return state.invoke_statement()
        if loaded_here:
            self.stats.misses += 1
            return _result(keys, live)
        try:
            rows = decode(data, self._registry_mappers(state))
        except KeyError:
            self._mappers.clear()  # a mapper configured after the first read: look again
            self.stats.bypassed += 1
            return state.invoke_statement()
        self.stats.hits += 1
        frozen = _result(data[KEYS], rows).freeze()
        merged: FrozenResult[Any] = merge_frozen_result(  # type: ignore[no-untyped-call]
            state.session, state.statement, frozen, load=False
        )
        return merged()


def _result(keys: Iterable[str], rows: list[tuple[Any, ...]]) -> Result[Any]:
    return IteratorResult(SimpleResultMetaData(list(keys)), iter(rows))


def _requires_unique(result: Result[Any]) -> bool:
    """Joined eager loads of collections repeat parent rows; the ORM makes callers call
    ``unique()`` (it marks such results with a filter that raises until they do)."""
    state = getattr(result, "_unique_filter_state", None)
    return state is not None and getattr(state[1], "__name__", "") == "require_unique"


def _within(transaction: SessionTransaction, ancestor: SessionTransaction) -> bool:
    current: SessionTransaction | None = transaction
    while current is not None:
        if current is ancestor:
            return True
        current = current.parent
    return False


@lru_cache(maxsize=4096)
def _text_writes(sql: str) -> tuple[str, ...]:
    """Tables a textual statement writes, by PostgreSQL's own parser (pglast), anywhere in it:
    every statement of the text, data-modifying CTEs, leading comments and parentheses
    included. A table is named both with and without the ``public`` schema, so it matches
    ``Table.fullname`` either way (an extra invalidation is harmless; a missed one is not)."""
    try:
        import pglast  # noqa: PLC0415 - only for textual statements

        statements = pglast.parse_sql(sql)
    except Exception:
        return ()
    finder = _WrittenTables()
    for raw in statements:
        if raw.stmt is not None:
            finder(raw.stmt)
    return tuple(dict.fromkeys(finder.tables))


class _WrittenTables(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[str] = []

    def _add(self, relation: Any) -> None:
        if relation is None:
            return
        name, schema = relation.relname, relation.schemaname
        if schema and schema != "public":
            self.tables.append(f"{schema}.{name}")
        else:
            self.tables.extend((name, f"public.{name}"))

    def visit_InsertStmt(self, ancestors: object, node: Any) -> None:
        self._add(node.relation)

    def visit_UpdateStmt(self, ancestors: object, node: Any) -> None:
        self._add(node.relation)

    def visit_DeleteStmt(self, ancestors: object, node: Any) -> None:
        self._add(node.relation)

    def visit_MergeStmt(self, ancestors: object, node: Any) -> None:
        self._add(node.relation)

    def visit_TruncateStmt(self, ancestors: object, node: Any) -> None:
        for relation in node.relations or ():
            self._add(relation)

    def visit_CopyStmt(self, ancestors: object, node: Any) -> None:
        if node.is_from:  # COPY ... FROM writes the table
            self._add(node.relation)
