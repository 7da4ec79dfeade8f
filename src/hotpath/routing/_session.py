"""Routed ORM sessions: ``RoutingSession`` / ``RetryingRoutingSession`` and the sessionmakers.

Routing uses SQLAlchemy's public hooks: ``Session.get_bind`` sends flushes and writes to the
primary and reads to a replica (the transaction's node after its first read); ``after_commit``
reads the token on the session's own connection after COMMIT. ``RetryingRoutingSession`` (the
sessionmakers' default) adds a ``do_orm_execute`` hook that places the first read of a
transaction itself, so that a dead replica can be retried once elsewhere; SQLAlchemy builds an
``ORMExecuteState`` for every statement once such a hook exists (a few microseconds), hence
the plain class for ``retry_reads=False``. The async twin is ``AsyncSession`` with one of these
as ``sync_session_class``: the hooks run in its greenlet.
"""

from __future__ import annotations

from typing import Any, Union

from sqlalchemy import Connection, Engine, event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, sessionmaker

from ._async_replica_set import AsyncReplicaSet
from ._base import ReplicaSetBase, log
from ._config import Consistency, SessionOptions, TokenMode
from ._errors import ReplicaWriteError, RoutingConfigError
from ._probe import is_connection_failure
from ._replayed import write_position
from ._replica_set import ReplicaSet
from ._router import RoutedNode
from ._statements import is_write
from ._tokens import context_box


class RoutingSession(Session):
    """A ``Session`` whose reads go to replicas and whose writes go to the primary.

    ``writing=True`` sends everything to the primary from the first statement (read-modify-
    write on fresh data); ``readonly=True`` refuses writes before they leave the process.
    """

    def __init__(
        self,
        bind: Any = None,
        *,
        replicas: ReplicaSetBase,
        consistency: Consistency = "read_your_writes",
        mode: TokenMode = "fast",
        wait_timeout_s: float = 0.5,
        writing: bool = False,
        readonly: bool = False,
        **kw: Any,
    ) -> None:
        if bind is not None or kw.get("binds"):
            raise RoutingConfigError(
                "a routed session picks its own bind per statement: drop bind=/binds= "
                "(use replicas.primary_only() or Session(writing=True) to pin the primary)"
            )
        if not isinstance(replicas, ReplicaSetBase):
            raise RoutingConfigError(
                f"replicas={replicas!r}: pass a ReplicaSet (or AsyncReplicaSet) instance"
            )
        if writing and readonly:
            raise RoutingConfigError("writing=True and readonly=True contradict: pick one")
        super().__init__(**kw)
        self.replicas = replicas
        self._router = replicas.router
        self.routing = SessionOptions(consistency, mode, wait_timeout_s)
        self._strong = consistency == "strong"
        self.writing = writing
        self.readonly = readonly
        self._txn_writer: RoutedNode | None = None
        self._txn_reader: RoutedNode | None = None
        self._txn_nodes: set[str] = set()
        self._txn_connections: dict[Engine, Connection] = {}

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        bind: Any = None,
        **kw: Any,
    ) -> Union[Engine, Connection]:  # noqa: UP007 - matches Session.get_bind
        if bind is not None:
            return bind  # type: ignore[no-any-return]
        if clause is not None and not is_write(clause):
            return self._read_bind(self._read_node())
        return self._write_node(clause).bind

    def hotpath_engines(self) -> tuple[Engine, ...]:
        """Every engine this session can run a statement on (each server's bind), read
        without routing: ``get_bind`` chooses a server and counts the read, so a profiler
        asking it which engine a statement uses would count every read twice."""
        return tuple(node.bind for node in self._router.nodes)

    def close(self) -> None:
        """Close as ``Session.close``; a replica that died after serving reads is not an error.

        Ending a read-only replica transaction has nothing to lose, so a dropped connection
        there is invalidated instead of raised (a failed COMMIT still raises).
        """
        try:
            super().close()
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            self.invalidate()

    # -- routing ---------------------------------------------------------------------------

    def _write_node(self, clause: Any) -> RoutedNode:
        if self.readonly:
            verb = type(clause).__name__ if clause is not None else "a flush or connection()"
            raise ReplicaWriteError(
                f"this session is read-only (readonly=True) and was asked to write ({verb}): "
                "open the session without readonly=True, or write through replicas.connect()"
            )
        node = self._router.writer
        if self._txn_writer is None:
            self._txn_writer = node
        self._txn_nodes.add(node.name)
        return node

    def _pinned_node(self) -> RoutedNode | None:
        """The node this statement must use without a new choice, if any."""
        router = self._router
        if self._txn_writer is not None:
            return self._txn_writer  # reads after a write see it: same transaction
        if self.writing or self._strong or router.forced_primary():
            return router.writer
        return self._txn_reader  # one transaction reads one snapshot, on one node

    def _read_node(self, exclude: tuple[RoutedNode, ...] = ()) -> RoutedNode:
        pinned = self._pinned_node()
        if pinned is not None and pinned not in exclude:
            self._router.tally(pinned)
            if pinned is self._router.writer:
                # writing=True, primary_only(), strong: a read may write (SELECT a function
                # that does), so the COMMIT takes a token as after any write.
                self._txn_nodes.add(pinned.name)
            return pinned
        # The box of the context using the session now (a session may outlive a use_token()).
        token = context_box().position_for(self._router.server)
        node = self.replicas._route_read(self.routing, token, exclude).node
        self._txn_reader = node
        return node

    def _read_bind(self, node: RoutedNode) -> Engine:
        """The engine a read on ``node`` uses: read-only on the primary too when the session is."""
        return self.replicas._reading_bind(node) if self.readonly else node.bind

    def _reset(self) -> None:
        self._txn_writer = None
        self._txn_reader = None
        self._txn_nodes = set()
        self._txn_connections = {}


