"""Statement shapes: pglast fingerprints (literals and IN-lists folded) and a few facts.

Driver placeholders (psycopg's ``%(name)s``/``%s``) are rewritten to ``$1`` first so that
PostgreSQL's parser accepts the statement; results are cached per statement string, since
an application runs the same few hundred statements over and over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from pglast import parser

from ..plans import StatementSafety, redact_literals, safety_of_tree
from ..plans._redact import LITERALS, PLACEHOLDERS


@dataclass(frozen=True)
class Shape:
    """What observe needs to know about a statement, computed once per statement string."""

    fingerprint: str
    is_select: bool
    has_limit: bool
    # A SELECT with no data-modifying CTE, no row lock and no INTO anywhere in it: may be
    # EXPLAIN ANALYZEd, if its functions are not volatile (``functions``, checked on the server)
    is_plain_select: bool
    explainable: bool = False  # exactly one SELECT/INSERT/UPDATE/DELETE/MERGE: EXPLAIN may run
    functions: frozenset[str] = frozenset()  # names of the functions it calls, lower case
    # the statement with its literals replaced by $n: what observe shows and exports (a
    # password written inline must not reach a log, a report or a trace)
    redacted: str = ""
    safety: StatementSafety | None = None  # hotpath.plans' verdict, shared with doctor


def _dollar_params(statement: str) -> str:
    return PLACEHOLDERS.sub(lambda m: "%" if m.group() == "%%" else "$1", statement)


@lru_cache(maxsize=16_384)
def shape_of(statement: str) -> Shape:
    text = _dollar_params(statement)
    redacted = redact_literals(statement)
    try:
        fingerprint = parser.fingerprint(text)
        tree = parser.parse_sql(text)
    except Exception:  # not PostgreSQL (or not parseable): fall back to a literal-free hash
        folded = LITERALS.sub("?", " ".join(text.split()).lower())
        digest = hashlib.sha1(folded.encode()).hexdigest()[:16]
        return Shape(digest, False, False, False, redacted=redacted)
    safety = safety_of_tree(tree, text)  # one statement, explainable, plain SELECT: shared rules
    stmt = tree[0].stmt if len(tree) == 1 else None
    is_select = type(stmt).__name__ == "SelectStmt"
    has_limit = is_select and getattr(stmt, "limitCount", None) is not None
    plain = safety.is_plain_select
    return Shape(
        fingerprint,
        is_select,
        has_limit,
        plain,
        safety.explainable,
        safety.functions,
        redacted,
        safety,
    )
