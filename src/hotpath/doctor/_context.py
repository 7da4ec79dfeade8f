"""What every check receives: the session, thresholds, and catalog facts read once."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..plans import redact_literals
from ._session import Capabilities, Session


@dataclass(frozen=True)
class Thresholds:
    """Limits the checks judge by. Defaults follow PgHero's and PostgreSQL's own guidance."""

    large_table_rows: int = 10_000
    seq_scan_share: float = 0.5  # of a table's scans, for "missing index"
    unused_index_min_bytes: int = 0
    bloat_ratio: float = 0.5  # wasted share of a table's or index's pages
    bloat_min_bytes: int = 1_000_000
    cache_hit_ratio: float = 0.99
    cache_min_blocks: int = 1_000
    connections_ratio: float = 0.8  # of max_connections
    connection_source_min: int = 20  # connections from one user/application/address
    idle_in_transaction_s: float = 60.0
    long_running_s: float = 60.0
    lock_wait_s: float = 0.0
    replication_lag_bytes: int = 16 * 1024 * 1024
    replication_lag_s: float = 30.0
    slot_retained_bytes: int = 1024 * 1024 * 1024
    sequence_used_ratio: float = 0.75
    xid_age_warning: int = 500_000_000
    xid_age_critical: int = 1_500_000_000
    vacuum_stale_days: float = 7.0
    dead_tuple_ratio: float = 0.2
    temp_bytes_per_call: int = 1024 * 1024
    partition_min_rows: int = 10_000_000
    append_only_ratio: float = 0.95  # inserts among a table's writes
    top_queries: int = 10


# what each requirement needs, and the GRANT (or action) that unlocks it
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "pg_stat_statements": (
        "the pg_stat_statements extension is not installed in this database",
        "add pg_stat_statements to shared_preload_libraries (restart), then "
        "CREATE EXTENSION pg_stat_statements;",
    ),
    "monitor": (
        "other sessions' queries and replication figures need pg_monitor",
        "GRANT pg_monitor TO {user};",
    ),
    "read_all_data": (
        "column statistics (pg_stats) and sequence values need read access to the tables",
        "GRANT pg_read_all_data TO {user};  -- or GRANT SELECT ON ALL TABLES/SEQUENCES "
        "IN SCHEMA public TO {user};",
    ),
    "primary": (
        "this server is a standby: run doctor against the primary for this check",
        "",
    ),
}


@dataclass
class Context:
    session: Session
    thresholds: Thresholds = field(default_factory=Thresholds)
    show_literals: bool = False
    url: str | None = None  # for checks that open their own session (the index advisor)

    def query_text(self, sql: str | None, limit: int = 200) -> str:
        """A live query's text for a report: literals become ``$n`` unless opted in."""
        text = " ".join((sql or "").split())
        if not self.show_literals:
            text = redact_literals(text)
        return text if len(text) <= limit else text[: limit - 1] + "…"

    @property
    def caps(self) -> Capabilities:
        return self.session.capabilities

    def rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        return self.session.rows(sql, params)

    def missing(self, requirement: str) -> tuple[str, str] | None:
        """(reason, grant) when ``requirement`` is not met, else None."""
        met = {
            "pg_stat_statements": "pg_stat_statements" in self.caps.extensions,
            "monitor": self.caps.monitor,
            "read_all_data": self.caps.superuser or self.caps.read_all_data,
            "primary": not self.caps.in_recovery,
        }[requirement]
        if met:
            return None
        reason, grant = REQUIREMENTS[requirement]
        return reason, grant.format(user=_ident(self.caps.user))

    @cached_property
    def statements(self) -> list[dict[str, Any]]:
        """This database's pg_stat_statements rows, with version-independent column names."""
        total = "total_exec_time" if self.caps.server_version >= 130000 else "total_time"
        rows = self.rows(
            f"SELECT s.queryid, s.query, s.calls, s.{total} AS total_ms, s.rows,"
            " s.temp_blks_written, s.shared_blks_hit, s.shared_blks_read"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = current_database() AND s.calls > 0"
            f" ORDER BY s.{total} DESC"
        )
        # without pg_read_all_stats, other users' rows come back with no queryid and no text
        return [r for r in rows if r["queryid"] is not None and not _catalog_only(str(r["query"]))]

    @cached_property
    def tables(self) -> list[dict[str, Any]]:
        """User tables with their size, scan and write counters."""
        return self.rows(
            "SELECT t.relid, quote_ident(t.schemaname) || '.' || quote_ident(t.relname) AS qname,"
            " t.schemaname, t.relname, c.reltuples::float8 AS reltuples, c.relpages,"
            " pg_table_size(t.relid) AS bytes, t.seq_scan, t.seq_tup_read,"
            " coalesce(t.idx_scan, 0) AS idx_scan, t.n_tup_ins, t.n_tup_upd, t.n_tup_del,"
            " t.n_live_tup, t.n_dead_tup, t.n_mod_since_analyze, c.reloptions, t.last_vacuum,"
            " t.last_autovacuum, t.last_analyze,"
            " t.last_autoanalyze, c.relkind"
            " FROM pg_stat_user_tables t JOIN pg_class c ON c.oid = t.relid"
        )

    @cached_property
    def stats_days(self) -> float | None:
        """Days the usage counters have been gathering."""
        row = self.rows(
            "SELECT extract(epoch FROM now() - coalesce(stats_reset, pg_postmaster_start_time()))"
            "::float8 / 86400 AS days FROM pg_stat_database WHERE datname = current_database()"
        )
        return float(row[0]["days"]) if row else None

    @cached_property
    def stats_since(self) -> str | None:
        """When the usage counters began (last reset, else server start), in UTC."""
        row = self.rows(
            "SELECT to_char(coalesce(stats_reset, pg_postmaster_start_time())"
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"') AS since,"
            " extract(epoch FROM now() - coalesce(stats_reset, pg_postmaster_start_time()))"
            "::float8 / 86400 AS days"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
        if not row:
            return None
        return f"{row[0]['since']} ({float(row[0]['days']):,.1f} days ago)"


def _catalog_only(sql: str) -> bool:
    """Monitoring queries (doctor's own among them) that read only pg_* catalogs/views."""
    from ._sqlparse import tables_of  # noqa: PLC0415 - avoid an import cycle

    names = tables_of(sql)
    return bool(names) and all(n.split(".")[-1].startswith("pg_") for n in names)


def display_name(schema: str, name: str) -> str:
    """``orders`` for public tables, ``sales.orders`` otherwise (quoted when needed)."""
    ident = _ident(name)
    return ident if schema == "public" else f"{_ident(schema)}.{ident}"


def _ident(name: str) -> str:
    """Quoted when SQL needs it: upper case, odd characters, or a keyword (``"order"``)."""
    from pglast.stream import maybe_double_quote_name  # noqa: PLC0415 - keep imports light

    return str(maybe_double_quote_name(name))
