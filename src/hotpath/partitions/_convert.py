"""Turn a live table into a partitioned one (or re-partition one), online and resumable.

The steps, each one transaction that also advances the state row in
``hotpath_partition_conversions`` (so a crash, even ``kill -9``, at any point leaves a state
the next run continues from):

1. **prepare** — a new partitioned table ``<table>_hotpath_new`` (columns, defaults, CHECK
   and NOT NULL constraints, outbound foreign keys and indexes of the source; its partitions;
   its primary key with the partition key), a log table ``hotpath_log_<oid>`` and a row
   trigger on the source that records the primary key of every row inserted, updated or
   deleted. The trigger is created last, so the source's SHARE ROW EXCLUSIVE lock is held for
   microseconds (under ``lock_timeout``, retried).
2. **copy** — rows in primary-key order, ``batch_rows`` per transaction
   (``INSERT ... SELECT ... ORDER BY pk LIMIT n ON CONFLICT DO NOTHING``), the cursor committed
   with the batch.
3. **replay** — the logged keys, oldest first, ``batch_rows`` per transaction: each key's row
   is deleted from the new table and copied again from the source's current state, and its
   log entries are removed. A key logged while a batch runs stays logged, so it is replayed
   again later: the new table converges to the source.
4. **swap** — one short transaction under ``lock_timeout`` (retried ``swap_attempts`` times):
   ACCESS EXCLUSIVE on the source, the last logged keys replayed, trigger dropped, source
   renamed to ``<table>_unpartitioned`` (``<table>_old`` when it was partitioned already), new
   table renamed to ``<table>``, index names and sequence ownership moved, identity sequences
   carried on, log dropped. The source is kept until the user drops it.

Why a trigger and not logical decoding: logical decoding needs ``wal_level = logical`` (a
restart), a replication slot to babysit and the REPLICATION privilege, which managed
PostgreSQL services restrict; a trigger needs only ownership of the table and works on every
PostgreSQL. The cost is paid by writers during the move (one extra insert per row written).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, get_args

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from .._validate import check_number
from ._maintain import Interval, PartitionError, next_start, period_start

STATE_TABLE = "hotpath_partition_conversions"
_TIME_TYPES = ("date", "timestamp with time zone", "timestamp without time zone")
_MAX_PARTITIONS = 1000
_MAX_IDENTIFIER = 63
# replay until at most this many keys are pending: the rest is replayed under the swap's lock
_SWAP_BACKLOG = 100  # pg_repack's switch threshold
# catch-up rounds that do not shrink the backlog before the swap goes ahead anyway (a writer
# faster than the replay): the swap then replays the rest under its lock
_STALLED_ROUNDS = 10
_LOCK_NOT_AVAILABLE = "55P03"
_WAIT_FOR_OTHER_CONVERTER_MS = 10_000


class PartitionKind(str, Enum):
    RANGE = "range"
    HASH = "hash"


class Phase(str, Enum):
    COPYING = "copying"
    REPLAYING = "replaying"
    DONE = "done"


class ConversionError(PartitionError):
    """A conversion cannot start, continue or finish; the message says why and what to do."""


@dataclass(frozen=True)
class ConvertOptions:
    """How to partition: ``by`` a column, with either ``interval`` (range by time) or
    ``hash_partitions`` (hash into that many partitions). Validated when built."""

    by: str
    interval: Interval | None = None
    hash_partitions: int | None = None
    batch_rows: int = 5_000
    lock_timeout_ms: int = 2_000
    swap_attempts: int = 5
    ahead: int = 3
    # a primary key without the partition key is refused unless this is set: the new table's
    # key then becomes (pk..., by), and pk alone stays unique only through its sequence
    extend_primary_key: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.by, str) or not self.by.strip():
            raise ConversionError(f"by={self.by!r}: name the column to partition by")
        if (self.interval is None) == (self.hash_partitions is None):
            raise ConversionError(
                "give exactly one of interval= (range by time: day, week, month, year) or "
                "hash_partitions= (hash into N partitions)"
            )
        if self.interval is not None and self.interval not in get_args(Interval):
            raise ConversionError(f"interval={self.interval!r}: use day, week, month or year")
        check_number(
            ConversionError,
            "hash_partitions",
            self.hash_partitions,
            integer=True,
            at_least=2,
            below=_MAX_PARTITIONS + 1,
            none_means="range partitioning",
        )
        check_number(ConversionError, "batch_rows", self.batch_rows, integer=True, at_least=1)
        check_number(
            ConversionError, "lock_timeout_ms", self.lock_timeout_ms, integer=True, at_least=1
        )
        check_number(ConversionError, "swap_attempts", self.swap_attempts, integer=True, at_least=1)
        check_number(ConversionError, "ahead", self.ahead, integer=True, at_least=0, below=121)

    @property
    def kind(self) -> PartitionKind:
        return PartitionKind.RANGE if self.interval is not None else PartitionKind.HASH

    def layout(self) -> dict[str, Any]:
        """What decides the new table (a resumed run must ask for the same)."""
        return {
            "by": self.by,
            "interval": self.interval,
            "hash_partitions": self.hash_partitions,
            "extend_primary_key": self.extend_primary_key,
        }


@dataclass(frozen=True)
class Progress:
    """Where a conversion stands; handed to the ``progress`` callback after every step."""

    table: str
    phase: Phase
    copied: int
    total_estimate: int
    replayed: int
    pending_changes: int


@dataclass(frozen=True)
class ConversionResult:
    table: str
    old_table: str
    partitions: tuple[str, ...]
    copied: int
    replayed: int
    swap_lock_ms: float
    resumed: bool = False


@dataclass
class _State:
    table: str  # schema-qualified, quoted as needed
    options: ConvertOptions
    phase: Phase
    new_table: str
    log_table: str
    old_name: str
    cursor: list[str] | None
    copy_until: list[str] | None
    copied: int
    replayed: int
    total_estimate: int
    swap_lock_ms: float | None
    plan: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]


# --------------------------------------------------------------------------- catalog
def _quote(conn: Connection, name: str) -> str:
    return str(conn.dialect.identifier_preparer.quote(name))


def _q(conn: Connection, schema: str, name: str) -> str:
    return f"{_quote(conn, schema)}.{_quote(conn, name)}"


def _resolve(conn: Connection, table: str) -> tuple[int, str, str, str]:
    """(oid, schema, name, relkind) of ``table``, or a clear error."""
    row = conn.execute(
        text(
            "SELECT c.oid, n.nspname, c.relname, c.relkind::text FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:t)"
        ),
        {"t": table},
    ).first()
    if row is None:
        raise ConversionError(f"table {table!r} does not exist (check the name and search_path)")
    oid, schema, name, relkind = row
    if relkind not in ("r", "p"):
        raise ConversionError(f"{table} is not a table (relkind {relkind!r})")
    return int(oid), str(schema), str(name), str(relkind)


def _columns(conn: Connection, oid: int) -> list[tuple[str, str, str, str]]:
    """(name, type, identity, generated) of the table's live columns, in order."""
    return [
        (str(r[0]), str(r[1]), str(r[2]), str(r[3]))
        for r in conn.execute(
            text(
                "SELECT attname, format_type(atttypid, atttypmod), attidentity::text,"
                " attgenerated::text FROM pg_attribute WHERE attrelid = :oid AND attnum > 0"
                " AND NOT attisdropped ORDER BY attnum"
            ),
            {"oid": oid},
        )
    ]


