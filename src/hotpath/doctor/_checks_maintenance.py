"""Checks on maintenance: sequences near exhaustion, XID wraparound age, vacuum and analyze."""

from __future__ import annotations

from datetime import datetime, timezone

from ..plans import Severity
from ._context import Context, display_name
from ._model import Evidence, Finding, FixKind
from ._registry import check

_TYPE_MAX = {"smallint": 32767, "integer": 2147483647, "bigint": 9223372036854775807}
XID_LIMIT = 2_146_483_648  # where PostgreSQL stops assigning XIDs (2^31 minus the safety margin)
_MIN_ROWS = 1_000


@check("sequences", "Sequences near exhaustion", "read_all_data")
def sequences(ctx: Context) -> list[Finding]:
    """Sequences (or the integer columns they feed) past the used-share threshold."""
    rows = ctx.rows(
        "SELECT s.schemaname, s.sequencename, s.last_value, s.max_value, s.min_value,"
        " s.increment_by, s.data_type::text AS seq_type, col.typ AS col_type, col.tbl, col.col"
        " FROM pg_sequences s LEFT JOIN LATERAL ("
        "  SELECT format_type(a.atttypid, a.atttypmod) AS typ, t.relname AS tbl,"
        "   a.attname AS col FROM pg_depend d"
        "  JOIN pg_class t ON t.oid = d.refobjid JOIN pg_attribute a"
        "   ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
        "  WHERE d.objid = (quote_ident(s.schemaname) || '.' || quote_ident(s.sequencename))"
        "   ::regclass AND d.classid = 'pg_class'::regclass"
        "   AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1"
        " ) col ON true WHERE s.last_value IS NOT NULL"
    )
    findings = []
    for r in rows:
        if int(r["increment_by"]) < 0:
            continue  # descending sequences: rare, and their bound is min_value
        limit = int(r["max_value"])
        col_max = _TYPE_MAX.get(str(r["col_type"]))
        if col_max is not None:
            limit = min(limit, col_max)
        used = int(r["last_value"]) / limit
        if used < ctx.thresholds.sequence_used_ratio:
            continue
        name = display_name(r["schemaname"], r["sequencename"])
        column = f"{r['tbl']}.{r['col']} ({r['col_type']})" if r["tbl"] else None
        if col_max is not None and col_max < _TYPE_MAX["bigint"]:
            fix = (
                f"ALTER TABLE {r['tbl']} ALTER COLUMN {r['col']} TYPE bigint;"
                "  -- rewrites the table"
            )
        else:
            fix = f"ALTER SEQUENCE {name} AS bigint MAXVALUE 9223372036854775807;"
        findings.append(
            Finding(
                "sequences",
                Severity.CRITICAL if used >= 0.9 else Severity.WARNING,
                name,
                f"sequence {name} has used {used:.1%} of its range ({int(r['last_value']):,} of "
                f"{limit:,}){'; it feeds ' + column if column else ''}",
                {"last_value": int(r["last_value"]), "limit": limit, "used": round(used, 4)},
                fix,
                FixKind.SQL,
            )
        )
    return findings


@check("xid_wraparound", "Transaction ID wraparound age")
def xid_wraparound(ctx: Context) -> list[Finding]:
    """The oldest unfrozen XID per table (and the database): at 2^31 PostgreSQL stops writes."""
    t = ctx.thresholds
    rows = ctx.rows(
        "SELECT n.nspname AS schema, c.relname,"
        " greatest(age(c.relfrozenxid), coalesce(age(tc.relfrozenxid), 0))::bigint AS age"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid"
        " WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND greatest(age(c.relfrozenxid), coalesce(age(tc.relfrozenxid), 0)) >= %s"
        " ORDER BY age DESC LIMIT 50",
        (t.xid_age_warning,),
    )
    findings = []
    for r in rows:
        age = int(r["age"])
        name = display_name(r["schema"], r["relname"])
        findings.append(
            Finding(
                "xid_wraparound",
                Severity.CRITICAL if age >= t.xid_age_critical else Severity.WARNING,
                name,
                f"{name}'s oldest unfrozen transaction ID is {age:,} transactions old; "
                f"{XID_LIMIT - age:,} remain before PostgreSQL refuses writes",
                {"xid_age": age, "remaining": XID_LIMIT - age},
                f"VACUUM (FREEZE, VERBOSE) {name};",
                FixKind.SQL,
            )
        )
    return findings


@check("vacuum_analyze", "Tables never or long not vacuumed/analyzed")
def vacuum_analyze(ctx: Context) -> list[Finding]:
    """Tables with no statistics, stale statistics, or many dead rows waiting for vacuum."""
    t = ctx.thresholds
    now = datetime.now(timezone.utc)
    findings = []
    for r in ctx.tables:
        live, dead = int(r["n_live_tup"] or 0), int(r["n_dead_tup"] or 0)
        if live + dead < _MIN_ROWS:
            continue
        name = display_name(r["schemaname"], r["relname"])
        off = (
            " (autovacuum is disabled on it)"
            if "autovacuum_enabled=false" in (r["reloptions"] or [])
            else ""
        )
        analyzed = _latest(r["last_analyze"], r["last_autoanalyze"])
        vacuumed = _latest(r["last_vacuum"], r["last_autovacuum"])
        changed = int(r["n_mod_since_analyze"] or 0)
        evidence: Evidence = {
            "live_rows": live,
            "dead_rows": dead,
            "modified_since_analyze": changed,
            "last_analyze": str(analyzed) if analyzed else None,
            "last_vacuum": str(vacuumed) if vacuumed else None,
        }
        if analyzed is None:
            findings.append(
                Finding(
                    "vacuum_analyze",
                    Severity.WARNING,
                    name,
                    f"{name} ({live:,} rows) has never been analyzed{off}: the planner guesses its "
                    "size and value distribution",
                    evidence,
                    f"ANALYZE {name};",
                    FixKind.SQL,
                )
            )
        elif (
            now - analyzed
        ).total_seconds() > t.vacuum_stale_days * 86400 and changed > 0.1 * live:
            findings.append(
                Finding(
                    "vacuum_analyze",
                    Severity.WARNING,
                    name,
                    f"{name} was last analyzed {(now - analyzed).days} days ago and "
                    f"{changed:,} rows "
                    f"changed since{off}",
                    evidence,
                    f"ANALYZE {name};",
                    FixKind.SQL,
                )
            )
        dead_share = dead / max(1, live + dead)
        if dead_share >= t.dead_tuple_ratio and dead >= _MIN_ROWS:
            when = f"last vacuumed {vacuumed:%Y-%m-%d %H:%M}" if vacuumed else "never vacuumed"
            findings.append(
                Finding(
                    "vacuum_analyze",
                    Severity.WARNING,
                    name,
                    f"{name} has {dead:,} dead rows ({dead_share:.0%}), {when}{off}",
                    evidence,
                    f"VACUUM (ANALYZE) {name};",
                    FixKind.SQL,
                    f"{dead:,} dead rows no longer read by scans",
                )
            )
    return findings


def _latest(*stamps: datetime | None) -> datetime | None:
    present = [s for s in stamps if s is not None]
    return max(present) if present else None
