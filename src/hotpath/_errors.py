"""The root of hotpath's exceptions: every one names the problem and the fix."""

from __future__ import annotations


class HotpathError(Exception):
    """Base class of hotpath's own errors; the CLI prints their message without a traceback."""
