"""Checks on indexes: missing, unused, duplicate, invalid, and foreign keys without one."""

from __future__ import annotations

from typing import Any

from ..plans import Severity
from ._advise import IndexAdvice, advise_indexes
from ._context import Context, display_name
from ._ddl import PARTITIONED_NOTE, index_statements
from ._errors import DoctorError
from ._model import Finding, FixKind
from ._registry import check
from ._sources import TableFilter
from ._sqlparse import parse_query, tables_of

_USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'"


@check("missing_indexes", "Large tables read mostly by sequential scans")
def missing_indexes(ctx: Context) -> list[Finding]:
    """Tables over the size threshold whose scans are mostly sequential, with the queries
    (from pg_stat_statements) that read them and the indexes ``hotpath advise`` chooses for
    them: the advisor's own answer for the same workload, one index per access pattern."""
    t = ctx.thresholds
    flagged = []
    for table in ctx.tables:
        rows = float(table["reltuples"])
        seq, idx = int(table["seq_scan"] or 0), int(table["idx_scan"] or 0)
        if rows < t.large_table_rows or seq == 0 or seq / (seq + idx) < t.seq_scan_share:
            continue
        if int(table["seq_tup_read"] or 0) / seq < t.large_table_rows:
            continue  # the scans stopped early (LIMIT): not a full read
        flagged.append(table)
    advice, why_not = _advice_for(ctx, flagged)
    findings = []
    for table in flagged:
        rows = float(table["reltuples"])
        seq, idx = int(table["seq_scan"] or 0), int(table["idx_scan"] or 0)
        per_scan = int(table["seq_tup_read"] or 0) / seq
        name = display_name(table["schemaname"], table["relname"])
        queries = _queries_on(ctx, table["relname"], name)
        chosen = [s for s in advice.suggestions if s.candidate.table == name] if advice else []
        if chosen:
            fix = "\n".join(s.ddl for s in chosen)
            if not all(s.validated for s in chosen):
                fix += "\n-- not validated (no HypoPG): hotpath advise URL --include " + name
        else:
            reason = why_not or next(
                (r.reason for r in (advice.rejected if advice else []) if f" ON {name} " in r.ddl),
                "no statement of the workload filters it on an indexable column",
            )
            fix = f"hotpath advise URL --include {name}  -- no index chosen: {reason}"
        tied = "; ".join(
            f"{int(q['calls']):,} calls of: {' '.join(str(q['query']).split())[:100]}"
            for q in queries[:3]
        )
        severity = Severity.CRITICAL if rows >= 100 * t.large_table_rows else Severity.WARNING
        findings.append(
            Finding(
                "missing_indexes",
                severity,
                name,
                f"{name} ({rows:,.0f} rows) was read by {seq:,} sequential scans "
                f"({seq / (seq + idx):.0%} of its scans, {per_scan:,.0f} rows each)"
                + (f"; queries: {tied}" if tied else ""),
                {
                    "rows": rows,
                    "seq_scan": seq,
                    "idx_scan": idx,
                    "rows_per_seq_scan": round(per_scan),
                    "queries": len(queries),
                    "indexes": len(chosen),
                },
                fix,
                FixKind.SQL if chosen else FixKind.ACTION,
                f"~{seq * per_scan:,.0f} rows read by sequential scans so far",
            )
        )
    return findings


def _advice_for(ctx: Context, flagged: list[dict[str, Any]]) -> tuple[IndexAdvice | None, str]:
    """The advisor's answer for the pg_stat_statements workload, on the flagged tables only
    (``hotpath advise URL --include ...``), or why there is none."""
    if not flagged:
        return None, ""
    if "pg_stat_statements" not in ctx.caps.extensions or ctx.url is None:
        return None, "pg_stat_statements is not installed: give advise a --workload"
    tables = TableFilter.of(include=[f"{t['schemaname']}.{t['relname']}" for t in flagged])
    try:
        advice = advise_indexes(
            ctx.url, None, statement_timeout_ms=ctx.session.statement_timeout_ms, tables=tables
        )
    except DoctorError as exc:
        return None, str(exc)
    return advice, ""


def _queries_on(ctx: Context, relname: str, name: str) -> list[dict[str, Any]]:
    if "pg_stat_statements" not in ctx.caps.extensions:
        return []
    return [
        q
        for q in ctx.statements
        if {relname, name} & set(tables_of(str(q["query"])))
        and parse_query(str(q["query"])).kind in ("select", "update", "delete")
    ]


