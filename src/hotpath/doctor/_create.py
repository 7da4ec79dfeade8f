"""``hotpath advise --create``: build the suggested indexes (opt-in; doctor stays read-only).

Like Dexter's ``--create``: one creator at a time (a session advisory lock, taken without
waiting), each index looked for again just before it is built (another session may have
created it since the advice), built without blocking writes (``CONCURRENTLY``; on a
partitioned table each partition's index concurrently, then attached: :mod:`._ddl`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from ._advise import IndexSuggestion
from ._ddl import index_statements
from ._errors import DoctorError
from ._session import libpq_url

# one key for every hotpath creator, whichever database: pg_advisory_lock's bigint space
LOCK_KEY = 0x686F74_70617468  # "hotpath"

Outcome = Literal["created", "exists", "failed"]


@dataclass(frozen=True)
class Created:
    """What ``--create`` did with one suggestion: the statements it ran and how it ended."""

    ddl: str
    outcome: Outcome
    statements: tuple[str, ...] = ()
    detail: str = ""


def create_indexes(url: str, suggestions: list[IndexSuggestion]) -> list[Created]:
    """Create ``suggestions`` one after the other; a failure is reported and the next goes
    on (a failed CONCURRENTLY build leaves an invalid index: its DROP is in the detail)."""
    try:
        conn = psycopg.connect(libpq_url(url), autocommit=True, row_factory=dict_row)
    except psycopg.OperationalError as exc:
        raise DoctorError(f"cannot connect to create indexes: {_line(exc)}") from None
    with conn:
        locked = conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (LOCK_KEY,)).fetchone()
        if not locked or not locked["ok"]:
            raise DoctorError(
                "another hotpath advise --create holds the creation lock: wait for it to "
                "finish, then rerun"
            )
        try:
            return [_create(conn, s) for s in suggestions]
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def _create(conn: psycopg.Connection[dict[str, Any]], suggestion: IndexSuggestion) -> Created:
    cand = suggestion.candidate
    row = conn.execute("SELECT to_regclass(%s)::oid::int8 AS oid", (cand.table,)).fetchone()
    if row is None or row["oid"] is None:
        return Created(suggestion.ddl, "failed", detail=f"table {cand.table} no longer exists")
    oid = int(row["oid"])
    existing = _same_index(conn, oid, suggestion)
    if existing is not None:
        return Created(suggestion.ddl, "exists", detail=f"already there: {existing}")

    def rows(sql: str, params: Any = None) -> list[dict[str, Any]]:
        return conn.execute(sql, params).fetchall()

    statements = index_statements(rows, oid, cand.body, cand.name_parts)
    done: list[str] = []
    for statement in statements:
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            invalid = rows(
                "SELECT indexrelid::regclass::text AS name FROM pg_index"
                " WHERE indrelid = %s AND NOT indisvalid",
                (oid,),
            )
            cleanup = "; ".join(f"DROP INDEX CONCURRENTLY {r['name']}" for r in invalid)
            return Created(
                suggestion.ddl,
                "failed",
                tuple(done),
                f"{statement} failed: {_line(exc)}" + (f" — then: {cleanup}" if cleanup else ""),
            )
        done.append(statement)
    return Created(suggestion.ddl, "created", tuple(done))


def _same_index(
    conn: psycopg.Connection[dict[str, Any]], oid: int, suggestion: IndexSuggestion
) -> str | None:
    """The name of a valid index on the table with the suggestion's method, key columns,
    INCLUDE columns and predicate, if one exists now."""
    cand = suggestion.candidate
    for index in conn.execute(
        "SELECT i.indexrelid::regclass::text AS name, am.amname, i.indnkeyatts,"
        " pg_get_expr(i.indpred, i.indrelid, true) AS pred,"
        " array(SELECT pg_get_indexdef(i.indexrelid, k, true)"
        "  FROM generate_series(1, i.indnatts) k) AS cols"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_am am ON am.oid = c.relam WHERE i.indrelid = %s AND i.indisvalid",
        (oid,),
    ).fetchall():
        cols = [_bare(c) for c in index["cols"]]
        keys = int(index["indnkeyatts"])
        if (
            index["amname"] == cand.method
            and cols[:keys] == [_bare(c) for c in cand.columns]
            and set(cols[keys:]) == {_bare(c) for c in cand.include}
            and _bare(index["pred"] or "") == _bare(cand.where or "")
        ):
            return str(index["name"])
    return None


def _bare(text: str) -> str:
    """A column or predicate without quotes, parentheses, ASC or case: for comparing."""
    words = text.replace('"', "").replace("(", "").replace(")", "").lower().split()
    return " ".join(w for w in words if w != "asc")


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
