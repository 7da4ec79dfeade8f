"""SQL text as hotpath shows it: literals replaced, so a secret written inline in a statement
never reaches a log, a report or an export (observe's findings, doctor's query lists)."""

from __future__ import annotations

import itertools
import re

from pglast import parser

# quoted strings and numbers: the fallback when PostgreSQL's parser cannot read the text
LITERALS = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b")
# psycopg's placeholders (and a literal %%), which PostgreSQL's parser does not read
PLACEHOLDERS = re.compile(r"%(?:\(\w+\))?s|%%")


def redact_literals(statement: str) -> str:
    """``statement`` with every literal replaced by ``$n`` (PostgreSQL's own normaliser), or
    by ``?`` through a regex when it cannot be parsed (text cut at 1 kB by
    pg_stat_activity, another dialect). Driver placeholders become ``$1``, ``$2``... in
    order, and the literals the numbers after them."""
    numbered = itertools.count(1)
    text = PLACEHOLDERS.sub(lambda m: "%" if m.group() == "%%" else f"${next(numbered)}", statement)
    try:
        return str(parser.normalize(text))
    except Exception:
        return LITERALS.sub("?", text)
