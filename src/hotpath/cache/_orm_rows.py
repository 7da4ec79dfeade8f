"""ORM query results as plain data and back: what ``hotpath.cache.orm`` stores.

A cached result must be readable by any process and must never make the reader run code
(no pickle), so ORM instances are stored as their mapper's name, the column values that
were loaded and the relationships that were loaded (as references into the same result, so
cycles such as ``Order.user`` / ``User.orders`` are kept). Reading rebuilds *detached*
instances of mappers of the session's registry only, which the session then merges without
a query (``load=False``); relationships that were eagerly loaded come back loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Mapper, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_dict, instance_state, set_committed_value
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ClauseElement

ROWS, KEYS, OBJECTS, MAPPERS, TABLES = "rows", "keys", "objects", "mappers", "tables"


def mapper_name(mapper: Mapper[Any]) -> str:
    cls = mapper.class_
    return f"{cls.__module__}.{cls.__qualname__}"


def statement_tables(statement: ClauseElement) -> set[str]:
    """Every table a statement reads: FROM, JOIN, subqueries, CTEs, and the tables its loader
    options (``selectinload(User.orders).joinedload(Order.items)``) will load from.

    Loader options are read through their paths (``Load.context``, not a documented API): if
    that ever changes, relationships loaded by them are learned from the first result instead.
    """
    tables = {str(e.fullname) for e in visitors.iterate(statement) if isinstance(e, Table)}
    for option in getattr(statement, "_with_options", ()):
        for element in getattr(option, "context", ()):
            for step in getattr(getattr(element, "path", None), "path", ()):
                if isinstance(step, Mapper):
                    tables.update(str(t.fullname) for t in step.tables if isinstance(t, Table))
                elif isinstance(getattr(step, "secondary", None), Table):
                    tables.add(str(step.secondary.fullname))
    return tables


def shape_id(structure: object) -> str:
    """A digest of a statement's cache-key structure that is the same in every process:
    classes, mappers, tables and columns by name instead of by identity."""
    parts: list[str] = []
    _flatten(structure, parts)
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


def _flatten(value: object, out: list[str]) -> None:
    if isinstance(value, tuple | list):
        out.append("(")
        for item in value:
            _flatten(item, out)
        out.append(")")
    elif value is None or isinstance(value, str | int | float | bool):
        out.append(repr(value))
    elif isinstance(value, type):
        out.append(f"{value.__module__}.{value.__qualname__}")
    elif isinstance(value, Mapper):
        out.append("M:" + mapper_name(value))
    elif isinstance(value, Table):
        out.append("T:" + value.fullname)
    else:
        name = getattr(value, "key", None) or getattr(value, "name", None)
        out.append(f"{type(value).__qualname__}:{name if isinstance(name, str) else ''}")


class _Encoder:
    def __init__(self) -> None:
        self.objects: list[list[Any]] = []
        self.mappers: list[str] = []
        self.tables: set[str] = set()
        self._mapper_index: dict[str, int] = {}
        self._seen: dict[int, int] = {}

    def ref(self, obj: object) -> int:
        found = self._seen.get(id(obj))
        if found is not None:
            return found
        state = instance_state(obj)
        mapper = state.mapper
        index = len(self.objects)
        self._seen[id(obj)] = index
        slot: list[Any] = [self._mapper(mapper), {}, {}]
        self.objects.append(slot)
        self.tables.update(str(t.fullname) for t in mapper.tables if isinstance(t, Table))
        loaded = instance_dict(obj)
        slot[1] = {str(a.key): loaded[a.key] for a in mapper.column_attrs if a.key in loaded}
        relations: dict[str, Any] = {}
        for prop in mapper.relationships:
            if prop.key not in loaded:
                continue  # not loaded: it will lazy load, as it would have without the cache
            value = loaded[prop.key]
            # An empty or None relationship is data too: a row inserted there later must
            # invalidate this result, so its tables count even when nothing was loaded.
            self.tables.update(str(t.fullname) for t in prop.mapper.tables if isinstance(t, Table))
            if prop.secondary is not None and isinstance(prop.secondary, Table):
                self.tables.add(str(prop.secondary.fullname))
            if value is None:
                relations[str(prop.key)] = None
            elif prop.uselist:
                relations[str(prop.key)] = [self.ref(item) for item in value]
            else:
                relations[str(prop.key)] = self.ref(value)
        slot[2] = relations
        return index

    def _mapper(self, mapper: Mapper[Any]) -> int:
        name = mapper_name(mapper)
        index = self._mapper_index.get(name)
        if index is None:
            index = self._mapper_index[name] = len(self.mappers)
            self.mappers.append(name)
        return index


def encode(keys: Sequence[str], rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """Rows of an ORM result as plain data; each row is ``[cells, entity positions]``."""
    encoder = _Encoder()
    encoded: list[list[Any]] = []
    for row in rows:
        cells: list[Any] = []
        entities: list[int] = []
        for position, cell in enumerate(row):
            if cell is not None and _is_instance(cell):
                entities.append(position)
                cells.append(encoder.ref(cell))
            else:
                cells.append(cell)
        encoded.append([cells, entities])
    return {
        KEYS: list(keys),
        ROWS: encoded,
        OBJECTS: encoder.objects,
        MAPPERS: encoder.mappers,
        TABLES: sorted(encoder.tables),
    }


def _is_instance(value: object) -> bool:
    return hasattr(type(value), "_sa_class_manager")


def decode(data: Mapping[str, Any], mappers: Mapping[str, Mapper[Any]]) -> list[tuple[Any, ...]]:
    """Rows with detached instances, ready for ``Session.merge(load=False)``; KeyError if a
    stored mapper is not in ``mappers`` (then the caller runs the query instead)."""
    kinds = [mappers[name] for name in data[MAPPERS]]
    stored = data[OBJECTS]
    built = [kinds[mapper_index].class_manager.new_instance() for mapper_index, _, _ in stored]
    for obj, (_, columns, _) in zip(built, stored, strict=True):
        for key, value in columns.items():
            set_committed_value(obj, key, value)
    for obj, (_, _, relations) in zip(built, stored, strict=True):
        for key, value in relations.items():
            if value is None:
                set_committed_value(obj, key, None)
            elif isinstance(value, list):
                set_committed_value(obj, key, [built[i] for i in value])
            else:
                set_committed_value(obj, key, built[value])
    for obj in built:
        make_transient_to_detached(obj)
    rows: list[tuple[Any, ...]] = []
    for stored_cells, entities in data[ROWS]:
        cells = list(stored_cells)
        for position in entities:
            cells[position] = built[cells[position]]
        rows.append(tuple(cells))
    return rows
