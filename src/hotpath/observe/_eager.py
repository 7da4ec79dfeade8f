"""Unused eager loads: collections loaded up front (selectinload, joinedload, subqueryload)
that the scope never reads.

SQLAlchemy has no read event for attributes. When an eager loader creates a collection
inside a scope (the public ``init_collection`` event), that one collection object is given a
tracking subclass of its own class; its first read marks the relationship as used and puts
the original class back, so later reads cost nothing. No SQLAlchemy class is modified.
Scalar (many-to-one) eager loads have no collection to watch and are not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._records import CallSite

_READS_LIST = (
    "__iter__",
    "__len__",
    "__getitem__",
    "__contains__",
    "__reversed__",
    "__eq__",
    "index",
    "count",
    "copy",
    "__repr__",
)
_READS_SET = (
    "__iter__",
    "__len__",
    "__contains__",
    "__eq__",
    "copy",
    "issubset",
    "issuperset",
    "union",
    "intersection",
    "difference",
    "__repr__",
)
_READS_DICT = (
    "__iter__",
    "__len__",
    "__getitem__",
    "__contains__",
    "__eq__",
    "keys",
    "values",
    "items",
    "get",
    "copy",
    "__repr__",
)
_TRACK_ATTR = "_hotpath_eager_group"


@dataclass
class EagerGroup:
    """One eagerly loaded collection relationship within a scope."""

    relationship: str
    collections: int = 0
    used: bool = False
    call_site: CallSite | None = None
    suppressed: bool = False


def _make_reader(name: str) -> Any:
    def read(self: Any, *args: Any, **kwargs: Any) -> Any:
        group = self.__dict__.pop(_TRACK_ATTR, None)
        original = type(self).__mro__[1]
        self.__class__ = original
        if group is not None:
            group.used = True
        return getattr(original, name)(self, *args, **kwargs)

    read.__name__ = name
    return read


_tracking_classes: dict[type, type] = {}


def _tracking_class(cls: type) -> type | None:
    tracked = _tracking_classes.get(cls)
    if tracked is None:
        reads: tuple[str, ...]
        if issubclass(cls, list):
            reads = _READS_LIST
        elif issubclass(cls, set):
            reads = _READS_SET
        elif issubclass(cls, dict):
            reads = _READS_DICT
        else:
            return None
        namespace = {name: _make_reader(name) for name in reads if hasattr(cls, name)}
        tracked = _tracking_classes[cls] = type(f"Tracked{cls.__name__}", (cls,), namespace)
    return tracked


def watch(collection: Any, group: EagerGroup) -> bool:
    """Make the first read of ``collection`` mark ``group`` used; False if it can't be watched."""
    tracked = _tracking_class(type(collection))
    if tracked is None or not hasattr(collection, "__dict__"):
        return False
    collection.__dict__[_TRACK_ATTR] = group
    collection.__class__ = tracked
    return True
