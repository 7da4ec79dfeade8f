"""The database detectors: a closed scope's query records become findings, each with its
call site, its fix and the time the fix would save in the scope."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
from pglast import parser

from ._fingerprint import _dollar_params, shape_of
from ._records import Finding, FindingKind

if TYPE_CHECKING:
    from ..plans import PlanFlag
    from ._plans import PlanStore
    from ._scope import Chain, LazyGroup, Origin, Scope
    from ._settings import ObserveSettings


def find_query_problems(scope: Scope, plans: PlanStore) -> list[Finding]:
    if not scope._has_evidence():
        return []
    modes = scope.modes
    settings = scope.settings
    findings: list[Finding] = []
    if modes[FindingKind.N_PLUS_ONE] != "off":
        findings += _orm_n_plus_one(scope, settings, plans)
        findings += _shape_n_plus_one(scope, settings, plans)
    if modes[FindingKind.DUPLICATE] != "off":
        findings += _duplicates(scope)
    if modes[FindingKind.SLOW_QUERY] != "off":
        findings += _slow_queries(scope, settings, plans)
    if modes[FindingKind.UNBOUNDED_RESULT] != "off":
        findings += _unbounded(scope, settings)
    if modes[FindingKind.UNUSED_EAGER_LOAD] != "off":
        findings += _unused_eager(scope)
    if modes[FindingKind.UNPRUNED_PARTITIONS] != "off":
        findings += _unpruned_partitions(scope, plans)
    return findings


def _unpruned_partitions(scope: Scope, plans: PlanStore) -> list[Finding]:
    """The explained statements whose plan reads every partition despite a condition on the
    partition key (the plan flag ``partition_not_pruned``)."""
    findings = []
    for fingerprint, group in scope._slow_groups().items():
        flags = [f for f in plans.flags(fingerprint) if f.kind == "partition_not_pruned"]
        if group.suppressed or not flags:
            continue
        findings.append(
            Finding(
                FindingKind.UNPRUNED_PARTITIONS,
                f"partitions not pruned: {flags[0].message}",
                group.call_site,
                group.count,
                fix=flags[0].suggestion,
                fingerprint=fingerprint,
                sql=scope._shown_sql(group.sql),
                plan_flags=flags,
                details={"table": flags[0].table, **flags[0].evidence},
            )
        )
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
        for group in scope._eager_groups()
        if not group.used and not group.suppressed and group.collections
    ]


def relationship_name(prop: Any) -> str:
    return f"{prop.parent.class_.__name__}.{prop.key}"


def loader_options(chain: Chain) -> str:
    """The loader chain that loads ``chain`` up front: selectinload for collections
    (one extra query per level), joinedload for many-to-one (no extra query), and a
    self-referential relationship repeated along the chain (a tree walked recursively) as one
    ``selectinload(..., recursion_depth=N)``."""
    parts = []
    i = 0
    while i < len(chain):
        prop = chain[i]
        repeats = 1
        while i + repeats < len(chain) and chain[i + repeats] is prop:
            repeats += 1
        if repeats > 1 and prop.mapper is prop.parent:
            parts.append(f"selectinload({relationship_name(prop)}, recursion_depth={repeats})")
            i += repeats
            continue
        loader = "selectinload" if prop.uselist else "joinedload"
        parts.append(f"{loader}({relationship_name(prop)})")
        i += 1
    return ".".join(parts)


def _class_name(mapper: Any) -> str:
    return str(mapper.class_.__name__)


def _subclass_of_root(root: Any, mapper: Any) -> bool:
    """Whether ``mapper`` is a subclass of the mapper the statement selected: options naming
    the subclass's attributes are then ignored unless the subclass is loaded polymorphically."""
    return root is not None and mapper is not root and mapper.isa(root)


def _relationship_fix(root: Any, chain: Chain) -> tuple[str, str]:
    """(the options, the class whose select() takes them) for lazily loaded ``chain``."""
    options = loader_options(chain)
    owner = chain[0].parent
    if _subclass_of_root(root, owner):
        # select(Vehicle).options(selectinload(Truck.trailers)) is silently ignored: the
        # subclass must be loaded polymorphically for its relationship's loader to apply
        options = f"selectin_polymorphic({_class_name(root)}, [{_class_name(owner)}]), {options}"
    return options, _class_name(root if root is not None else owner)


