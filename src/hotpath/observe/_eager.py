"""Unused eager loads: collections loaded up front (selectinload, joinedload, subqueryload)
that the scope never reads.

SQLAlchemy has no read event for attributes. When an eager loader creates a collection
inside a scope (the public ``init_collection`` event), that one collection object is given a
tracking subclass of its own class; its first read marks the relationship as used and puts
the original class back, so later reads cost nothing. Once one collection of a relationship
was read, the relationship is used and its later collections in the scope are not watched at
all. No SQLAlchemy class is modified.
Scalar (many-to-one) eager loads have no collection to watch and are not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._records import CallSite

# _sa_iterator: how SQLAlchemy's own code reads a collection (the collection adapter, the
# delete cascade of Session.delete, flush): a selectinload the cascade consumed was used
_READS_LIST = (
    "__iter__",
    "_sa_iterator",
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
    "_sa_iterator",
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
    "_sa_iterator",
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
TRACK_ATTR = "_hotpath_eager_group"  # a watched collection's group, in its __dict__
# reads that take no argument: their tracking method skips packing *args and **kwargs
_NO_ARGS = frozenset(
    (
        "__iter__",
        "_sa_iterator",
        "__len__",
        "__reversed__",
        "__repr__",
        "copy",
        "keys",
        "values",
        "items",
    )
)


@dataclass
class EagerGroup:
    """One eagerly loaded collection relationship within a scope."""

    relationship: str
    collections: int = 0
    used: bool = False
    call_site: CallSite | None = None
    suppressed: bool = False
    # the collection class last seen and its tracking class: a relationship's collections
    # almost always share one class, so watching one is an identity test and two assignments
    collection_class: type | None = None
    tracking_class: type | None = None


def _make_reader(name: str, original: type) -> Any:
    # ``original`` and its method are bound once per tracking class: the first read of each
    # watched collection then costs a dict pop and a class assignment, no MRO walk.
    method = getattr(original, name)

    def read(self: Any, *args: Any, **kwargs: Any) -> Any:
        group = self.__dict__.pop(TRACK_ATTR, None)
        self.__class__ = original
        if group is not None:
            group.used = True
        return method(self, *args, **kwargs)

    def read_no_args(self: Any) -> Any:
        group = self.__dict__.pop(TRACK_ATTR, None)
        self.__class__ = original
        if group is not None:
            group.used = True
        return method(self)

    reader = read_no_args if name in _NO_ARGS else read
    reader.__name__ = name
    return reader


# The tracking subclass of each collection class, or None when it can't be watched (not a
# list/set/dict, or instances without a ``__dict__`` to hold the group).
_tracking_classes: dict[type, type | None] = {}


def tracking_class(cls: type) -> type | None:
    """The tracking subclass of ``cls``, made once; None if its instances can't be watched."""
    try:
        return _tracking_classes[cls]
    except KeyError:
        pass
    reads: tuple[str, ...]
    if not cls.__dictoffset__:
        tracked = None
    else:
        if issubclass(cls, list):
            reads = _READS_LIST
        elif issubclass(cls, set):
            reads = _READS_SET
        elif issubclass(cls, dict):
            reads = _READS_DICT
        else:
            reads = ()
        namespace = {name: _make_reader(name, cls) for name in reads if hasattr(cls, name)}
        tracked = type(f"Tracked{cls.__name__}", (cls,), namespace) if reads else None
    _tracking_classes[cls] = tracked
    return tracked
