"""Checks on live sessions: connections, idle in transaction, long-running queries, lock waits."""

from __future__ import annotations

from ..plans import Severity
from ._context import Context
from ._model import Finding, FixKind
from ._registry import check

_OTHERS = "pid <> pg_backend_pid() AND backend_type = 'client backend'"


@check("connections", "Connections by state against max_connections")
def connections(ctx: Context) -> list[Finding]:
    """Client connections by state, against the connections ordinary users may open."""
    limit = ctx.rows(
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int AS usable"
    )[0]["usable"]
    states = ctx.rows(
        "SELECT coalesce(state, 'unknown') AS state, count(*) AS n FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 2 DESC"
    )
    total = sum(int(s["n"]) for s in states)
    ratio = total / max(1, int(limit))
    if ratio < ctx.thresholds.connections_ratio:
        return []
    by_state = {str(s["state"]): int(s["n"]) for s in states}
    idle = by_state.get("idle", 0)
    return [
        Finding(
            "connections",
            Severity.CRITICAL if ratio >= 0.95 else Severity.WARNING,
            ctx.caps.database,
            f"{total} of {limit} usable connections are open ({ratio:.0%}): "
            + ", ".join(f"{n} {state}" for state, n in by_state.items()),
            {"connections": total, "usable": int(limit), "ratio": round(ratio, 4), **by_state},
            "put a pooler (PgBouncer, transaction mode) in front, or shrink application pools"
            + (f" — {idle} connections sit idle" if idle else ""),
            FixKind.ACTION,
        )
    ]


@check("idle_in_transaction", "Sessions idle in transaction", "monitor")
def idle_in_transaction(ctx: Context) -> list[Finding]:
    """Sessions that opened a transaction and went quiet: they hold locks and stop vacuum."""
    rows = ctx.rows(
        "SELECT pid, usename, application_name, query,"
        " extract(epoch FROM now() - state_change)::float8 AS idle_s,"
        " extract(epoch FROM now() - xact_start)::float8 AS xact_s"
        f" FROM pg_stat_activity WHERE {_OTHERS}"
        " AND state IN ('idle in transaction', 'idle in transaction (aborted)')"
        " AND now() - state_change > make_interval(secs => %s) ORDER BY idle_s DESC",
        (ctx.thresholds.idle_in_transaction_s,),
    )
    return [
        Finding(
            "idle_in_transaction",
            Severity.CRITICAL if float(r["idle_s"]) >= 600 else Severity.WARNING,
            f"pid {r['pid']}",
            f"pid {r['pid']} ({r['usename']}, {r['application_name'] or 'no application_name'})"
            f" has been idle in transaction for {float(r['idle_s']):,.0f} s; last statement: "
            f"{ctx.query_text(r['query'])}",
            {"idle_s": round(float(r["idle_s"]), 1), "transaction_s": round(float(r["xact_s"]), 1)},
            f"SELECT pg_terminate_backend({r['pid']});  -- and set "
            "idle_in_transaction_session_timeout = '60s' for the application's role",
            FixKind.SQL,
        )
        for r in rows
    ]


@check("long_running", "Long-running queries", "monitor")
def long_running(ctx: Context) -> list[Finding]:
    """Active statements running longer than the threshold (autovacuum excluded)."""
    rows = ctx.rows(
        "SELECT pid, usename, query, wait_event_type,"
        " extract(epoch FROM now() - query_start)::float8 AS running_s"
        f" FROM pg_stat_activity WHERE {_OTHERS} AND state = 'active'"
        " AND now() - query_start > make_interval(secs => %s) ORDER BY running_s DESC",
        (ctx.thresholds.long_running_s,),
    )
    return [
        Finding(
            "long_running",
            Severity.CRITICAL if float(r["running_s"]) >= 3600 else Severity.WARNING,
            f"pid {r['pid']}",
            f"pid {r['pid']} ({r['usename']}) has run for {float(r['running_s']):,.0f} s"
            f"{' waiting on ' + str(r['wait_event_type']) if r['wait_event_type'] else ''}: "
            f"{ctx.query_text(r['query'])}",
            {"running_s": round(float(r["running_s"]), 1)},
            f"SELECT pg_cancel_backend({r['pid']});  -- and set statement_timeout for the role",
            FixKind.SQL,
        )
        for r in rows
    ]


@check("lock_waits", "Lock waits with the blocking chain", "monitor")
def lock_waits(ctx: Context) -> list[Finding]:
    """Sessions waiting on a lock, with the chain of sessions blocking them up to the root."""
    rows = ctx.rows(
        "SELECT pid, pg_blocking_pids(pid) AS blockers, query, state, wait_event_type,"
        " extract(epoch FROM now() - coalesce(query_start, backend_start))::float8 AS age_s,"
        " extract(epoch FROM now() - state_change)::float8 AS waiting_s"
        " FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
    )
    by_pid = {int(r["pid"]): r for r in rows}
    findings = []
    for r in rows:
        blockers = [int(b) for b in r["blockers"] or ()]
        if not blockers or float(r["waiting_s"]) < ctx.thresholds.lock_wait_s:
            continue
        chain = [int(r["pid"])]
        current = blockers[0]
        while current not in chain:  # follow the first blocker to the root (cycles: deadlock)
            chain.append(current)
            parent = by_pid.get(current)
            nxt = [int(b) for b in (parent["blockers"] if parent else None) or ()]
            if not nxt:
                break
            current = nxt[0]
        root = by_pid.get(chain[-1])
        root_text = (
            f"root blocker pid {chain[-1]} ({root['state']}): {ctx.query_text(root['query'])}"
            if root
            else f"root blocker pid {chain[-1]}"
        )
        findings.append(
            Finding(
                "lock_waits",
                Severity.CRITICAL if float(r["waiting_s"]) >= 60 else Severity.WARNING,
                f"pid {r['pid']}",
                f"pid {r['pid']} has waited {float(r['waiting_s']):,.1f} s for a lock: "
                f"chain {' <- '.join(str(p) for p in chain)}; {root_text}; waiting query: "
                f"{ctx.query_text(r['query'])}",
                {
                    "waiting_s": round(float(r["waiting_s"]), 2),
                    "chain_length": len(chain),
                    "root_pid": chain[-1],
                    "blocked_by": len(blockers),
                },
                f"SELECT pg_cancel_backend({chain[-1]});  -- or pg_terminate_backend if it is "
                "idle in transaction; set lock_timeout in migrations",
                FixKind.SQL,
            )
        )
    return findings