def _primary_key(conn: Connection, oid: int) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            text(
                "SELECT a.attname FROM pg_index i"
                " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                " WHERE i.indrelid = :oid AND i.indisprimary ORDER BY k.ord"
            ),
            {"oid": oid},
        )
    ]


def _layout_of(conn: Connection, oid: int) -> tuple[str, str, int | None] | None:
    """(strategy, key column, hash modulus) of a partitioned table, None if not one."""
    row = conn.execute(
        text(
            "SELECT p.partstrat::text, a.attname FROM pg_partitioned_table p"
            " JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]"
            " WHERE p.partrelid = :oid"
        ),
        {"oid": oid},
    ).first()
    if row is None:
        return None
    modulus = conn.execute(
        text(
            "SELECT max(substring(pg_get_expr(c.relpartbound, c.oid)"
            " FROM '(?i)modulus (\\d+)')::int) FROM pg_inherits i JOIN pg_class c"
            " ON c.oid = i.inhrelid WHERE i.inhparent = :oid"
        ),
        {"oid": oid},
    ).scalar()
    return str(row[0]), str(row[1]), int(modulus) if modulus is not None else None


def _check_name(name: str) -> str:
    if len(name.encode()) > _MAX_IDENTIFIER:
        raise ConversionError(
            f"the name {name!r} would be longer than PostgreSQL's {_MAX_IDENTIFIER} bytes: "
            "rename the table to something shorter first"
        )
    return name


# --------------------------------------------------------------------------- prepare
_INDEX_HEAD = re.compile(r'^CREATE (UNIQUE )?INDEX ("(?:[^"]|"")+"|\S+) ON (ONLY )?')


