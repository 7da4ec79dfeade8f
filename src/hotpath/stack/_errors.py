"""The one exception type of the local stack."""

from __future__ import annotations


class StackError(RuntimeError):
    """The local stack could not be set up, reached or stopped.

    The message always names the cause and the fix, so the CLI can print it as is.
    """
