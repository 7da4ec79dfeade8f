# Generated from src/hotpath/routing/_async_reads.py by tools/async_to_sync.py: do not edit.
# Change the async source and run `make generate` (docs/contributing.md).
"""A routed read's on-the-spot read-your-writes check: has the chosen replica replayed the
token? (optionally waiting for it: a PL/pgSQL loop on the server, so no event loop blocks).

``_async_reads.py`` is the one source: it serves ``AsyncReplicaSet.connect()`` through the
nodes' ``AsyncEngine``\\ s. ``tools/async_to_sync.py`` writes ``_reads.py`` from it, against the
nodes' sync engines (``RoutedNode.bind``): ``ReplicaSet.connect()`` and the sessions of both
sets use that one (SQLAlchemy runs an ``AsyncSession``'s ``get_bind`` and ORM events in a
greenlet, where sync I/O is awaited).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ._config import SessionOptions
from ._probe import (
    CAP_POSITIONS_SQL,
    REPLAYED_SQL,
    is_connection_failure,
    note_read_failure,
    parse_position,
)
from ._replayed import wait_sql
from ._router import Route, RoutedNode, RouterCore

log = logging.getLogger("hotpath.routing")


def route_read(
    router: RouterCore,
    options: SessionOptions,
    token: int | None,
    exclude: Sequence[RoutedNode] = (),
) -> Route:
    """The node for a read now, ``token`` checked on the spot when the router asks for it."""
    route = router.choose_read(token, options.consistency, exclude)
    if not route.verify:
        return route
    assert token is not None
    router.counters["token checks"] += 1
    position: int | None = None
    try:
        with route.node.bind.connect() as conn:
            position = parse_position(conn.exec_driver_sql(REPLAYED_SQL).scalar())
            if position is None or position < token:
                # A token beyond the primary's position is cut to it before any wait.
                token = cap_token(router, token)
            if (position is None or position < token) and options.mode == "wait":
                router.counters["token waits"] += 1
                conn.exec_driver_sql(wait_sql(token, options.wait_timeout_s))
                position = parse_position(conn.exec_driver_sql(REPLAYED_SQL).scalar())
            conn.rollback()
    except Exception as exc:
        if not is_connection_failure(exc):
            raise
        note_read_failure(router, route.node, exc)
    return router.settle(route, position, token)


def cap_token(router: RouterCore, token: int) -> int:
    """``token``, or the primary's flushed position if the token is beyond its insert one (see
    :meth:`RouterCore.cap_token`). Asks the primary only when the token is beyond the last
    position its probes saw flushed (one below it was issued by it)."""
    known = router.history.latest
    if known is not None and token <= known:
        return token
    writer = router.writer
    try:
        with writer.bind.connect() as conn:
            inserted, flushed = conn.exec_driver_sql(CAP_POSITIONS_SQL).one()
            conn.rollback()
    except Exception as exc:  # the read falls back to the primary, as an uncapped token's
        log.debug("hotpath.routing: no primary position to cap a token with: %s", exc)
        return token
    primary, durable = parse_position(inserted), parse_position(flushed)
    if primary is None or durable is None:
        return token
    return router.cap_token(token, primary, durable)
