"""PostgreSQL WAL positions (LSNs): text form ``'16/B374D848'`` to a comparable integer and back."""

from __future__ import annotations

from ._errors import TokenError

_MAX_HALF = 0xFFFFFFFF


def parse_lsn(text: str) -> int:
    """The integer position of an LSN written as PostgreSQL prints it (``'16/B374D848'``)."""
    high, sep, low = str(text).strip().partition("/")
    try:
        if not sep:
            raise ValueError(text)
        hi, lo = int(high, 16), int(low, 16)
    except ValueError:
        raise TokenError(
            f"{text!r} is not a WAL position: pass a token from current_token() or "
            "SELECT pg_current_wal_lsn(), like '16/B374D848'"
        ) from None
    if not (0 <= hi <= _MAX_HALF and 0 <= lo <= _MAX_HALF):
        raise TokenError(f"{text!r} is out of range for a WAL position: pass a real token")
    return (hi << 32) | lo


def format_lsn(position: int) -> str:
    """The PostgreSQL text form of an integer WAL position."""
    return f"{position >> 32:X}/{position & _MAX_HALF:X}"
