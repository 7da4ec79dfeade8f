"""Checks on storage: table and index bloat, cache hit ratio, partitioning candidates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..plans import Severity
from ._checks_indexes import _mb
from ._context import Context, display_name
from ._model import Finding, FixKind
from ._registry import check
from ._sqlparse import parse_query, tables_of

_USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'"
_TUPLE_HEADER = 24  # heap tuple header (23 bytes, aligned)
_ITEM_ID = 4
_PAGE_HEADER = 24
_BTREE_SPECIAL = 16
_INDEX_TUPLE_HEADER = 8


def _align(n: float) -> float:
    return math.ceil(n / 8) * 8


@check("table_bloat", "Table bloat estimate", "read_all_data")
def table_bloat(ctx: Context) -> list[Finding]:
    """Pages a table holds beyond what its live rows need (from ``pg_stats`` widths, the
    estimate ``pgstattuple`` would confirm); stale statistics make it unreliable."""
    rows = ctx.rows(
        "SELECT n.nspname AS schema, c.relname, c.relpages, c.reltuples::float8 AS tuples,"
        " current_setting('block_size')::int AS bs,"
        " coalesce((SELECT option_value::int FROM pg_options_to_table(c.reloptions)"
        "  WHERE option_name = 'fillfactor'), 100) AS fillfactor,"
        " (SELECT sum((1 - s.null_frac) * s.avg_width) FROM pg_stats s"
        "  WHERE s.schemaname = n.nspname AND s.tablename = c.relname) AS width,"
        " (SELECT count(*) FROM pg_stats s"
        "  WHERE s.schemaname = n.nspname AND s.tablename = c.relname) AS stat_cols,"
        " (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0"
        "  AND NOT a.attisdropped) AS cols"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE c.relkind IN ('r', 'm') AND {_USER_SCHEMAS} AND c.relpages > 10"
        " AND c.reltuples >= 0"
    )
    findings = []
    for r in rows:
        if r["width"] is None or int(r["stat_cols"]) < int(r["cols"]):
            continue  # never analyzed (the vacuum check reports it): no width to estimate from
        row_bytes = _align(_TUPLE_HEADER + float(r["width"])) + _ITEM_ID
        usable = (int(r["bs"]) - _PAGE_HEADER) * int(r["fillfactor"]) / 100
        expected = max(1, math.ceil(float(r["tuples"]) * row_bytes / usable))
        finding = _bloat_finding(
            ctx,
            "table_bloat",
            display_name(r["schema"], r["relname"]),
            int(r["relpages"]),
            expected,
            int(r["bs"]),
            "VACUUM FULL {name};  -- takes an ACCESS EXCLUSIVE lock; "
            "pg_repack {name} rebuilds it online",
        )
        if finding:
            findings.append(finding)
    return findings


@check("index_bloat", "B-tree index bloat estimate", "read_all_data")
def index_bloat(ctx: Context) -> list[Finding]:
    """Pages a b-tree index holds beyond what its entries need (plain column indexes)."""
    rows = ctx.rows(
        "SELECT n.nspname AS schema, ic.relname AS idx, ic.relpages,"
        " ic.reltuples::float8 AS tuples,"
        " current_setting('block_size')::int AS bs,"
        " coalesce((SELECT option_value::int FROM pg_options_to_table(ic.reloptions)"
        "  WHERE option_name = 'fillfactor'), 90) AS fillfactor,"
        " (SELECT sum((1 - s.null_frac) * s.avg_width) FROM unnest(i.indkey::int2[]) k(attnum)"
        "  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        "  JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = tc.relname"
        "  AND s.attname = a.attname) AS width,"
        " (SELECT count(*) FROM unnest(i.indkey::int2[]) k(attnum)"
        "  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        "  JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = tc.relname"
        "  AND s.attname = a.attname) AS stat_cols, i.indnatts AS cols"
        " FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid"
        " JOIN pg_class tc ON tc.oid = i.indrelid JOIN pg_am am ON am.oid = ic.relam"
        " JOIN pg_namespace n ON n.oid = ic.relnamespace"
        f" WHERE am.amname = 'btree' AND {_USER_SCHEMAS} AND ic.relpages > 10"
        " AND i.indexprs IS NULL AND i.indisvalid"
    )
    findings = []
    for r in rows:
        if r["width"] is None or int(r["stat_cols"]) < int(r["cols"]):
            continue
        entry = _align(_INDEX_TUPLE_HEADER + float(r["width"])) + _ITEM_ID
        usable = (int(r["bs"]) - _PAGE_HEADER - _BTREE_SPECIAL) * int(r["fillfactor"]) / 100
        # + 1 metapage, and the upper levels of the tree (about 1% of the leaves)
        leaves = float(r["tuples"]) * entry / usable
        expected = max(2, math.ceil(leaves * 1.01) + 1)
        finding = _bloat_finding(
            ctx,
            "index_bloat",
            display_name(r["schema"], r["idx"]),
            int(r["relpages"]),
            expected,
            int(r["bs"]),
            "REINDEX INDEX CONCURRENTLY {name};",
        )
        if finding:
            findings.append(finding)
    return findings


def _bloat_finding(
    ctx: Context, check_id: str, name: str, pages: int, expected: int, block: int, fix: str
) -> Finding | None:
    wasted = (pages - expected) * block
    ratio = 1 - expected / pages
    t = ctx.thresholds
    if ratio < t.bloat_ratio or wasted < t.bloat_min_bytes:
        return None
    kind = "table" if check_id == "table_bloat" else "index"
    return Finding(
        check_id,
        Severity.CRITICAL
        if ratio >= 0.8 and wasted >= 100 * t.bloat_min_bytes
        else Severity.WARNING,
        name,
        f"{kind} {name} is about {ratio:.0%} bloat: {pages:,} pages where its live rows need "
        f"~{expected:,} ({wasted / 1024 / 1024:,.1f} MB wasted, estimate from pg_stats)",
        {
            "pages": pages,
            "expected_pages": expected,
            "wasted_bytes": wasted,
            "bloat_ratio": round(ratio, 4),
        },
        fix.format(name=name),
        FixKind.SQL,
        f"~{wasted / 1024 / 1024:,.1f} MB less to read on every full scan",
    )


@check("cache_hit", "Cache hit ratio (tables and indexes)")
def cache_hit(ctx: Context) -> list[Finding]:
    """Share of block reads served from shared_buffers, for tables and for indexes."""
    r = ctx.rows(
        "SELECT sum(heap_blks_hit)::float8 AS th, sum(heap_blks_read)::float8 AS tr,"
        " sum(idx_blks_hit)::float8 AS ih, sum(idx_blks_read)::float8 AS ir"
        " FROM pg_statio_user_tables"
    )[0]
    shared = ctx.rows("SELECT setting, unit FROM pg_settings WHERE name = 'shared_buffers'")[0]
    shared_mb = int(shared["setting"]) * 8 / 1024  # unit is 8kB blocks
    findings = []
    for kind, hits, reads in (("table", r["th"], r["tr"]), ("index", r["ih"], r["ir"])):
        hit, read = float(hits or 0), float(reads or 0)
        if hit + read < ctx.thresholds.cache_min_blocks:
            continue
        ratio = hit / (hit + read)
        if ratio >= ctx.thresholds.cache_hit_ratio:
            continue
        findings.append(
            Finding(
                "cache_hit",
                Severity.WARNING,
                f"{ctx.caps.database} ({kind}s)",
                f"{kind} cache hit ratio is {ratio:.1%} "
                f"(target {ctx.thresholds.cache_hit_ratio:.0%}):"
                f" {read:,.0f} blocks read from disk, {hit:,.0f} from shared_buffers"
                f" ({shared_mb:,.0f} MB)",
                {
                    "hit_ratio": round(ratio, 4),
                    "blocks_read": read,
                    "blocks_hit": hit,
                    "shared_buffers_mb": shared_mb,
                },
                f"shared_buffers = '{int(shared_mb * 2)}MB'  # or more, up to ~25% of RAM; "
                "and look for sequential scans (missing_indexes)",
                FixKind.CONFIG,
            )
        )
    return findings


_TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")


@check("partition_candidates", "Partitioning candidates", "pg_stat_statements")
def partition_candidates(ctx: Context) -> list[Finding]:
    """Large, append-mostly tables whose queries filter on a time column: range partitioning
    by that column lets PostgreSQL skip old partitions and drop them instead of DELETE.

    The evidence is what the server can tell: the table's size (heap, TOAST and indexes), its
    inserts per day averaged since the statistics counters began (``n_tup_ins`` over
    ``stats_reset``, else the server's start: an average, not a trend), the calls of the
    statements in ``pg_stat_statements`` that filter it by a range or value of the column, and
    the DELETEs by a range of it (retention that a partition drop would replace). The fix is
    the ``hotpath partitions convert`` command that does it online."""
    t = ctx.thresholds
    findings = []
    for table in ctx.tables:
        rows = float(table["reltuples"])
        inserts, updates = int(table["n_tup_ins"]), int(table["n_tup_upd"])
        if rows < t.partition_min_rows or table["relkind"] != "r" or inserts + updates == 0:
            continue
        # deletes are left out: retention DELETEs are what partitioning turns into drops
        appended = inserts / (inserts + updates)
        if appended < t.append_only_ratio:
            continue
        time_cols = {
            str(c["attname"])
            for c in ctx.rows(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0"
                " AND NOT attisdropped AND format_type(atttypid, atttypmod) = ANY(%s)",
                (table["relid"], list(_TIME_TYPES)),
            )
        }
        usage = _time_usage(ctx, str(table["relname"]), time_cols)
        if not usage.filtered:
            continue
        column = max(usage.filtered, key=lambda c: usage.filtered[c])
        findings.append(_partition_finding(ctx, table, column, rows, appended, usage))
    return findings


@dataclass
class _TimeUsage:
    calls: int = 0  # all calls of statements on the table
    filtered: dict[str, int] = field(default_factory=dict)  # reads/updates filtering on it
    retention_calls: dict[str, int] = field(default_factory=dict)  # DELETE ... WHERE col < ..
    retention_rows: dict[str, int] = field(default_factory=dict)


def _time_usage(ctx: Context, relname: str, time_cols: set[str]) -> _TimeUsage:
    usage = _TimeUsage()
    for q in ctx.statements:
        if relname not in {n.split(".")[-1] for n in tables_of(str(q["query"]))}:
            continue
        calls = int(q["calls"])
        usage.calls += calls
        parsed = parse_query(str(q["query"]))
        for use in parsed.uses:
            if use.table != relname:
                continue
            if parsed.kind == "delete":
                for col in set(use.range) & time_cols:
                    usage.retention_calls[col] = usage.retention_calls.get(col, 0) + calls
                    usage.retention_rows[col] = usage.retention_rows.get(col, 0) + int(
                        q["rows"] or 0
                    )
                continue
            for col in set(use.range + use.equality) & time_cols:
                usage.filtered[col] = usage.filtered.get(col, 0) + calls
    return usage


def _partition_finding(
    ctx: Context,
    table: dict[str, Any],
    column: str,
    rows: float,
    appended: float,
    usage: _TimeUsage,
) -> Finding:
    name = display_name(table["schemaname"], table["relname"])
    size = ctx.rows(
        "SELECT pg_total_relation_size(%s) AS bytes,"
        " EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        "  AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary"
        "  AND a.attname = %s) AS key_in_pk",
        (table["relid"], table["relid"], column),
    )[0]
    days = ctx.stats_days
    inserted = int(table["n_tup_ins"])
    # under a day of counters, a daily rate would extrapolate a load test or a bulk import
    per_day = inserted / days if days and days >= 1 else None
    # aim for partitions of at most ~100M rows: a busier table gets shorter periods
    interval = "month"
    if per_day is not None and per_day * 30 > 100_000_000:
        interval = "week" if per_day * 7 <= 100_000_000 else "day"
    share = usage.filtered[column] / usage.calls if usage.calls else 0.0
    deletes = usage.retention_calls.get(column, 0)
    parts = [
        f"{name} has {rows:,.0f} rows ({_mb(size['bytes'])} with indexes)",
        f"{appended:.0%} of its inserts+updates are inserts",
    ]
    if per_day is not None:
        parts.append(f"~{per_day:,.0f} inserts/day since {ctx.stats_since}")
    else:
        parts.append(f"{inserted:,} inserts since {ctx.stats_since} (too short for a daily rate)")
    parts.append(
        f"{usage.filtered[column]:,} query calls ({share:.0%} of its statements' calls) "
        f"filter it by {column}"
    )
    if deletes:
        parts.append(
            f"{deletes:,} retention DELETEs by {column} removed "
            f"{usage.retention_rows.get(column, 0):,} rows (partition drops would replace them)"
        )
    flags = "" if size["key_in_pk"] else " --extend-primary-key"
    return Finding(
        "partition_candidates",
        Severity.INFO,
        name,
        "; ".join(parts) + f": partition it by range of {column}",
        {
            "rows": rows,
            "bytes": int(size["bytes"]),
            "insert_share": round(appended, 4),
            "inserts_since_stats_reset": inserted,
            "inserts_per_day": round(per_day, 1) if per_day is not None else None,
            "stats_since": ctx.stats_since,
            "filter_calls": usage.filtered[column],
            "filter_share": round(share, 4),
            "retention_delete_calls": deletes,
            "retention_deleted_rows": usage.retention_rows.get(column, 0),
        },
        f"hotpath partitions convert $DATABASE_URL {name} --by {column} --interval {interval}"
        f"{flags}  # online: batches, captured writes replayed, short swap; --resume after a"
        " crash",
        FixKind.ACTION,
        "queries on recent data read only recent partitions; retention becomes DROP of old "
        "partitions instead of DELETE",
    )
