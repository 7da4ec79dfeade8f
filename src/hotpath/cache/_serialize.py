"""Serializers: orjson by default (type-faithful), msgpack on request, pickle only on opt-in.

Values that JSON cannot express exactly (datetime, date, time, UUID, Decimal, bytes, tuple,
set, frozenset, dataclasses, ints beyond 64 bits, NaN and infinities) are tagged as
``{"$t": kind, "v": ...}`` when encoded and restored when decoded, so they round-trip
faithfully. Dataclasses are rebuilt only for classes this process has encoded or registered
(:func:`register_type`): a stored name never makes the reader import or call anything else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import math
import pickle
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
import orjson

from ._errors import CacheConfigError, SerializationError

_TAG = "$t"
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # the ints orjson and msgpack carry as numbers
_registered: dict[str, type[Any]] = {}


class Serializer(Protocol):
    """Encodes values to bytes and back; ``ident`` is stored with each entry (1-255)."""

    ident: int
    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


def register_type(cls: type[Any]) -> type[Any]:
    """Allow a dataclass to be rebuilt when read back (usable as a class decorator)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise CacheConfigError(f"{cls!r} is not a dataclass; only dataclasses can be registered")
    _registered[_type_name(cls)] = cls
    return cls


def _type_name(cls: type[Any]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _tag(value: Any) -> Any:
    """``value`` with the types JSON would lose replaced by tagged objects."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value if _INT_MIN <= value <= _INT_MAX else {_TAG: "int", "v": str(value)}
    if kind is float:  # orjson would write NaN and infinities as null
        return value if math.isfinite(value) else {_TAG: "float", "v": repr(value)}
    if kind is dict:
        if _TAG in value or any(type(k) is not str for k in value):
            return {_TAG: "map", "v": [[_tag(k), _tag(v)] for k, v in value.items()]}
        return {k: _tag(v) for k, v in value.items()}
    if kind is list:
        return [_tag(v) for v in value]
    if kind is tuple:
        return {_TAG: "tuple", "v": [_tag(v) for v in value]}
    if kind in (set, frozenset):
        return {_TAG: kind.__name__, "v": [_tag(v) for v in value]}
    if kind is dt.datetime:
        return {_TAG: "datetime", "v": value.isoformat()}
    if kind is dt.date:
        return {_TAG: "date", "v": value.isoformat()}
    if kind is dt.time:
        return {_TAG: "time", "v": value.isoformat()}
    if kind is uuid.UUID:
        return {_TAG: "uuid", "v": str(value)}
    if kind is decimal.Decimal:
        return {_TAG: "decimal", "v": str(value)}
    if kind is bytes:
        return {_TAG: "bytes", "v": value.hex()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        _registered.setdefault(_type_name(kind), kind)
        fields = {f.name: _tag(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_TAG: "dataclass", "c": _type_name(kind), "v": fields}
    raise SerializationError(
        f"cannot cache a {kind.__qualname__} with the json serializer; cache plain data "
        "(dict, list, str, numbers, datetime, UUID, Decimal, dataclasses) or pass "
        'serializer="msgpack" / a custom serializer'
    )


# orjson writes at most 255 levels, so a stored value nested deeper is not one hotpath wrote;
# refusing it also keeps the walk below far from Python's recursion limit.
_MAX_DEPTH = 256

_RESTORE: dict[str, Callable[[Any, int], Any]] = {
    "int": lambda v, _: int(v),
    "float": lambda v, _: float(v),
    "tuple": lambda v, d: tuple(_untag(x, d) for x in v),
    "set": lambda v, d: {_untag(x, d) for x in v},
    "frozenset": lambda v, d: frozenset(_untag(x, d) for x in v),
    "datetime": lambda v, _: dt.datetime.fromisoformat(v),
    "date": lambda v, _: dt.date.fromisoformat(v),
    "time": lambda v, _: dt.time.fromisoformat(v),
    "uuid": lambda v, _: uuid.UUID(v),
    "decimal": lambda v, _: decimal.Decimal(v),
    "bytes": lambda v, _: bytes.fromhex(v),
    "map": lambda v, d: {_untag(k, d): _untag(x, d) for k, x in v},
}


def _untag(value: Any, depth: int = 0) -> Any:
    kind = type(value)
    if kind is not list and kind is not dict:
        return value
    depth += 1
    if depth > _MAX_DEPTH:
        raise SerializationError(
            f"stored value is nested over {_MAX_DEPTH} levels deep, deeper than hotpath writes"
        )
    if kind is list:
        return [_untag(v, depth) for v in value]
    tag = value.get(_TAG)
    if tag is None:
        return {k: _untag(v, depth) for k, v in value.items()}
    if tag == "dataclass":
        cls = _registered.get(value["c"])
        if cls is None:
            raise SerializationError(
                f"stored value is a dataclass {value['c']} this process has not registered; "
                "call hotpath.cache.register_type(cls) at import time"
            )
        return cls(**{k: _untag(v, depth) for k, v in value["v"].items()})
    return _RESTORE[tag](value["v"], depth)


class JsonSerializer:
    """orjson with type tags; decoding walks the value only when the encoder tagged something."""

    ident = 1
    name = "json"

    def dumps(self, value: Any) -> bytes:
        try:
            body = orjson.dumps(_tag(value))
        except orjson.JSONEncodeError as error:  # e.g. nested too deep
            raise SerializationError(f"cannot cache this value as JSON: {error}") from error
        # One leading byte says whether the body holds tags, so plain JSON decodes at C speed.
        # '"$t":' can only be a key: quotes inside strings are escaped, and user dicts that
        # have a "$t" key are themselves encoded as tagged maps.
        return (b"T" if b'"$t":' in body else b"J") + body

    def loads(self, data: bytes) -> Any:
        value = orjson.loads(memoryview(data)[1:])
        return _untag(value) if data[:1] == b"T" else value


_EXT_TAGGED = 1


class MsgpackSerializer:
    """msgpack, with the same type tags as JSON carried in one extension type."""

    ident = 2
    name = "msgpack"

    def dumps(self, value: Any) -> bytes:
        packed: bytes = msgpack.packb(
            value, default=self._default, use_bin_type=True, strict_types=True
        )
        return packed

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=self._ext_hook, raw=False, strict_map_key=False)

    @staticmethod
    def _default(value: Any) -> Any:
        return msgpack.ExtType(_EXT_TAGGED, orjson.dumps(_tag(value)))

    @staticmethod
    def _ext_hook(code: int, data: bytes) -> Any:
        if code != _EXT_TAGGED:
            raise SerializationError(f"unknown msgpack extension {code} in a cached value")
        return _untag(orjson.loads(data))


class PickleSerializer:
    """pickle: any Python object, but reading it runs code; only with ``serializer="pickle"``."""

    ident = 3
    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


def resolve_serializer(spec: str | Serializer) -> Serializer:
    """``"json"`` (default), ``"msgpack"``, ``"pickle"`` (explicit opt-in) or an object."""
    if not isinstance(spec, str):
        if not 1 <= spec.ident <= 255:
            raise CacheConfigError("a custom serializer's ident must be in 1..255")
        return spec
    chosen: dict[str, Callable[[], Serializer]] = {
        "json": JsonSerializer,
        "msgpack": MsgpackSerializer,
        "pickle": PickleSerializer,
    }
    if spec not in chosen:
        raise CacheConfigError(
            f"unknown serializer {spec!r}; use 'json' (default), 'msgpack', or 'pickle' "
            "(only if every writer to this Redis is trusted)"
        )
    return chosen[spec]()