def _plan(conn: Connection, table: str, options: ConvertOptions) -> dict[str, Any]:
    """Everything prepare creates, checked against the catalog before anything is created."""
    oid, schema, name, relkind = _resolve(conn, table)
    columns = _columns(conn, oid)
    by = options.by
    types = {c[0]: c[1] for c in columns}
    if by not in types:
        raise ConversionError(
            f"{name} has no column {by!r} (columns: {', '.join(types)}): pick one of them"
        )
    if options.kind is PartitionKind.RANGE and types[by] not in _TIME_TYPES:
        raise ConversionError(
            f"{name}.{by} is {types[by]}, not a time: range partitions by interval need a date "
            "or timestamp column (or use hash_partitions=N)"
        )
    current = _layout_of(conn, oid)
    wanted = ("h", by, options.hash_partitions) if options.hash_partitions else ("r", by, None)
    if current is not None and current == wanted:
        raise ConversionError(f"{name} is already partitioned that way: nothing to do")
    pk = _primary_key(conn, oid)
    if not pk:
        raise ConversionError(
            f"{name} has no primary key: the copy walks it in order and the log replays by it;"
            f" add one first (ALTER TABLE {name} ADD PRIMARY KEY (...))"
        )
    new_pk = list(pk)
    if by not in pk:
        if not options.extend_primary_key:
            raise ConversionError(
                f"{name}'s primary key ({', '.join(pk)}) does not include the partition key "
                f"{by}, and a partitioned table's must: pass extend_primary_key=True "
                f"(--extend-primary-key) to make it ({', '.join(pk)}, {by}) on the new table "
                f"({', '.join(pk)} alone then stays unique only through its sequence)"
            )
        new_pk.append(by)
    inbound = conn.execute(
        text(
            "SELECT conname, conrelid::regclass::text FROM pg_constraint"
            " WHERE confrelid = :oid AND contype = 'f' AND conparentid = 0"
        ),
        {"oid": oid},
    ).first()
    if inbound is not None:
        raise ConversionError(
            f"foreign key {inbound[0]} on {inbound[1]} references {name}: it would keep "
            f"pointing at the old table after the swap; drop it, convert, then re-create it "
            f"referencing the new primary key ({', '.join(new_pk)})"
        )
    indexes = []
    for index_name, definition, unique, primary, keyed in conn.execute(
        text(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisunique, i.indisprimary,"
            " (SELECT attnum FROM pg_attribute WHERE attrelid = :oid AND attname = :by)"
            "   = ANY(i.indkey)"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = :oid ORDER BY c.relname"
        ),
        {"oid": oid, "by": by},
    ):
        if primary:
            continue
        if unique and not keyed:
            raise ConversionError(
                f"unique index {index_name} on {name} does not include the partition key {by}, "
                f"and on a partitioned table it must: drop it or re-create it with {by}"
            )
        indexes.append((str(index_name), str(definition)))
    pk_index = conn.execute(
        text(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = :oid AND i.indisprimary"
        ),
        {"oid": oid},
    ).scalar_one()
    new_name = _check_name(f"{name}_hotpath_new")
    old_name = _check_name(f"{name}_unpartitioned" if relkind == "r" else f"{name}_old")
    log_name = _check_name(f"hotpath_log_{oid}")
    taken = (
        conn.execute(
            text(
                "SELECT relname FROM pg_class WHERE relnamespace = CAST(:s AS regnamespace)"
                " AND relname = ANY(:names)"
            ),
            {"s": _quote(conn, schema), "names": [old_name]},
        )
        .scalars()
        .all()
    )
    if taken:
        raise ConversionError(
            f"{schema}.{old_name} exists (the source is renamed to it at the swap): drop or "
            "rename it first"
        )
    partitions = _partition_bounds(conn, oid, name, types[by], options, relkind)
    clash = (
        conn.execute(
            text(
                "SELECT relname FROM pg_class WHERE relnamespace = CAST(:s AS regnamespace)"
                " AND relname = ANY(:names)"
            ),
            {"s": _quote(conn, schema), "names": [p[0] for p in partitions]},
        )
        .scalars()
        .first()
    )
    if clash:
        raise ConversionError(
            f"{schema}.{clash} exists and would be a partition of the new table: drop or "
            "rename it first"
        )
    return {
        "oid": oid,
        "schema": schema,
        "name": name,
        "relkind": relkind,
        "columns": columns,
        "pk": pk,
        "new_pk": new_pk,
        "pk_index": pk_index,
        "indexes": indexes,
        "new_name": new_name,
        "old_name": old_name,
        "log_name": log_name,
        "function": _check_name(f"hotpath_capture_{oid}"),
        "partitions": partitions,
        "total_estimate": max(
            0,
            int(
                conn.execute(
                    text(
                        "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_class c"
                        " WHERE c.oid = :oid OR c.oid IN"
                        " (SELECT relid FROM pg_partition_tree(:oid) WHERE isleaf)"
                    ),
                    {"oid": oid},
                ).scalar_one()
            ),
        ),
    }


def _partition_bounds(
    conn: Connection, oid: int, name: str, key_type: str, options: ConvertOptions, relkind: str
) -> list[tuple[str, str]]:
    """(partition name, FOR VALUES clause) of the new table's partitions."""
    if options.hash_partitions is not None:
        modulus = options.hash_partitions
        return [
            (_check_name(f"{name}_h{modulus}_{r}"), f"WITH (MODULUS {modulus}, REMAINDER {r})")
            for r in range(modulus)
        ]
    assert options.interval is not None
    low, high = conn.execute(
        text(
            f"SELECT min({_quote(conn, options.by)}), max({_quote(conn, options.by)}) FROM "
            f"{_regclass_name(conn, oid)}"
        )
    ).one()
    now = datetime.now(timezone.utc)
    start = period_start(low if low is not None else now, options.interval)
    last = (
        max(period_start(high, options.interval), period_start(now, options.interval))
        if high
        else period_start(now, options.interval)
    )
    for _ in range(options.ahead):
        last = next_start(last, options.interval)
    is_date = key_type == "date"
    bounds = []
    while start <= last:
        end = next_start(start, options.interval)
        lower = start.date().isoformat() if is_date else start.isoformat()
        upper = end.date().isoformat() if is_date else end.isoformat()
        bounds.append((_check_name(f"{name}_p{start:%Y%m%d}"), f"FROM ('{lower}') TO ('{upper}')"))
        if len(bounds) > _MAX_PARTITIONS:
            raise ConversionError(
                f"{name}.{options.by} spans {low} to {high}: more than {_MAX_PARTITIONS} "
                f"{options.interval} partitions; use a longer interval"
            )
        start = end
    # rows outside every range (NULL keys, far future) land here instead of failing writes
    bounds.append((_check_name(f"{name}_default"), "DEFAULT"))
    return bounds


def _regclass_name(conn: Connection, oid: int) -> str:
    return str(conn.execute(text("SELECT CAST(:oid AS regclass)::text"), {"oid": oid}).scalar_one())


