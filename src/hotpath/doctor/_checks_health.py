"""PgHero's remaining checks: NOT VALID constraints, vacuums in progress, unused tables,
connection sources, and a review of the settings that most often hold a server back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..plans import Severity
from ._context import Context, display_name
from ._model import Finding, FixKind
from ._registry import check

_USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'"


@check("invalid_constraints", "Constraints added NOT VALID and never validated")
def invalid_constraints(ctx: Context) -> list[Finding]:
    """CHECK and foreign-key constraints added ``NOT VALID``: new rows are checked, the rows
    that were there are not, and the planner cannot rely on them."""
    rows = ctx.rows(
        "SELECT n.nspname AS schema, t.relname AS tbl, c.conname, c.contype::text AS kind,"
        " pg_get_constraintdef(c.oid) AS def"
        " FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        f" WHERE NOT c.convalidated AND {_USER_SCHEMAS}"
        # a partition's clone is validated with its parent's constraint
        " AND c.conparentid = 0 ORDER BY 1, 2, 3"
    )
    findings = []
    for r in rows:
        table = display_name(r["schema"], r["tbl"])
        constraint = display_name("public", r["conname"])
        findings.append(
            Finding(
                "invalid_constraints",
                Severity.WARNING,
                f"{table}.{r['conname']}",
                f"constraint {r['conname']} on {table} ({r['def']}) was added NOT VALID and "
                "never validated: rows older than it may break it",
                {"kind": {"c": "check", "f": "foreign key"}.get(str(r["kind"]), str(r["kind"]))},
                f"ALTER TABLE {table} VALIDATE CONSTRAINT {constraint};  -- SHARE UPDATE "
                "EXCLUSIVE lock: reads and writes go on while it scans",
                FixKind.SQL,
            )
        )
    return findings


@check("vacuum_progress", "Vacuums running now, with their progress")
def vacuum_progress(ctx: Context) -> list[Finding]:
    """Each running (auto)vacuum from pg_stat_progress_vacuum: phase, share of the heap
    scanned, how long it has run and what it waits on. One running past the long-running
    threshold is a warning (it holds back the next vacuum of that table)."""
    rows = ctx.rows(
        "SELECT p.pid, n.nspname AS schema, c.relname, p.phase, p.heap_blks_total,"
        " p.heap_blks_scanned, a.wait_event_type, a.wait_event,"
        " a.query LIKE 'autovacuum:%%' AS auto,"
        " extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8 AS running_s"
        " FROM pg_stat_progress_vacuum p LEFT JOIN pg_class c ON c.oid = p.relid"
        " LEFT JOIN pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN pg_stat_activity a ON a.pid = p.pid"
        " WHERE p.datname = current_database() ORDER BY running_s DESC NULLS LAST"
    )
    findings = []
    for r in rows:
        name = display_name(r["schema"], r["relname"]) if r["relname"] else f"pid {r['pid']}"
        total, scanned = int(r["heap_blks_total"] or 0), int(r["heap_blks_scanned"] or 0)
        running = float(r["running_s"] or 0.0)
        waiting = (
            f", waiting on {r['wait_event_type']}:{r['wait_event']}" if r["wait_event"] else ""
        )
        share = scanned / total if total else 0.0
        findings.append(
            Finding(
                "vacuum_progress",
                Severity.WARNING if running >= ctx.thresholds.long_running_s else Severity.INFO,
                name,
                f"{'autovacuum' if r['auto'] else 'VACUUM'} of {name} (pid {r['pid']}) is "
                f"{r['phase']}: {share:.0%} of {total:,} heap blocks scanned, running "
                f"{running:,.0f} s{waiting}",
                {
                    "pid": int(r["pid"]),
                    "phase": str(r["phase"]),
                    "heap_blks_total": total,
                    "heap_blks_scanned": scanned,
                    "running_s": round(running, 1),
                },
                "let it finish; if it waits on a lock or a buffer pin, find the session "
                "holding it (lock_waits check, pg_stat_activity)",
                FixKind.ACTION,
            )
        )
    return findings


@check("unused_tables", "Tables never read since statistics began")
def unused_tables(ctx: Context) -> list[Finding]:
    """Tables with neither a sequential nor an index scan since the counters began: written,
    maybe, but never read on this server (replicas keep their own counters)."""
    young = (ctx.stats_days or 0.0) < 7
    findings = []
    for r in ctx.tables:
        if r["relkind"] == "p" or int(r["seq_scan"] or 0) + int(r["idx_scan"] or 0) > 0:
            continue  # a partitioned parent has no scans of its own: its partitions do
        name = display_name(r["schemaname"], r["relname"])
        writes = int(r["n_tup_ins"] or 0) + int(r["n_tup_upd"] or 0) + int(r["n_tup_del"] or 0)
        findings.append(
            Finding(
                "unused_tables",
                Severity.INFO,
                name,
                f"{name} ({int(r['bytes']) / 1024 / 1024:,.1f} MB, {writes:,} rows written) has "
                f"not been read since statistics began {ctx.stats_since}; check each replica "
                "and the jobs that run rarely before dropping it"
                + (" — statistics are under a week old" if young else ""),
                {"bytes": int(r["bytes"]), "rows_written": writes},
                f"confirm nothing reads {name} (replicas, monthly jobs), then archive or drop it",
                FixKind.ACTION,
            )
        )
    return findings


@check("connection_sources", "Connections by source (user, application, address)")
def connection_sources(ctx: Context) -> list[Finding]:
    """Which users, applications and client addresses hold the connections: a source holding
    many (idle ones especially) is the pool to shrink or put behind a pooler."""
    rows = ctx.rows(
        "SELECT coalesce(usename, '?') AS usename, coalesce(application_name, '') AS app,"
        " coalesce(host(client_addr), 'local') AS addr, count(*) AS n,"
        " count(*) FILTER (WHERE state = 'idle') AS idle"
        " FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " AND pid <> pg_backend_pid() GROUP BY 1, 2, 3"
        " HAVING count(*) >= %s ORDER BY n DESC, 1, 2, 3",
        (ctx.thresholds.connection_source_min,),
    )
    return [
        Finding(
            "connection_sources",
            Severity.INFO,
            f"{r['usename']}@{r['addr']} {r['app'] or '(no application_name)'}",
            f"{int(r['n'])} connections from user {r['usename']}, application "
            f"{r['app'] or '(none)'}, address {r['addr']} ({int(r['idle'])} idle)",
            {"connections": int(r["n"]), "idle": int(r["idle"])},
            "size this application's pool from its real concurrency (hotpath pool plan), or "
            "put PgBouncer in transaction mode in front of it",
            FixKind.ACTION,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class _Rule:
    """A setting left where it hurts, and what to set instead."""

    setting: str
    bad: Callable[[str], bool]  # over pg_settings.setting (the base unit)
    advice: str
    fix: str


# values compare in the setting's base unit (pg_settings.setting): 8 kB pages for
# shared_buffers/effective_cache_size, kB for work_mem/maintenance_work_mem, ms for times
_RULES = (
    _Rule(
        "shared_buffers",
        lambda v: float(v) <= 16384,
        "shared_buffers is at most 128 MB (the default): most reads go through the kernel",
        "ALTER SYSTEM SET shared_buffers = '<25% of RAM>';  -- restart",
    ),
    _Rule(
        "effective_cache_size",
        lambda v: float(v) <= 524288,
        "effective_cache_size is at most 4 GB (the default): the planner underrates indexes "
        "on a larger server",
        "ALTER SYSTEM SET effective_cache_size = '<50-75% of RAM>'; SELECT pg_reload_conf();",
    ),
    _Rule(
        "random_page_cost",
        lambda v: float(v) >= 4,
        "random_page_cost is 4 (spinning disks): on SSD or cloud storage the planner "
        "overrates sequential scans",
        "ALTER SYSTEM SET random_page_cost = 1.1; SELECT pg_reload_conf();",
    ),
    _Rule(
        "work_mem",
        lambda v: float(v) <= 4096,
        "work_mem is at most 4 MB (the default): sorts and hashes spill to disk "
        "(temp_spills check)",
        "ALTER SYSTEM SET work_mem = '16MB'; SELECT pg_reload_conf();  -- per sort/hash node",
    ),
    _Rule(
        "maintenance_work_mem",
        lambda v: float(v) <= 65536,
        "maintenance_work_mem is at most 64 MB (the default): vacuums and index builds take "
        "several passes",
        "ALTER SYSTEM SET maintenance_work_mem = '512MB'; SELECT pg_reload_conf();",
    ),
    _Rule(
        "log_min_duration_statement",
        lambda v: float(v) < 0,
        "slow statements are not logged (log_min_duration_statement = -1): no log workload "
        "for hotpath advise, no trace of slow queries",
        "ALTER SYSTEM SET log_min_duration_statement = '250ms'; SELECT pg_reload_conf();",
    ),
    _Rule(
        "track_io_timing",
        lambda v: v == "off",
        "track_io_timing is off: pg_stat_statements and EXPLAIN cannot tell I/O time apart",
        "ALTER SYSTEM SET track_io_timing = on; SELECT pg_reload_conf();",
    ),
    _Rule(
        "idle_in_transaction_session_timeout",
        lambda v: float(v) == 0,
        "idle_in_transaction_session_timeout is 0: a session left in a transaction holds its "
        "locks and stops vacuum indefinitely",
        "ALTER SYSTEM SET idle_in_transaction_session_timeout = '5min'; "
        "SELECT pg_reload_conf();  -- or per role",
    ),
)


@check("settings", "Settings review (memory, planner costs, logging, timeouts)")
def settings(ctx: Context) -> list[Finding]:
    """Settings left at values that hold most production servers back (PgHero's Tune page,
    PostgreSQL's tuning guidance), as this session sees them (database and role settings
    included). Each finding is informational: the right value depends on the machine."""
    values = {
        str(r["name"]): (str(r["setting"]), str(r["unit"] or ""), str(r["source"]))
        for r in ctx.rows(
            "SELECT name, setting, unit, source FROM pg_settings WHERE name = ANY(%s)",
            ([rule.setting for rule in _RULES],),
        )
    }
    findings = []
    for rule in _RULES:
        if rule.setting not in values:
            continue
        setting, unit, source = values[rule.setting]
        if not rule.bad(setting):
            continue
        shown = ctx.rows("SELECT current_setting(%s) AS v", (rule.setting,))[0]["v"]
        findings.append(
            Finding(
                "settings",
                Severity.INFO,
                rule.setting,
                f"{rule.advice} ({rule.setting} = {shown}, from {source})",
                {"value": setting, "unit": unit, "source": source},
                rule.fix,
                FixKind.CONFIG,
            )
        )
    return findings
