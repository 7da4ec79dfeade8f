"""The database detectors: a closed scope's query records become findings, each with its
call site, its fix and the time the fix would save in the scope."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
from pglast import parser

from ._fingerprint import _dollar_params
from ._records import Finding, FindingKind

if TYPE_CHECKING:
    from ._plans import PlanStore
    from ._scope import Chain, Scope
    from ._settings import ObserveSettings


def find_query_problems(scope: Scope, plans: PlanStore) -> list[Finding]:
    if not scope.has_evidence():
        return []
    modes = scope.modes
    settings = scope.settings
    findings: list[Finding] = []
    if modes[FindingKind.N_PLUS_ONE] != "off":
        findings += _orm_n_plus_one(scope, settings)
        findings += _shape_n_plus_one(scope, settings)
    if modes[FindingKind.DUPLICATE] != "off":
        findings += _duplicates(scope)
    if modes[FindingKind.SLOW_QUERY] != "off":
        findings += _slow_queries(scope, settings, plans)
    if modes[FindingKind.UNBOUNDED_RESULT] != "off":
        findings += _unbounded(scope, settings)
    if modes[FindingKind.UNUSED_EAGER_LOAD] != "off":
        findings += _unused_eager(scope)
    return findings


def _repeats_ms(total_ms: float, runs: int) -> float:
    """What one query for all the runs saves: every run but the first (an estimate)."""
    return total_ms * (runs - 1) / runs if runs > 1 else 0.0


def _unused_eager(scope: Scope) -> list[Finding]:
    return [
        Finding(
            FindingKind.UNUSED_EAGER_LOAD,
            f"unused eager load: {group.relationship} was loaded for {group.collections} "
            "objects and never read",
            group.call_site,
            group.collections,
            fix=f"drop the eager loader of {group.relationship} from this query's .options(...)",
            details={"relationship": group.relationship},
        )
        for group in scope.eager_groups()
        if not group.used and not group.suppressed and group.collections
    ]


def relationship_name(prop: Any) -> str:
    return f"{prop.parent.class_.__name__}.{prop.key}"


def loader_options(chain: Chain) -> str:
    """The loader chain that loads ``chain`` up front: selectinload for collections
    (one extra query per level), joinedload for many-to-one (no extra query)."""
    parts = []
    for prop in chain:
        loader = "selectinload" if prop.uselist else "joinedload"
        parts.append(f"{loader}({relationship_name(prop)})")
    return ".".join(parts)


def _orm_n_plus_one(scope: Scope, settings: ObserveSettings) -> list[Finding]:
    findings = []
    for origin, group in scope.lazy_groups():
        parents = len(group.parents)
        if group.suppressed or parents < settings.n_plus_one_threshold:
            continue
        if origin[0] == "object":
            continue  # parents of unknown origin: no evidence they came from one result
        prop = group.chain[-1]
        name = relationship_name(prop)
        root = group.chain[0].parent.class_.__name__
        options = loader_options(group.chain)
        findings.append(
            Finding(
                FindingKind.N_PLUS_ONE,
                f"N+1: {name} was lazily loaded for {parents} "
                f"{prop.parent.class_.__name__} objects of one result "
                f"({group.queries} extra queries)",
                group.call_site,
                group.queries,
                fix=f".options({options})  # on the select() of {root}",
                sql=scope.shown_sql(group.sql) if group.sql else None,
                details={"relationship": name, "parents": parents, "loader": options},
                saving_ms=_repeats_ms(group.total_ms, group.queries),
            )
        )
    return findings


def _shape_n_plus_one(scope: Scope, settings: ObserveSettings) -> list[Finding]:
    findings = []
    for (fingerprint, site), group in scope.shape_groups().items():
        if group.suppressed or group.count < settings.shape_threshold:
            continue
        if len(group.param_hashes) < 2:
            continue  # same parameters every time: that is a duplicate, reported as such
        findings.append(
            Finding(
                FindingKind.N_PLUS_ONE,
                f"N+1: the same query ran {group.count} times from one call site with different "
                "parameters",
                site,
                group.count,
                fix=_batch_fix(group.sql),
                fingerprint=fingerprint,
                sql=scope.shown_sql(group.sql),
                saving_ms=_repeats_ms(group.total_ms, group.count),
            )
        )
    return findings


def _duplicates(scope: Scope) -> list[Finding]:
    return [
        Finding(
            FindingKind.DUPLICATE,
            f"duplicate: the same query with the same parameters ran {count} times",
            site,
            count,
            fix="reuse the first result: keep it in a variable, or memoize it for the request",
            sql=scope.shown_sql(sql),
            saving_ms=repeats_ms,
        )
        for sql, count, site, suppressed, repeats_ms in scope.duplicate_groups()
        if not suppressed
    ]


def _slow_queries(scope: Scope, settings: ObserveSettings, plans: PlanStore) -> list[Finding]:
    findings = []
    for fingerprint, group in scope.slow_groups().items():
        if group.suppressed:
            continue
        flags = plans.flags(fingerprint)
        fix = next((f.suggestion for f in flags if f.suggestion), None)
        findings.append(
            Finding(
                FindingKind.SLOW_QUERY,
                f"slow query: {group.max_ms:.1f} ms (threshold {settings.slow_query_ms:g} ms)"
                + (f", {group.count} times" if group.count > 1 else ""),
                group.call_site,
                group.count,
                fix=fix,
                fingerprint=fingerprint,
                sql=scope.shown_sql(group.sql),
                plan_flags=flags,
                details={
                    "max_ms": group.max_ms,
                    "total_ms": group.total_ms,
                    "missing_index": any("INDEX" in (f.suggestion or "").upper() for f in flags),
                },
                # the time over the threshold: what a fix that meets it saves at least
                saving_ms=max(0.0, group.total_ms - group.count * settings.slow_query_ms),
            )
        )
    return findings


def _unbounded(scope: Scope, settings: ObserveSettings) -> list[Finding]:
    return [
        Finding(
            FindingKind.UNBOUNDED_RESULT,
            f"unbounded result: {rows:,} rows returned without LIMIT "
            f"(max_rows={settings.max_rows})",
            site,
            1,
            fix="page it with .limit(n) and a keyset (hotpath.paging.keyset_page), or stream "
            "it with .execution_options(yield_per=1000)",
            fingerprint=fingerprint,
            sql=scope.shown_sql(sql),
            details={"rows": rows},
        )
        for (fingerprint, site), (sql, rows, suppressed) in scope.unbounded_groups().items()
        if not suppressed
    ]


def _batch_fix(statement: str) -> str:
    lookup = _equality_lookup(statement)
    if lookup is None:
        return "run it once for all the values (e.g. WHERE ... IN (...)) instead of once per item"
    table, column = lookup
    return (
        f"fetch the {table} rows in one query (WHERE {table}.{column} IN (...), e.g. "
        f"select(Model).where(Model.{column}.in_(values))), then look them up by {column}"
    )


@lru_cache(maxsize=1024)
def _equality_lookup(statement: str) -> tuple[str, str] | None:
    """(table, column) when ``statement`` is a lookup ``WHERE column = <parameter>``."""
    try:
        tree = orjson.loads(parser.parse_sql_json(_dollar_params(statement)))
        select = tree["stmts"][0]["stmt"]["SelectStmt"]
        table = select["fromClause"][0]["RangeVar"]["relname"]
        where = select["whereClause"]
    except (KeyError, IndexError, TypeError, Exception):
        return None
    nodes = [where]
    while nodes:
        node = nodes.pop()
        if isinstance(node, dict):
            expr = node.get("A_Expr")
            if expr and [n.get("String", {}).get("sval") for n in expr.get("name", [])] == ["="]:
                sides = (expr.get("lexpr", {}), expr.get("rexpr", {}))
                for col, other in (sides, sides[::-1]):
                    if "ColumnRef" in col and ("ParamRef" in other or "TypeCast" in other):
                        fields = col["ColumnRef"]["fields"]
                        return str(table), str(fields[-1]["String"]["sval"])
            nodes.extend(node.values())
        elif isinstance(node, list):
            nodes.extend(node)
    return None
