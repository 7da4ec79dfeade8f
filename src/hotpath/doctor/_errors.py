"""doctor's errors: each one line naming the problem and the fix."""

from __future__ import annotations

from .._errors import HotpathError


class DoctorError(HotpathError):
    """A database doctor cannot diagnose (bad URL, unreachable server, refused statement)."""