def _prepare(conn: Connection, state_key: str, options: ConvertOptions) -> None:
    plan = _plan(conn, state_key, options)
    schema, source = plan["schema"], _q(conn, plan["schema"], plan["name"])
    new = _q(conn, schema, plan["new_name"])
    log = _q(conn, schema, plan["log_name"])
    function = _q(conn, schema, plan["function"])
    by = _quote(conn, options.by)
    strategy = "HASH" if options.kind is PartitionKind.HASH else "RANGE"
    conn.execute(
        text(
            f"CREATE TABLE {new} (LIKE {source} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
            " INCLUDING GENERATED INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMMENTS)"
            f" PARTITION BY {strategy} ({by})"
        )
    )
    for partition, bound in plan["partitions"]:
        # the new table is not in use yet: PARTITION OF's ACCESS EXCLUSIVE on it blocks no one
        clause = "DEFAULT" if bound == "DEFAULT" else f"FOR VALUES {bound}"
        conn.execute(
            text(f"CREATE TABLE {_q(conn, schema, partition)} PARTITION OF {new} {clause}")
        )
    pk_columns = ", ".join(_quote(conn, c) for c in plan["new_pk"])
    temp_pk = _check_name(f"{plan['pk_index'][:40]}_hp{plan['oid']}")
    conn.execute(
        text(f"ALTER TABLE {new} ADD CONSTRAINT {_quote(conn, temp_pk)} PRIMARY KEY ({pk_columns})")
    )
    renames = [(plan["pk_index"], temp_pk)]
    for n, (index_name, definition) in enumerate(plan["indexes"]):
        temp = _check_name(f"{index_name[:40]}_hp{plan['oid']}_{n}")
        head = _INDEX_HEAD.match(definition)
        if head is None:
            continue
        body = definition[head.end() :]
        using = body.index(" USING ")
        conn.execute(
            text(f"CREATE {head.group(1) or ''}INDEX {_quote(conn, temp)} ON {new}{body[using:]}")
        )
        renames.append((index_name, temp))
    for constraint, definition in conn.execute(
        text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = :oid AND contype = 'f' AND conparentid = 0"
        ),
        {"oid": plan["oid"]},
    ):
        conn.execute(
            text(f"ALTER TABLE {new} ADD CONSTRAINT {_quote(conn, constraint)} {definition}")
        )
    owner, current_user = conn.execute(
        text("SELECT pg_get_userbyid(relowner), current_user FROM pg_class WHERE oid = :oid"),
        {"oid": plan["oid"]},
    ).one()
    if owner != current_user:
        for target in [new, *(_q(conn, schema, p) for p, _ in plan["partitions"])]:
            conn.execute(text(f"ALTER TABLE {target} OWNER TO {_quote(conn, owner)}"))
    for grantee, privilege in conn.execute(
        text(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC'"
            " ELSE quote_ident(pg_get_userbyid(a.grantee)) END, a.privilege_type"
            " FROM pg_class c, aclexplode(c.relacl) a"
            " WHERE c.oid = :oid AND a.grantee <> c.relowner"
        ),
        {"oid": plan["oid"]},
    ):
        conn.execute(text(f"GRANT {privilege} ON {new} TO {grantee}"))
    pk_defs = ", ".join(
        f"{_quote(conn, c)} { {col[0]: col[1] for col in plan['columns']}[c] }" for c in plan["pk"]
    )
    conn.execute(text(f"CREATE TABLE {log} (seq bigserial PRIMARY KEY, {pk_defs})"))
    pk_cols = ", ".join(_quote(conn, c) for c in plan["pk"])
    old_keys = ", ".join(f"OLD.{_quote(conn, c)}" for c in plan["pk"])
    new_keys = ", ".join(f"NEW.{_quote(conn, c)}" for c in plan["pk"])
    conn.execute(
        text(
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $hp$\n"
            "BEGIN\n"
            "  IF TG_OP <> 'INSERT' THEN\n"
            f"    INSERT INTO {log} ({pk_cols}) VALUES ({old_keys});\n"
            "  END IF;\n"
            f"  IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND ROW({new_keys}) IS DISTINCT FROM"
            f" ROW({old_keys})) THEN\n"
            f"    INSERT INTO {log} ({pk_cols}) VALUES ({new_keys});\n"
            "  END IF;\n"
            "  RETURN NULL;\n"
            "END\n$hp$"
        )
    )
    _set_lock_timeout(conn, options.lock_timeout_ms)
    # last: from here on the source's SHARE ROW EXCLUSIVE lock is held until the commit
    conn.execute(
        text(
            f"CREATE TRIGGER hotpath_capture AFTER INSERT OR UPDATE OR DELETE ON {source}"
            f" FOR EACH ROW EXECUTE FUNCTION {function}()"
        )
    )
    # The copy stops at the newest key that exists now: every row written from here on is
    # logged by the trigger and replayed, so the copy never chases a busy writer's inserts.
    pk_order = ", ".join(f"{_quote(conn, c)} DESC" for c in plan["pk"])
    pk_text = ", ".join(f"{_quote(conn, c)}::text" for c in plan["pk"])
    source_rows = f"{'ONLY ' if plan['relkind'] == 'r' else ''}{source}"
    newest = conn.execute(
        text(f"SELECT ARRAY[{pk_text}] FROM {source_rows} ORDER BY {pk_order} LIMIT 1")
    ).scalar()
    total = (
        plan["total_estimate"]
        or conn.execute(text(f"SELECT count(*) FROM {source_rows}")).scalar_one()
    )
    stored = {k: plan[k] for k in ("oid", "schema", "name", "relkind", "pk", "function", "columns")}
    stored["renames"] = renames
    stored["partitions"] = [p for p, _ in plan["partitions"]]
    conn.execute(
        text(
            f"INSERT INTO {STATE_TABLE} (table_name, options, plan, phase, new_table, log_table,"
            " old_name, copied, replayed, total_estimate, copy_until)"
            " VALUES (:t, CAST(:o AS jsonb), CAST(:p AS jsonb), :phase, :new, :log, :old, 0, 0,"
            " :total, :until)"
        ),
        {
            "t": state_key,
            "o": json.dumps(asdict(options)),
            "p": json.dumps(stored),
            "phase": (Phase.COPYING if newest is not None else Phase.REPLAYING).value,
            "new": plan["new_name"],
            "log": plan["log_name"],
            "old": plan["old_name"],
            "total": int(total),
            "until": list(newest) if newest is not None else None,
        },
    )


def _set_lock_timeout(conn: Connection, ms: int) -> None:
    conn.execute(text(f"SET LOCAL lock_timeout = {int(ms)}"))


def _lock_not_available(exc: BaseException) -> bool:
    original = getattr(exc, "orig", exc)
    code = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    return code == _LOCK_NOT_AVAILABLE or "LockNotAvailable" in type(original).__name__