def _column_fix(root: Any, group: LazyGroup) -> str:
    """The fix for columns of the objects of one result loaded one object at a time."""
    mapper, chain = group.mapper, group.chain
    statement = _class_name(root if root is not None else mapper)
    if group.reason == "deferred":
        undefers = ", ".join(f"undefer({_class_name(mapper)}.{key})" for key in group.columns)
        options = f"{loader_options(chain)}.options({undefers})" if chain else undefers
        return f".options({options})  # on the select() of {statement}"
    if group.reason == "subclass":
        if chain:
            options = f"{loader_options(chain)}.selectin_polymorphic([{_class_name(mapper)}])"
        else:
            options = f"selectin_polymorphic({statement}, [{_class_name(mapper)}])"
        return f".options({options})  # on the select() of {statement}"
    if group.reason == "expired":
        return (
            "commit once after the loop, or open the Session with expire_on_commit=False: "
            "each commit expired every object, and each one then reloaded itself"
        )
    return (
        f"reload them in one query: select({_class_name(mapper)}).where(<primary key>.in_(...))"
        ".execution_options(populate_existing=True)"
    )


_RELOAD_CAUSE = {
    "expired": "they had been expired (a commit or expire())",
    "deferred": "the columns are deferred",
    "subclass": "they are columns of a subclass's own table, which the query did not read",
    "refresh": "each was refreshed",
}


def _loop_plan(plans: PlanStore, statement: str | None) -> tuple[list[PlanFlag], float | None]:
    """The flags and cost of a loop's statement's plan (taken when one of its runs was
    slow): whether each of the loop's queries is a scan an index would turn into a lookup."""
    if not statement:
        return [], None
    fingerprint = shape_of(statement).fingerprint
    return plans.flags(fingerprint), plans.cost(fingerprint)


def _loop_evidence(flags: list[PlanFlag], cost: float | None, total_ms: float) -> dict[str, Any]:
    """What a loop's queries cost together, and the index their plan asks for, if any:
    whatever is done about the loop itself, that index serves each of its queries."""
    index = next((f.suggestion for f in flags if "INDEX" in (f.suggestion or "").upper()), None)
    evidence: dict[str, Any] = {"total_ms": total_ms, "missing_index": index is not None}
    if index is not None:
        evidence["index"] = index
    if cost is not None:
        evidence["plan_cost"] = cost
    return evidence


def _orm_n_plus_one(scope: Scope, settings: ObserveSettings, plans: PlanStore) -> list[Finding]:
    # One loop is one finding: the groups of one call site and one relationship (a loop run
    # over two result sets, a recursive walk with a group per level) are folded together.
    folded: dict[tuple[Any, ...], tuple[Origin, LazyGroup, int, int, float]] = {}
    for origin, group in scope._lazy_groups():
        parents = len(group.parents)
        if group.suppressed or parents < settings.n_plus_one_threshold:
            continue
        if origin[0] == "object":
            continue  # parents of unknown origin: no evidence they came from one result
        what = group.chain[-1] if group.reason is None else (group.mapper, group.reason)
        key = (group.call_site, what) if group.call_site is not None else (id(group),)
        seen = folded.get(key)
        if seen is None:
            folded[key] = (origin, group, parents, group.queries, group.total_ms)
            continue
        first_origin, deepest, all_parents, queries, total_ms = seen
        if len(group.chain) > len(deepest.chain):  # the fix must reach the deepest level
            first_origin, deepest = origin, group
        folded[key] = (
            first_origin,
            deepest,
            all_parents + parents,
            queries + group.queries,
            total_ms + group.total_ms,
        )
    findings = []
    for origin, group, parents, queries, total_ms in folded.values():
        root = scope._root_of(origin)
        flags, cost = _loop_plan(plans, group.sql)
        if group.reason is not None:
            cls = _class_name(group.mapper)
            columns = ", ".join(group.columns) or "columns"
            findings.append(
                Finding(
                    FindingKind.N_PLUS_ONE,
                    f"N+1: {cls} columns ({columns}) were loaded one object at a time for "
                    f"{parents} {cls} objects of one result ({queries} extra queries): "
                    f"{_RELOAD_CAUSE[group.reason]}",
                    group.call_site,
                    queries,
                    fix=_column_fix(root, group),
                    sql=scope._shown_sql(group.sql) if group.sql else None,
                    plan_flags=flags,
                    details={
                        "columns": list(group.columns),
                        "reason": group.reason,
                        "parents": parents,
                        **_loop_evidence(flags, cost, total_ms),
                    },
                    saving_ms=_repeats_ms(total_ms, queries),
                )
            )
            continue
        prop = group.chain[-1]
        name = relationship_name(prop)
        options, statement = _relationship_fix(root, group.chain)
        findings.append(
            Finding(
                FindingKind.N_PLUS_ONE,
                f"N+1: {name} was lazily loaded for {parents} "
                f"{prop.parent.class_.__name__} objects of one result "
                f"({queries} extra queries)",
                group.call_site,
                queries,
                fix=f".options({options})  # on the select() of {statement}",
                sql=scope._shown_sql(group.sql) if group.sql else None,
                plan_flags=flags,
                details={
                    "relationship": name,
                    "parents": parents,
                    "loader": options,
                    **_loop_evidence(flags, cost, total_ms),
                },
                saving_ms=_repeats_ms(total_ms, queries),
            )
        )
    return findings


