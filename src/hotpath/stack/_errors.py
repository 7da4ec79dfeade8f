"""The one exception type of the local stack."""

from __future__ import annotations

from .._errors import HotpathError


class StackError(HotpathError, RuntimeError):
    """The local stack could not be set up, reached or stopped.

    The message always names the cause and the fix, so the CLI can print it as is.
    """