def _with_lock_retries(
    conn: Connection, options: ConvertOptions, step: Callable[[], None], what: str
) -> None:
    """Run ``step`` in its own transaction; a lock_timeout rolls it back and tries again."""
    for attempt in range(1, options.swap_attempts + 1):
        try:
            with conn.begin():
                step()
            return
        except DBAPIError as exc:
            if not _lock_not_available(exc) or attempt == options.swap_attempts:
                if _lock_not_available(exc):
                    raise ConversionError(
                        f"{what}: the table's lock was not granted within "
                        f"{options.lock_timeout_ms} ms, {options.swap_attempts} times (long "
                        "transactions hold it: see pg_stat_activity); run again to resume, or "
                        "raise lock_timeout_ms / swap_attempts"
                    ) from None
                raise


# --------------------------------------------------------------------------- state
def _ensure_state_table(conn: Connection) -> None:
    with conn.begin():
        # CREATE TABLE IF NOT EXISTS races on the catalog: one creator at a time
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('hotpath.partitions.state'))"))
        conn.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} ("
                " table_name text PRIMARY KEY, options jsonb NOT NULL, plan jsonb NOT NULL,"
                " phase text NOT NULL, new_table text NOT NULL, log_table text NOT NULL,"
                " old_name text NOT NULL, cursor text[], copy_until text[], copied bigint NOT NULL,"
                " replayed bigint NOT NULL, total_estimate bigint NOT NULL,"
                " swap_lock_ms float8, started_at timestamptz NOT NULL DEFAULT now(),"
                " updated_at timestamptz NOT NULL DEFAULT now())"
            )
        )


def _load(conn: Connection, key: str) -> _State | None:
    row = conn.execute(
        text(
            "SELECT options, plan, phase, new_table, log_table, old_name, cursor, copied,"
            " replayed, total_estimate, swap_lock_ms, copy_until"
            f" FROM {STATE_TABLE} WHERE table_name = :t"
        ),
        {"t": key},
    ).first()
    if row is None:
        return None
    options, plan = (json.loads(v) if isinstance(v, str) else v for v in row[:2])
    return _State(
        key,
        ConvertOptions(**options),
        Phase(row[2]),
        str(row[3]),
        str(row[4]),
        str(row[5]),
        list(row[6]) if row[6] is not None else None,
        list(row[11]) if row[11] is not None else None,
        int(row[7]),
        int(row[8]),
        int(row[9]),
        float(row[10]) if row[10] is not None else None,
        plan,
    )


def _state_key(conn: Connection, table: str) -> str:
    """The table's schema-qualified name: the state row's key, stable across the swap."""
    schema = conn.execute(
        text(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = to_regclass(:t)"
        ),
        {"t": table},
    ).scalar()
    if schema is None and "." not in table:
        schema = conn.execute(text("SELECT current_schema()")).scalar()
    if "." in table:
        return table
    return f"{schema}.{table}"


# --------------------------------------------------------------------------- copy / replay
def _names(conn: Connection, state: _State) -> dict[str, str]:
    plan = state.plan
    schema = plan["schema"]
    insertable = [c[0] for c in plan["columns"] if not c[3]]
    source_table = _q(conn, schema, plan["name"])
    return {
        "source": ("ONLY " if plan["relkind"] == "r" else "") + source_table,
        "source_table": source_table,
        "new": _q(conn, schema, state.new_table),
        "log": _q(conn, schema, state.log_table),
        "cols": ", ".join(_quote(conn, c) for c in insertable),
        "source_cols": ", ".join(f"t.{_quote(conn, c)}" for c in insertable),
        "override": " OVERRIDING SYSTEM VALUE" if any(c[2] == "a" for c in plan["columns"]) else "",
        "pk": ", ".join(_quote(conn, c) for c in plan["pk"]),
    }


def _pk_types(state: _State) -> list[str]:
    types = {c[0]: c[1] for c in state.plan["columns"]}
    return [types[c] for c in state.plan["pk"]]


def _copy_batch(conn: Connection, state: _State) -> int:
    """Copy the next batch (its cursor committed with it); returns the rows it held."""
    n = _names(conn, state)
    pk = state.plan["pk"]
    types = _pk_types(state)
    params: dict[str, Any] = {"t": state.table, "n": state.options.batch_rows}
    assert state.copy_until is not None
    until = ", ".join(f"CAST(:u{i} AS text)::{t}" for i, t in enumerate(types))
    where = f" WHERE ({n['pk']}) <= ({until})"
    params.update({f"u{i}": v for i, v in enumerate(state.copy_until)})
    if state.cursor is not None:
        bound = ", ".join(f"CAST(:c{i} AS text)::{t}" for i, t in enumerate(types))
        where += f" AND ({n['pk']}) > ({bound})"
        params.update({f"c{i}": v for i, v in enumerate(state.cursor)})
    order = ", ".join(_quote(conn, c) for c in pk)
    last_cols = ", ".join(f"last.{_quote(conn, c)}::text" for c in pk)
    with conn.begin():
        row = conn.execute(
            text(
                f"WITH batch AS (SELECT * FROM {n['source']}{where} ORDER BY {order} LIMIT :n),"
                f" moved AS (INSERT INTO {n['new']} ({n['cols']}){n['override']}"
                f" SELECT {n['cols']} FROM batch ON CONFLICT DO NOTHING),"
                f" last AS (SELECT {order} FROM batch ORDER BY "
                + ", ".join(f"{_quote(conn, c)} DESC" for c in pk)
                + " LIMIT 1)"
                f" UPDATE {STATE_TABLE} SET cursor = ARRAY[{last_cols}],"
                " copied = copied + (SELECT count(*) FROM batch), updated_at = now()"
                " FROM last WHERE table_name = :t RETURNING cursor, copied"
            ),
            params,
        ).first()
        if row is None:
            conn.execute(
                text(
                    f"UPDATE {STATE_TABLE} SET phase = :p, updated_at = now() WHERE table_name = :t"
                ),
                {"p": Phase.REPLAYING.value, "t": state.table},
            )
            state.phase = Phase.REPLAYING
            return 0
    moved = int(row[1]) - state.copied
    state.cursor, state.copied = list(row[0]), int(row[1])
    return moved


