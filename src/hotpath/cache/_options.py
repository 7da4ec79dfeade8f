"""The options of a cache: one validated frozen object, built once by the constructor
(``Cache(l1, l2, options=..., **keywords)``, the same for ``AsyncCache``) and passed through
to the core as is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

from .._validate import with_keywords
from . import _checks as checks
from ._entry import check_namespace
from ._errors import CacheConfigError
from ._serialize import Serializer, resolve_serializer


class CacheKeywords(TypedDict, total=False):
    """The keyword options of ``Cache(...)`` and ``AsyncCache(...)``: each is a field of
    :class:`CacheOptions`, where its default and meaning are written once."""

    namespace: str
    default_ttl: float
    stale_ttl: float | None
    negative_ttl: float | None
    jitter: float
    xfetch_beta: float
    serializer: str | Serializer
    max_value_bytes: int
    wait_timeout: float | None
    refresh_workers: int


@dataclass(frozen=True)
class CacheOptions:
    """How a cache stores and serves, validated once.

    ``namespace`` prefixes every Redis key. ``default_ttl`` is how long a value is fresh; for
    ``stale_ttl`` more seconds (default half the ttl) it may still be served while one caller
    refreshes it or while the loader fails. ``None`` is cached for ``negative_ttl`` seconds.
    ``jitter`` spreads TTLs by +-that fraction; ``xfetch_beta`` scales probabilistic early
    refresh (0 turns it off). ``serializer``: ``"json"``, ``"msgpack"``, ``"pickle"`` or an
    object (kept resolved). ``max_value_bytes`` bounds an entry as stored. ``wait_timeout``:
    how long a caller waits for another process's load (default twice the L2 lease).
    ``refresh_workers`` is how many background refreshes run at once.
    """

    namespace: str = "hotpath"
    default_ttl: float = 300.0
    stale_ttl: float | None = None
    negative_ttl: float | None = 30.0
    jitter: float = 0.1
    xfetch_beta: float = 1.0
    serializer: str | Serializer = "json"
    max_value_bytes: int = 1 << 20
    wait_timeout: float | None = None
    refresh_workers: int = 2

    def __post_init__(self) -> None:
        # Normalised in place (floats, the serializer object): the object is frozen afterwards.
        checked = {
            "namespace": check_namespace(self.namespace),
            "default_ttl": checks.seconds(self.default_ttl, "default_ttl", example="300"),
            "jitter": checks.number(self.jitter, "jitter", low=0.0, high=1.0, example="0.1"),
            "xfetch_beta": checks.number(
                self.xfetch_beta, "xfetch_beta", low=0.0, high=math.inf, example="1.0"
            ),
            "serializer": resolve_serializer(self.serializer),
            "max_value_bytes": checks.count(
                self.max_value_bytes, "max_value_bytes", example="1 << 20"
            ),
            "refresh_workers": checks.count(self.refresh_workers, "refresh_workers", example="2"),
        }
        if self.stale_ttl is not None:
            checked["stale_ttl"] = checks.seconds(
                self.stale_ttl, "stale_ttl", zero=True, example="60"
            )
        if self.negative_ttl is not None:
            checked["negative_ttl"] = checks.seconds(
                self.negative_ttl, "negative_ttl", example="30"
            )
        if self.wait_timeout is not None:
            checked["wait_timeout"] = checks.seconds(
                self.wait_timeout, "wait_timeout", zero=True, example="10"
            )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def resolved_serializer(self) -> Serializer:
        """The serializer object (``serializer`` is always one once built)."""
        assert not isinstance(self.serializer, str)
        return self.serializer

    @classmethod
    def build(cls, options: CacheOptions | None, keywords: CacheKeywords) -> CacheOptions:
        """``options`` (or the defaults) with the ``keywords`` on top, validated once."""
        return with_keywords(cls, options, keywords, CacheConfigError, "a cache")
