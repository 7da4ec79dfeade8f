"""Checks on replication: lag per replica, and replication slots holding WAL."""

from __future__ import annotations

from ..plans import Severity
from ._context import Context
from ._model import Finding, FixKind
from ._registry import check


@check("replication_lag", "Replication lag per replica", "monitor", "primary")
def replication_lag(ctx: Context) -> list[Finding]:
    """Each streaming replica's replay position behind the primary, in bytes and seconds."""
    rows = ctx.rows(
        "SELECT application_name, client_addr::text AS addr, state,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8 AS lag_bytes,"
        " extract(epoch FROM replay_lag)::float8 AS lag_s,"
        " pg_wal_lsn_diff(sent_lsn, replay_lsn)::float8 AS unreplayed"
        " FROM pg_stat_replication"
    )
    t = ctx.thresholds
    findings = []
    for r in rows:
        lag_bytes = float(r["lag_bytes"] or 0)
        lag_s = float(r["lag_s"] or 0)
        if lag_bytes < t.replication_lag_bytes and lag_s < t.replication_lag_s:
            continue
        findings.append(
            Finding(
                "replication_lag",
                Severity.CRITICAL if lag_s >= 10 * t.replication_lag_s else Severity.WARNING,
                f"replica {r['application_name']} ({r['addr']})",
                f"replica {r['application_name']} is {lag_bytes / 1024 / 1024:,.1f} MB "
                f"({lag_s:,.1f} s) behind the primary; "
                f"{float(r['unreplayed'] or 0) / 1024:,.0f} kB "
                "received but not replayed",
                {
                    "lag_bytes": lag_bytes,
                    "lag_s": lag_s,
                    "received_not_replayed_bytes": float(r["unreplayed"] or 0),
                },
                "check the replica: SELECT pg_is_wal_replay_paused(); long queries there with "
                "max_standby_streaming_delay; disk and network throughput",
                FixKind.ACTION,
            )
        )
    return findings


@check("replication_slots", "Replication slots holding WAL", "primary")
def replication_slots(ctx: Context) -> list[Finding]:
    """Slots (inactive ones especially) that keep WAL the server would otherwise recycle."""
    rows = ctx.rows(
        "SELECT slot_name, slot_type, active, database,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 AS retained"
        " FROM pg_replication_slots WHERE restart_lsn IS NOT NULL"
    )
    findings = []
    for r in rows:
        retained = float(r["retained"] or 0)
        if r["active"] and retained < ctx.thresholds.slot_retained_bytes:
            continue
        if not r["active"] and retained < min(ctx.thresholds.slot_retained_bytes, 16 * 1024**2):
            continue  # a freshly made, idle slot holds (almost) nothing yet
        findings.append(
            Finding(
                "replication_slots",
                Severity.CRITICAL if not r["active"] else Severity.WARNING,
                f"slot {r['slot_name']}",
                f"{'inactive' if not r['active'] else 'active'} {r['slot_type']} slot "
                f"{r['slot_name']} holds {retained / 1024 / 1024:,.1f} MB of WAL",
                {"retained_bytes": retained, "active": int(bool(r["active"]))},
                f"SELECT pg_drop_replication_slot('{r['slot_name']}');  -- if its consumer is "
                "gone; set max_slot_wal_keep_size to cap it",
                FixKind.SQL,
                f"{retained / 1024 / 1024:,.0f} MB of disk released",
            )
        )
    return findings