def _replay_batch(conn: Connection, state: _State, limit: int) -> int:
    """Re-sync the oldest ``limit`` logged keys from the source's current rows; the caller
    owns the transaction. Returns the log entries consumed."""
    n = _names(conn, state)
    pk = state.plan["pk"]
    types = _pk_types(state)
    key_text = ", ".join(f"{_quote(conn, c)}::text" for c in pk)
    entries = conn.execute(
        text(f"SELECT seq, {key_text} FROM {n['log']} ORDER BY seq LIMIT :n"), {"n": limit}
    ).all()
    if not entries:
        return 0
    keys = sorted({tuple(e[1:]) for e in entries})
    params: dict[str, Any] = {f"k{i}": [k[i] for k in keys] for i in range(len(pk))}
    arrays = ", ".join(f"CAST(:k{i} AS text[])::{t}[]" for i, t in enumerate(types))
    aliases = ", ".join(f"k{i}" for i in range(len(pk)))
    match_new = " AND ".join(f"t.{_quote(conn, c)} = k.k{i}" for i, c in enumerate(pk))
    conn.execute(
        text(f"DELETE FROM {n['new']} t USING unnest({arrays}) AS k({aliases}) WHERE {match_new}"),
        params,
    )
    conn.execute(
        text(
            f"INSERT INTO {n['new']} ({n['cols']}){n['override']}"
            f" SELECT {n['source_cols']}"
            f" FROM {n['source']} t JOIN unnest({arrays}) AS k({aliases}) ON {match_new}"
        ),
        params,
    )
    conn.execute(
        text(f"DELETE FROM {n['log']} WHERE seq = ANY(:seqs)"),
        {"seqs": [int(e[0]) for e in entries]},
    )
    conn.execute(
        text(
            f"UPDATE {STATE_TABLE} SET replayed = replayed + :r, updated_at = now()"
            " WHERE table_name = :t"
        ),
        {"r": len(entries), "t": state.table},
    )
    state.replayed += len(entries)
    return len(entries)


def _pending(conn: Connection, state: _State) -> int:
    log = _names(conn, state)["log"]
    return int(conn.execute(text(f"SELECT count(*) FROM {log}")).scalar_one())


# --------------------------------------------------------------------------- swap
def _swap(conn: Connection, state: _State) -> float:
    """The final transaction; returns how long the source's ACCESS EXCLUSIVE lock was held."""
    n = _names(conn, state)
    plan = state.plan
    schema = plan["schema"]
    held: list[float] = []

    def step() -> None:
        _set_lock_timeout(conn, state.options.lock_timeout_ms)
        # writers queue behind the lock from the moment it is requested, not granted
        locked = time.perf_counter()
        conn.execute(text(f"LOCK TABLE {n['source_table']} IN ACCESS EXCLUSIVE MODE"))
        while _replay_batch(conn, state, state.options.batch_rows):
            pass
        function = _q(conn, schema, plan["function"])
        conn.execute(text(f"DROP TRIGGER hotpath_capture ON {n['source_table']}"))
        conn.execute(text(f"DROP FUNCTION {function}()"))
        serials = conn.execute(
            text(
                "SELECT d.objid::regclass::text, a.attname FROM pg_depend d"
                " JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'"
                " JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
                " WHERE d.refobjid = :oid AND d.deptype = 'a'"
            ),
            {"oid": plan["oid"]},
        ).all()
        identities = conn.execute(
            text(
                "SELECT attname, pg_get_serial_sequence(CAST(:old AS regclass)::text, attname)"
                " FROM pg_attribute WHERE attrelid = CAST(:old AS regclass) AND attidentity <> ''"
            ),
            {"old": n["source_table"]},
        ).all()
        for old_index, temp in plan["renames"]:
            suffix = state.old_name[len(plan["name"]) + 1 :]  # "unpartitioned" or "old"
            moved = _check_name(f"{old_index[: _MAX_IDENTIFIER - len(suffix) - 1]}_{suffix}")
            conn.execute(
                text(f"ALTER INDEX {_q(conn, schema, old_index)} RENAME TO {_quote(conn, moved)}")
            )
            conn.execute(
                text(f"ALTER INDEX {_q(conn, schema, temp)} RENAME TO {_quote(conn, old_index)}")
            )
        conn.execute(
            text(f"ALTER TABLE {n['source_table']} RENAME TO {_quote(conn, state.old_name)}")
        )
        conn.execute(text(f"ALTER TABLE {n['new']} RENAME TO {_quote(conn, plan['name'])}"))
        final = _q(conn, schema, plan["name"])
        for sequence, column in serials:
            # the default nextval() is shared; the sequence must not go when the old table does
            conn.execute(text(f"ALTER SEQUENCE {sequence} OWNED BY {final}.{_quote(conn, column)}"))
        for column, old_sequence in identities:
            new_sequence = conn.execute(
                text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": final, "c": column}
            ).scalar()
            if new_sequence and old_sequence:
                conn.execute(
                    text(f"SELECT setval(:s, last_value, is_called) FROM {old_sequence}"),
                    {"s": new_sequence},
                )
        conn.execute(text(f"DROP TABLE {n['log']}"))
        conn.execute(
            text(
                f"UPDATE {STATE_TABLE} SET phase = :p, swap_lock_ms = :ms, cursor = NULL,"
                " updated_at = now() WHERE table_name = :t"
            ),
            {"p": Phase.DONE.value, "ms": (time.perf_counter() - locked) * 1000, "t": state.table},
        )
        held.append(locked)

    _with_lock_retries(conn, state.options, step, f"swap of {plan['name']}")
    # the lock ends at COMMIT, which step()'s transaction block has just returned from
    lock_ms = (time.perf_counter() - held[-1]) * 1000
    with conn.begin():
        conn.execute(
            text(f"UPDATE {STATE_TABLE} SET swap_lock_ms = :ms WHERE table_name = :t"),
            {"ms": lock_ms, "t": state.table},
        )
    state.phase = Phase.DONE
    return lock_ms


