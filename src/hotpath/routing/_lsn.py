"""PostgreSQL WAL positions (LSNs): text form ``'16/B374D848'`` to a comparable integer and back."""

from __future__ import annotations

import re

from ._errors import TokenError

_MAX_HALF = 0xFFFFFFFF
# Exactly what PostgreSQL prints: two groups of 1-8 ASCII hex digits. Nothing else that
# int() would take (blanks, 0x prefixes, signs, underscores, fullwidth or other non-ASCII
# digits), so a value from a cookie is either a real position or refused.
_LSN_TEXT = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")
_SHOWN_CHARS = 40  # a hostile value is named, but never copied whole into an error or a log


def parse_lsn(text: str) -> int:
    """The integer position of an LSN written as PostgreSQL prints it (``'16/B374D848'``).

    Raises :class:`TokenError` for anything else (surrounding blanks included).
    """
    if not isinstance(text, str) or _LSN_TEXT.fullmatch(text) is None:
        raise TokenError(
            f"{shown(text)} is not a WAL position: pass a token from current_token() or "
            "SELECT pg_current_wal_lsn(), like '16/B374D848' (hex digits, no blanks or 0x)"
        )
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(position: int) -> str:
    """The PostgreSQL text form of an integer WAL position."""
    return f"{position >> 32:X}/{position & _MAX_HALF:X}"


def shown(value: object) -> str:
    """``repr(value)``, cut short: how a token from outside is named in errors and logs."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."
