"""The cache's errors: each names the problem and the fix."""

from __future__ import annotations

from .._errors import HotpathError


class CacheError(HotpathError):
    """Base class of hotpath.cache's errors."""


class CacheConfigError(CacheError, ValueError):
    """A cache was configured with values that cannot work (a ``ValueError`` too, like the
    other components' configuration errors)."""


class CacheKeyError(CacheError):
    """A key, tag or key template cannot be used."""


class SerializationError(CacheError):
    """A value cannot be serialized (or a stored one cannot be read back)."""


class ValueTooLargeError(SerializationError):
    """A serialized value is over the cache's ``max_value_bytes``."""