# --------------------------------------------------------------------------- driver
def _report(conn: Connection, state: _State, progress: ProgressCallback | None) -> None:
    if progress is None:
        return
    pending = _pending(conn, state) if state.phase is not Phase.DONE else 0
    if conn.in_transaction():
        conn.commit()
    progress(
        Progress(
            state.plan["name"],
            state.phase,
            state.copied,
            state.total_estimate,
            state.replayed,
            pending,
        )
    )


def _converter_lock(conn: Connection, key: str) -> None:
    """One converter per table: a session-level advisory lock, freed if the process dies."""
    with conn.begin():
        _set_lock_timeout(conn, _WAIT_FOR_OTHER_CONVERTER_MS)
        try:
            conn.execute(
                text("SELECT pg_advisory_lock(hashtext(:k))"),
                {"k": f"hotpath.partitions.convert:{key}"},
            )
        except DBAPIError as exc:
            if _lock_not_available(exc):
                raise ConversionError(
                    f"another process is converting {key} (it holds the converter lock): "
                    "wait for it to finish, or stop it and run again to resume"
                ) from None
            raise


def _converter_unlock(conn: Connection, key: str) -> None:
    with conn.begin():
        conn.execute(
            text("SELECT pg_advisory_unlock(hashtext(:k))"),
            {"k": f"hotpath.partitions.convert:{key}"},
        )


def _result(state: _State, resumed: bool) -> ConversionResult:
    return ConversionResult(
        state.plan["name"],
        state.old_name,
        tuple(state.plan.get("partitions", ())),
        state.copied,
        state.replayed,
        state.swap_lock_ms or 0.0,
        resumed,
    )


def _run(
    conn: Connection,
    table: str,
    options: ConvertOptions | None,
    progress: ProgressCallback | None,
) -> ConversionResult:
    if conn.in_transaction():
        conn.commit()
    key = _state_key(conn, table)
    if conn.in_transaction():
        conn.commit()
    _ensure_state_table(conn)
    _converter_lock(conn, key)
    try:
        return _drive(conn, key, options, progress)
    finally:
        if conn.in_transaction():
            conn.rollback()
        _converter_unlock(conn, key)


def _drive(
    conn: Connection,
    key: str,
    options: ConvertOptions | None,
    progress: ProgressCallback | None,
) -> ConversionResult:
    with conn.begin():
        state = _load(conn, key)
    resumed = state is not None
    if state is None:
        if options is None:
            raise ConversionError(
                f"no conversion of {key} to resume: start one with by= and interval= or "
                "hash_partitions="
            )
        _with_lock_retries(
            conn, options, lambda: _prepare(conn, key, options), f"capture trigger on {key}"
        )
        with conn.begin():
            state = _load(conn, key)
        assert state is not None
    elif options is not None and options.layout() != state.options.layout():
        if state.phase is Phase.DONE:
            old = _q(conn, state.plan["schema"], state.old_name)
            kept = conn.execute(text("SELECT to_regclass(:t)"), {"t": old}).scalar()
            conn.commit()
            if kept is not None:
                raise ConversionError(
                    f"{key} was converted already and its previous table {old} is kept: drop "
                    f"it (DROP TABLE {old}) once you no longer need it, then run this again"
                )
            # the previous conversion is finished and its old table dropped: start afresh
            with conn.begin():
                conn.execute(text(f"DELETE FROM {STATE_TABLE} WHERE table_name = :t"), {"t": key})
            return _drive(conn, key, options, progress)
        raise ConversionError(
            f"a conversion of {key} with {state.options.layout()} is in progress "
            f"(phase {state.phase.value}); resume it (resume_conversion / --resume) or "
            "abort it (abort_conversion / --abort) first"
        )
    elif options is not None and options != state.options:
        # same layout, other batch size / timeouts: take the new ones for the rest
        state.options = options
        with conn.begin():
            conn.execute(
                text(f"UPDATE {STATE_TABLE} SET options = CAST(:o AS jsonb) WHERE table_name = :t"),
                {"o": json.dumps(asdict(options)), "t": key},
            )
    _report(conn, state, progress)
    while state.phase is Phase.COPYING:
        _copy_batch(conn, state)
        _report(conn, state, progress)
    if state.phase is Phase.REPLAYING:
        _catch_up(conn, state, progress, state.options.batch_rows)
        with conn.begin():
            # the planner's statistics before the new table takes the traffic
            conn.execute(text(f"ANALYZE {_names(conn, state)['new']}"))
        # what the swap replays holds the table's lock: start it with a short backlog
        _catch_up(conn, state, progress, _SWAP_BACKLOG)
        _swap(conn, state)
        with conn.begin():
            state = _load(conn, key) or state
        _report(conn, state, progress)
    return _result(state, resumed)


def _catch_up(
    conn: Connection, state: _State, progress: ProgressCallback | None, backlog: int
) -> None:
    """Replay batches until at most ``backlog`` keys are pending (or the writers keep ahead
    for ``_STALLED_ROUNDS`` rounds)."""
    best, stalled = None, 0
    while True:
        with conn.begin():
            _replay_batch(conn, state, state.options.batch_rows)
            pending = _pending(conn, state)
        _report(conn, state, progress)
        if pending <= backlog:
            return
        if best is not None and pending >= best:
            stalled += 1
            if stalled >= _STALLED_ROUNDS:
                return
        best = pending if best is None else min(best, pending)