@check("unused_indexes", "Unused indexes (no scans since statistics began)")
def unused_indexes(ctx: Context) -> list[Finding]:
    """Indexes never scanned, excluding primary keys, unique, replica-identity and
    constraint-backing indexes (they enforce something even when never read)."""
    rows = ctx.rows(
        "SELECT s.schemaname, s.relname, s.indexrelname, s.idx_scan,"
        " pg_relation_size(s.indexrelid) AS bytes, pg_get_indexdef(s.indexrelid) AS def"
        " FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid"
        " WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary"
        " AND NOT i.indisreplident AND i.indisvalid"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid)"
        " AND pg_relation_size(s.indexrelid) >= %s ORDER BY bytes DESC",
        (ctx.thresholds.unused_index_min_bytes,),
    )
    since = ctx.stats_since
    # a week of counters covers weekly jobs; younger statistics prove little
    young = (ctx.stats_days or 0.0) < 7
    caution = " — statistics are under a week old: wait before dropping" if young else ""
    findings = []
    for r in rows:
        name = display_name(r["schemaname"], r["indexrelname"])
        findings.append(
            Finding(
                "unused_indexes",
                Severity.INFO if young else Severity.WARNING,
                name,
                f"index {name} on {r['relname']} ({_mb(r['bytes'])}) has not been scanned since "
                f"statistics began {since}; replicas keep their own usage counters — check "
                f"each replica before dropping{caution}",
                {"idx_scan": 0, "bytes": int(r["bytes"]), "stats_since": since},
                f"DROP INDEX CONCURRENTLY {name};  -- recreate with: {r['def']}",
                FixKind.SQL,
                f"{_mb(r['bytes'])} of disk and one less index to update on every write",
            )
        )
    return findings


@check("duplicate_indexes", "Duplicate and redundant indexes")
def duplicate_indexes(ctx: Context) -> list[Finding]:
    """Indexes whose key columns equal, or are a prefix of, another index's on the same table
    (same access method, operator classes, expressions and predicate)."""
    rows = ctx.rows(
        "SELECT n.nspname AS schema, ca.relname AS dup, cb.relname AS keeper, t.relname AS tbl,"
        " pg_relation_size(a.indexrelid) AS bytes, pg_get_indexdef(a.indexrelid) AS dup_def,"
        " pg_get_indexdef(b.indexrelid) AS keeper_def"
        " FROM pg_index a JOIN pg_index b ON a.indrelid = b.indrelid"
        "  AND a.indexrelid <> b.indexrelid"
        " JOIN pg_class ca ON ca.oid = a.indexrelid JOIN pg_class cb ON cb.oid = b.indexrelid"
        " JOIN pg_class t ON t.oid = a.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
        f" WHERE {_USER_SCHEMAS} AND ca.relam = cb.relam AND a.indisvalid AND b.indisvalid"
        " AND NOT a.indisprimary AND NOT a.indisunique AND a.indnatts = a.indnkeyatts"
        " AND a.indnkeyatts <= b.indnkeyatts"
        " AND (a.indkey::int2[])[0:a.indnkeyatts - 1] = (b.indkey::int2[])[0:a.indnkeyatts - 1]"
        " AND (a.indclass::oid[])[0:a.indnkeyatts - 1] = (b.indclass::oid[])[0:a.indnkeyatts - 1]"
        " AND coalesce(pg_get_expr(a.indexprs, a.indrelid), '')"
        "  = coalesce(pg_get_expr(b.indexprs, b.indrelid), '')"
        " AND coalesce(pg_get_expr(a.indpred, a.indrelid), '')"
        "  = coalesce(pg_get_expr(b.indpred, b.indrelid), '')"
        # identical pairs: report one of the two (keep the unique one, or the older one)
        " AND (a.indnatts < b.indnatts OR b.indisunique OR a.indexrelid > b.indexrelid)"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = a.indexrelid)"
        " ORDER BY bytes DESC"
    )
    findings = []
    seen: set[str] = set()
    for r in rows:
        name = display_name(r["schema"], r["dup"])
        if name in seen:
            continue
        seen.add(name)
        findings.append(
            Finding(
                "duplicate_indexes",
                Severity.WARNING,
                name,
                f"{name} on {r['tbl']} is redundant: {display_name(r['schema'], r['keeper'])} "
                "covers the same leading columns",
                {"bytes": int(r["bytes"])},
                f"DROP INDEX CONCURRENTLY {name};  -- covered by: {r['keeper_def']}",
                FixKind.SQL,
                f"{_mb(r['bytes'])} of disk and one less index to update on every write",
            )
        )
    return findings


@check("invalid_indexes", "Invalid indexes (failed CREATE INDEX CONCURRENTLY)")
def invalid_indexes(ctx: Context) -> list[Finding]:
    """Indexes left invalid by a failed concurrent build: written to on every change, never
    used by a query. Indexes being built right now are not reported."""
    progress = (
        " AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p"
        "  WHERE p.index_relid = i.indexrelid)"
    )
    rows = ctx.rows(
        "SELECT n.nspname AS schema, c.relname AS idx, t.relname AS tbl,"
        " pg_relation_size(i.indexrelid) AS bytes, pg_get_indexdef(i.indexrelid) AS def"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE NOT i.indisvalid AND {_USER_SCHEMAS}{progress}"
    )
    findings = []
    for r in rows:
        name = display_name(r["schema"], r["idx"])
        definition = str(r["def"]).replace(" INDEX ", " INDEX CONCURRENTLY ", 1)
        findings.append(
            Finding(
                "invalid_indexes",
                Severity.WARNING,
                name,
                f"index {name} on {r['tbl']} is invalid (a CREATE INDEX CONCURRENTLY failed): "
                "it slows every write and serves no read",
                {"bytes": int(r["bytes"])},
                f"DROP INDEX CONCURRENTLY {name}; {definition};",
                FixKind.SQL,
            )
        )
    return findings