@event.listens_for(RoutingSession, "after_begin")
def _remember_connection(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    if isinstance(session, RoutingSession):
        session._txn_connections[connection.engine] = connection


class RetryingRoutingSession(RoutingSession):
    """A :class:`RoutingSession` that retries a transaction's first read once on another node
    when its replica cannot be reached (the default of the routed sessionmakers)."""


@event.listens_for(RetryingRoutingSession, "do_orm_execute")
def _place_read(state: ORMExecuteState) -> Any:
    """Place the first read of a transaction, so that a dead replica can be retried once.

    Later reads (pinned to the transaction's node) and writes are left to ``get_bind``: no
    second pass through the ORM's execute path for them.
    """
    session = state.session
    if (
        isinstance(session, RoutingSession)
        and session._txn_writer is None
        and session.autoflush
        and (session.new or session.dirty or session.deleted)
    ):
        # SQLAlchemy autoflushes after this hook: flush now, so that the read is placed after
        # the session's own writes (on the primary that has them), not before.
        session.flush()
    if (
        not isinstance(session, RoutingSession)
        or session._txn_reader is not None  # cheap checks first: this runs for every statement
        or session._txn_writer is not None
        or state.bind_arguments.get("bind") is not None
        or session._pinned_node() is not None
        or is_write(state.statement)
    ):
        return None
    node = session._read_node()
    bind = session._read_bind(node)
    if node is session._router.writer:
        session._txn_nodes.add(node.name)
        return state.invoke_statement(bind_arguments={"bind": bind})
    fresh_transaction = not session._txn_nodes
    try:
        # Connect first: a dead replica fails here, before joining the session's transaction.
        session.connection(bind_arguments={"bind": bind})
        session._txn_nodes.add(node.name)
        return state.invoke_statement(bind_arguments={"bind": bind})
    except Exception as exc:
        if not is_connection_failure(exc):
            raise
        session.replicas._note_read_failure(node, exc)
        joined = node.name in session._txn_nodes
        pristine = not (session.new or session.dirty or session.deleted)
        wrote = session._txn_writer is not None  # a flush reached the primary: never redo
        if wrote or (joined and not (fresh_transaction and pristine)):
            raise  # the transaction holds other work on that connection: not safe to redo
        if joined:
            session.rollback()  # nothing else happened in this transaction: start it again
        session._txn_reader = None
        retry = session._read_node(exclude=(node,))
        session._txn_nodes.add(retry.name)
        return state.invoke_statement(bind_arguments={"bind": session._read_bind(retry)})


@event.listens_for(RoutingSession, "after_commit")
def _take_token(session: Session) -> None:
    if not isinstance(session, RoutingSession) or session.readonly:
        return  # a read-only session wrote nothing, on a replica or on the primary
    writer = session._txn_writer
    if writer is None:
        current = session._router.writer
        if current.name not in session._txn_nodes:
            return  # the transaction only read replicas: nothing to wait for
        writer = current
    bind = writer.bind
    conn = session._txn_connections.get(bind)
    try:
        # The session's own connection, just committed (the session releases it right after):
        # no second checkout, so a full pool cannot deadlock here.
        usable = conn is not None and not conn.closed and not conn.invalidated
        position = write_position(conn if usable and conn is not None else bind)
    except Exception as exc:  # committed all the same; without a token reads may be stale
        log.warning("hotpath.routing: could not read the WAL position after COMMIT: %s", exc)
        return
    if position is not None:
        context_box().advance(position, session._router.server)


@event.listens_for(RoutingSession, "after_transaction_end")
def _end_transaction(session: Session, transaction: SessionTransaction) -> None:
    if isinstance(session, RoutingSession) and transaction.parent is None:
        session._reset()


def routed_sessionmaker(
    replicas: ReplicaSet,
    *,
    consistency: Consistency = "read_your_writes",
    mode: TokenMode = "fast",
    wait_timeout_s: float = 0.5,
    retry_reads: bool = True,
    **session_options: Any,
) -> sessionmaker[RoutingSession]:
    """A ``sessionmaker`` of :class:`RetryingRoutingSession` (``retry_reads=False``:
    :class:`RoutingSession`) on ``replicas``.

    ``consistency``: ``"read_your_writes"`` (a read goes to a replica that replayed this
    context's last commit, else the primary; ``mode="wait"`` waits up to ``wait_timeout_s`` for
    it first), ``"eventual"`` (any healthy replica) or ``"strong"`` (the primary).
    """
    SessionOptions(consistency, mode, wait_timeout_s)  # fail here, not at the first session
    _require(replicas, asynchronous=False)
    return sessionmaker(
        class_=RetryingRoutingSession if retry_reads else RoutingSession,
        replicas=replicas,
        consistency=consistency,
        mode=mode,
        wait_timeout_s=wait_timeout_s,
        **session_options,
    )


def async_routed_sessionmaker(
    replicas: AsyncReplicaSet,
    *,
    consistency: Consistency = "read_your_writes",
    mode: TokenMode = "fast",
    wait_timeout_s: float = 0.5,
    retry_reads: bool = True,
    **session_options: Any,
) -> async_sessionmaker[AsyncSession]:
    """The async twin of :func:`routed_sessionmaker`, for an :class:`AsyncReplicaSet`."""
    SessionOptions(consistency, mode, wait_timeout_s)
    _require(replicas, asynchronous=True)
    session_options.setdefault("expire_on_commit", False)
    return async_sessionmaker(
        class_=AsyncSession,
        sync_session_class=RetryingRoutingSession if retry_reads else RoutingSession,
        replicas=replicas,
        consistency=consistency,
        mode=mode,
        wait_timeout_s=wait_timeout_s,
        **session_options,
    )


def _require(replicas: object, *, asynchronous: bool) -> None:
    wanted, other = (AsyncReplicaSet, ReplicaSet) if asynchronous else (ReplicaSet, AsyncReplicaSet)
    if isinstance(replicas, wanted):
        return
    maker = "async_routed_sessionmaker" if asynchronous else "routed_sessionmaker"
    fix = (
        f"use {'routed_sessionmaker' if asynchronous else 'async_routed_sessionmaker'} for it"
        if isinstance(replicas, other)
        else f"pass a {wanted.__name__}"
    )
    raise RoutingConfigError(f"{maker}() got {type(replicas).__name__}: {fix}")