def _abort(conn: Connection, table: str) -> bool:
    if conn.in_transaction():
        conn.commit()
    key = _state_key(conn, table)
    if conn.in_transaction():
        conn.commit()
    _ensure_state_table(conn)
    _converter_lock(conn, key)
    try:
        with conn.begin():
            state = _load(conn, key)
            if state is None:
                return False
            schema = state.plan["schema"]
            # DROP TRIGGER takes ACCESS EXCLUSIVE on the source: never queue behind a long
            # transaction (and block every writer behind us) for long
            _set_lock_timeout(conn, state.options.lock_timeout_ms)
            if state.phase is not Phase.DONE:
                source = _q(conn, schema, state.plan["name"])
                conn.execute(text(f"DROP TRIGGER IF EXISTS hotpath_capture ON {source}"))
                conn.execute(
                    text(f"DROP FUNCTION IF EXISTS {_q(conn, schema, state.plan['function'])}()")
                )
                conn.execute(text(f"DROP TABLE IF EXISTS {_q(conn, schema, state.new_table)}"))
                conn.execute(text(f"DROP TABLE IF EXISTS {_q(conn, schema, state.log_table)}"))
            conn.execute(text(f"DELETE FROM {STATE_TABLE} WHERE table_name = :t"), {"t": key})
        return True
    finally:
        _converter_unlock(conn, key)


def conversion_state(engine: Engine, table: str) -> Progress | None:
    """Where the conversion of ``table`` stands, or None if none was started."""
    with engine.connect() as conn:
        key = _state_key(conn, table)
        exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": STATE_TABLE}).scalar()
        if exists is None:
            return None
        state = _load(conn, key)
        if state is None:
            return None
        pending = _pending(conn, state) if state.phase is not Phase.DONE else 0
        return Progress(
            state.plan["name"],
            state.phase,
            state.copied,
            state.total_estimate,
            state.replayed,
            pending,
        )


def _options(
    by: str | None,
    interval: Interval | None,
    hash_partitions: int | None,
    given: ConvertOptions | None,
    **more: Any,
) -> ConvertOptions:
    if given is not None:
        if by is not None or interval is not None or hash_partitions is not None:
            raise ConversionError("give options= or by=/interval=/hash_partitions=, not both")
        return given
    if by is None:
        raise ConversionError("by= is required: the column to partition by")
    return ConvertOptions(by=by, interval=interval, hash_partitions=hash_partitions, **more)


def convert_to_partitioned(
    engine: Engine,
    table: str,
    *,
    by: str | None = None,
    interval: Interval | None = None,
    hash_partitions: int | None = None,
    options: ConvertOptions | None = None,
    progress: ProgressCallback | None = None,
    **settings: Any,
) -> ConversionResult:
    """Partition the live ``table`` by ``by`` (range of ``interval``, or ``hash_partitions``
    ways) while it keeps taking writes. Runs to the swap; if it stopped before (a crash, a
    lock not granted), calling it again with the same layout resumes. ``settings`` are the
    other :class:`ConvertOptions` fields (``batch_rows``, ``lock_timeout_ms``...)."""
    chosen = _options(by, interval, hash_partitions, options, **settings)
    with engine.connect() as conn:
        return _run(conn, table, chosen, progress)


def resume_conversion(
    engine: Engine, table: str, *, progress: ProgressCallback | None = None
) -> ConversionResult:
    """Continue the conversion of ``table`` from its saved state (after a crash)."""
    with engine.connect() as conn:
        return _run(conn, table, None, progress)


def abort_conversion(engine: Engine, table: str) -> bool:
    """Undo an unfinished conversion (drops the new table, the log and the trigger; the source
    is untouched); after a finished one, only forgets its state. False if there was none."""
    with engine.connect() as conn:
        return _abort(conn, table)


def repartition_hash(
    engine: Engine,
    table: str,
    partitions: int,
    *,
    progress: ProgressCallback | None = None,
    **settings: Any,
) -> ConversionResult:
    """Move a hash-partitioned ``table`` to ``partitions`` partitions, online: the same
    machinery as :func:`convert_to_partitioned` (the old table is kept as ``<table>_old``)."""
    with engine.connect() as conn:
        key = _hash_key(conn, table)
        conn.commit()
        return _run(
            conn, table, ConvertOptions(by=key, hash_partitions=partitions, **settings), progress
        )


def _hash_key(conn: Connection, table: str) -> str:
    oid, _, name, _ = _resolve(conn, table)
    layout = _layout_of(conn, oid)
    if layout is None or layout[0] != "h":
        raise ConversionError(
            f"{name} is not partitioned by hash: use convert_to_partitioned(..., "
            "hash_partitions=N) to make it so"
        )
    return layout[1]


async def convert_to_partitioned_async(
    engine: AsyncEngine,
    table: str,
    *,
    by: str | None = None,
    interval: Interval | None = None,
    hash_partitions: int | None = None,
    options: ConvertOptions | None = None,
    progress: ProgressCallback | None = None,
    **settings: Any,
) -> ConversionResult:
    chosen = _options(by, interval, hash_partitions, options, **settings)
    async with engine.connect() as conn:
        return await conn.run_sync(_run, table, chosen, progress)


async def resume_conversion_async(
    engine: AsyncEngine, table: str, *, progress: ProgressCallback | None = None
) -> ConversionResult:
    async with engine.connect() as conn:
        return await conn.run_sync(_run, table, None, progress)


async def repartition_hash_async(
    engine: AsyncEngine,
    table: str,
    partitions: int,
    *,
    progress: ProgressCallback | None = None,
    **settings: Any,
) -> ConversionResult:
    async with engine.connect() as conn:
        key = await conn.run_sync(_hash_key, table)
        await conn.commit()
        options = ConvertOptions(by=key, hash_partitions=partitions, **settings)
        return await conn.run_sync(_run, table, options, progress)