@check("fk_without_index", "Foreign keys without an index")
def fk_without_index(ctx: Context) -> list[Finding]:
    """Foreign keys whose columns lead no index: every delete or key update on the referenced
    table scans the referencing table, and joins on the key cannot use an index.

    A foreign key declared on a partitioned table is one finding (its per-partition clones,
    ``conparentid <> 0``, are not reported again); it is indexed when every leaf partition has
    an index led by its columns, compared by column name (a partition's attribute numbers may
    differ from its parent's)."""
    rows = ctx.rows(
        "WITH fk AS ("
        " SELECT c.oid, c.conname, c.conrelid, c.confrelid::regclass::text AS referenced,"
        "  (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(c.conkey)"
        "   WITH ORDINALITY AS k(attnum, ord) JOIN pg_attribute a"
        "   ON a.attrelid = c.conrelid AND a.attnum = k.attnum) AS cols"
        " FROM pg_constraint c WHERE c.contype = 'f' AND c.conparentid = 0),"
        " leaf AS ("
        " SELECT fk.oid AS fk, t.oid AS relid FROM fk JOIN pg_class t ON t.oid = fk.conrelid"
        "  WHERE t.relkind <> 'p'"
        " UNION ALL SELECT fk.oid, p.relid FROM fk JOIN pg_class t ON t.oid = fk.conrelid"
        "  CROSS JOIN LATERAL pg_partition_tree(fk.conrelid) p"
        "  WHERE t.relkind = 'p' AND p.isleaf)"
        " SELECT fk.conname, fk.conrelid::int8 AS oid, fk.referenced, fk.cols,"
        " n.nspname AS schema, t.relname AS tbl, t.relkind::text AS relkind,"
        " (SELECT coalesce(sum(greatest(lc.reltuples, 0)), 0) FROM leaf l"
        "   JOIN pg_class lc ON lc.oid = l.relid WHERE l.fk = fk.oid)::float8 AS rows,"
        " (SELECT count(*) FROM leaf l WHERE l.fk = fk.oid)::int AS leaves,"
        " (SELECT count(*) FROM leaf l WHERE l.fk = fk.oid AND NOT EXISTS ("
        "   SELECT 1 FROM pg_index i WHERE i.indrelid = l.relid AND i.indisvalid"
        "   AND i.indpred IS NULL AND i.indnkeyatts >= cardinality(fk.cols)"
        "   AND (SELECT array_agg(a.attname::text ORDER BY k.ord)"
        "    FROM unnest((i.indkey::int2[])[0:cardinality(fk.cols) - 1])"
        "    WITH ORDINALITY AS k(attnum, ord) JOIN pg_attribute a"
        "    ON a.attrelid = i.indrelid AND a.attnum = k.attnum)::text[]"
        "    @> fk.cols AND (SELECT array_agg(a.attname::text)"
        "    FROM unnest((i.indkey::int2[])[0:cardinality(fk.cols) - 1]) AS k(attnum)"
        "    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)::text[]"
        "    <@ fk.cols))::int AS unindexed"
        " FROM fk JOIN pg_class t ON t.oid = fk.conrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        f" WHERE {_USER_SCHEMAS} ORDER BY n.nspname, t.relname, fk.conname"
    )
    findings = []
    for r in rows:
        if int(r["unindexed"]) == 0:
            continue
        table = display_name(r["schema"], r["tbl"])
        names = [display_name("public", c) for c in r["cols"]]  # quoted where needed
        cols = ", ".join(names)
        rows_n = max(0.0, float(r["rows"]))
        severity = Severity.WARNING if rows_n >= ctx.thresholds.large_table_rows else Severity.INFO
        partitioned = r["relkind"] == "p"
        statements = index_statements(ctx.rows, int(r["oid"]), f" ({cols})", list(r["cols"]))
        fix = "\n".join(statements)
        if partitioned:
            fix += "\n-- " + PARTITIONED_NOTE.format(table=table, body=f" ({cols})")
        where = (
            f" ({int(r['unindexed'])} of its {int(r['leaves'])} partitions lack one)"
            if partitioned
            else ""
        )
        findings.append(
            Finding(
                "fk_without_index",
                severity,
                f"{table}.{r['conname']}",
                f"foreign key {r['conname']} on {table} ({cols}) -> {r['referenced']} has no "
                f"index{where}: each delete/update of a {r['referenced']} key scans {table} "
                f"({rows_n:,.0f} rows)",
                {
                    "rows": rows_n,
                    "partitions": int(r["leaves"]) if partitioned else None,
                    "partitions_without_index": int(r["unindexed"]) if partitioned else None,
                },
                fix,
                FixKind.SQL,
                f"an index lookup instead of a {rows_n:,.0f}-row scan per referenced-key change",
            )
        )
    return findings


def _mb(value: object) -> str:
    return f"{int(value) / 1024 / 1024:,.1f} MB"  # type: ignore[call-overload]
