"""Statement shapes: pglast fingerprints (literals and IN-lists folded) and a few facts.

Driver placeholders (psycopg's ``%(name)s``/``%s``) are rewritten to ``$1`` first so that
PostgreSQL's parser accepts the statement; results are cached per statement string, since
an application runs the same few hundred statements over and over.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from pglast import parser

_PLACEHOLDER = re.compile(r"%(?:\(\w+\))?s|%%")
_LITERALS = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b")


@dataclass(frozen=True)
class Shape:
    """What observe needs to know about a statement, computed once per statement string."""

    fingerprint: str
    is_select: bool
    has_limit: bool
    is_plain_select: bool  # no data-modifying CTE, no FOR UPDATE: safe to EXPLAIN ANALYZE


def _dollar_params(statement: str) -> str:
    return _PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else "$1", statement)


@lru_cache(maxsize=16_384)
def shape_of(statement: str) -> Shape:
    text = _dollar_params(statement)
    try:
        fingerprint = parser.fingerprint(text)
        tree = parser.parse_sql(text)
    except Exception:  # not PostgreSQL (or not parseable): fall back to a literal-free hash
        folded = _LITERALS.sub("?", " ".join(text.split()).lower())
        return Shape(hashlib.sha1(folded.encode()).hexdigest()[:16], False, False, False)
    if len(tree) != 1:
        return Shape(fingerprint, False, False, False)
    stmt = tree[0].stmt
    is_select = type(stmt).__name__ == "SelectStmt"
    has_limit = is_select and getattr(stmt, "limitCount", None) is not None
    plain = is_select and not getattr(stmt, "lockingClause", None) and not _writes_in_ctes(stmt)
    return Shape(fingerprint, is_select, has_limit, plain)


def _writes_in_ctes(stmt: object) -> bool:
    with_clause = getattr(stmt, "withClause", None)
    if not with_clause:
        return False
    return any(type(cte.ctequery).__name__ != "SelectStmt" for cte in with_clause.ctes or ())