def _shape_n_plus_one(scope: Scope, settings: ObserveSettings, plans: PlanStore) -> list[Finding]:
    findings = []
    for (fingerprint, site), group in scope._shape_groups.items():
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
                sql=scope._shown_sql(group.sql),
                plan_flags=(flags := plans.flags(fingerprint)),
                details=_loop_evidence(flags, plans.cost(fingerprint), group.total_ms),
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
            sql=scope._shown_sql(sql),
            saving_ms=repeats_ms,
        )
        for sql, count, site, suppressed, repeats_ms in scope._duplicate_groups()
        if not suppressed and _rereadable(sql)
    ]


# built-in functions whose every call is new work: a statement calling one is not a repeat
_VOLATILE_BUILTINS = frozenset(
    (
        "nextval",
        "setval",
        "random",
        "gen_random_uuid",
        "uuid_generate_v4",
        "clock_timestamp",
        "timeofday",
        "pg_sleep",
        "pg_notify",
        "pg_advisory_lock",
        "pg_try_advisory_lock",
        "pg_advisory_xact_lock",
        "pg_advisory_unlock",
    )
)


def _rereadable(statement: str) -> bool:
    """Whether running ``statement`` again only reads what the first run read: a plain SELECT
    with no row lock and no volatile built-in. A repeated write or ``nextval()`` does new
    work each time; "reuse the first result" would be wrong advice."""
    shape = shape_of(statement)
    return shape.is_plain_select and not shape.functions & _VOLATILE_BUILTINS


def _slow_queries(scope: Scope, settings: ObserveSettings, plans: PlanStore) -> list[Finding]:
    findings = []
    for fingerprint, group in scope._slow_groups().items():
        if group.suppressed:
            continue
        flags = plans.flags(fingerprint)
        fix = next((f.suggestion for f in flags if f.suggestion), None)
        missing_index = any("INDEX" in (f.suggestion or "").upper() for f in flags)
        cost = plans.cost(fingerprint)
        findings.append(
            Finding(
                FindingKind.SLOW_QUERY,
                f"slow query: {group.max_ms:.1f} ms (threshold {settings.slow_query_ms:g} ms)"
                + (f", {group.count} times" if group.count > 1 else ""),
                group.call_site,
                group.count,
                fix=fix,
                fingerprint=fingerprint,
                sql=scope._shown_sql(group.sql),
                plan_flags=flags,
                details={
                    "max_ms": group.max_ms,
                    "total_ms": group.total_ms,
                    "missing_index": missing_index,
                    **({} if cost is None else {"plan_cost": cost}),
                },
                # A plan that asks for an index: the index turns the scan into a lookup, a
                # fraction of a millisecond, so it saves about all of the statement's time.
                # Otherwise the time over the threshold: what a fix that meets it saves at least.
                saving_ms=group.total_ms
                if missing_index
                else max(0.0, group.total_ms - group.count * settings.slow_query_ms),
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
            sql=scope._shown_sql(sql),
            details={"rows": rows},
        )
        for (fingerprint, site), (sql, rows, suppressed) in scope._unbounded_groups().items()
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
