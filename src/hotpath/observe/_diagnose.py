"""The request-wide detectors: where a closed scope's time went besides its queries.

Each reads the scope's timeline (spans, outbound operations, loop blocks) and its
breakdown, and gives findings with the call site, the ready-to-paste fix and the time the
fix would save in this scope; the roll-up sums those over the run to rank the fixes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._callsite import ignored_at
from ._records import CallSite, Finding, FindingKind, Layer
from ._timeline import IoOp, union_ms
from ._values import text_values

if TYPE_CHECKING:
    from ._scope import Scope


# read per query and per request: bound once (see ``_records.LAYERS``)
_CONNECT, _DB, _HTTP, _POOL_WAIT, _REDIS = (
    Layer.CONNECT,
    Layer.DB,
    Layer.HTTP,
    Layer.POOL_WAIT,
    Layer.REDIS,
)


def find_request_problems(scope: Scope) -> list[Finding]:
    timeline = scope.timeline
    if not (timeline.span_data or timeline.ops or timeline.blocks):
        return []
    findings: list[Finding] = []
    modes = scope.modes
    # each detector is called where there is evidence for it (this runs per request, and
    # most requests have none): connections opened, checkouts that waited, I/O operations
    # long enough to keep, loop blocks
    for kind, detector, evidence in _DETECTORS:
        if (evidence is None or getattr(timeline, evidence)) and modes[kind] != "off":
            findings += detector(scope)
    if not findings:
        return findings  # most requests: no comprehension to run
    return [f for f in findings if not ignored_at(f.call_site, f.kind.value)]


def _connection_setup(scope: Scope) -> list[Finding]:
    connect_ms = scope.breakdown_ms.get(_CONNECT, 0.0)
    settings = scope.settings
    timeline = scope.timeline
    if timeline.connect_cause is None:
        return []  # a pool opening its connections once: not a pattern to fix
    if connect_ms < 1.0 or connect_ms < settings.connect_share * scope.duration_ms:
        return []
    return [
        Finding(
            FindingKind.CONNECTION_SETUP,
            f"connection set-up: {timeline.connects} new server connection(s) took "
            f"{connect_ms:.1f} ms of {scope.duration_ms:.1f} ms ({timeline.connect_cause})",
            timeline.connect_site,
            timeline.connects,
            fix="keep connections open in a pool sized from the server's budget: "
            "create_engine(url, **PoolPlan.for_app(processes=..., concurrency_per_process=..., "
            "server_url=url).engine_kwargs())  # hotpath.pool; not NullPool, not an engine "
            "per request",
            details={"connect_ms": connect_ms, "connections": timeline.connects},
            saving_ms=connect_ms,
        )
    ]


def _pool_wait(scope: Scope) -> list[Finding]:
    wait_ms = scope.breakdown_ms.get(_POOL_WAIT, 0.0)
    settings = scope.settings
    timeline = scope.timeline
    if not timeline.pool_waits:
        return []  # every checkout found a connection: its time is the checkout's own
    if wait_ms < 1.0 or wait_ms < settings.pool_wait_share * scope.duration_ms:
        return []
    size = timeline.pool_size or "?"
    return [
        Finding(
            FindingKind.POOL_WAIT,
            f"pool wait: {wait_ms:.1f} ms of {scope.duration_ms:.1f} ms waiting for a pooled "
            f"connection (pool {size})",
            timeline.pool_wait_site,
            1,
            fix="size the pool from the server's budget: "
            "create_engine(url, **PoolPlan.for_app(processes=..., concurrency_per_process=..., "
            "server_url=url).engine_kwargs()); and hold connections shorter: "
            "hotpath.pool.instrument_pool(engine).snapshot() names the holders",
            details={"pool_wait_ms": wait_ms, "pool": size},
            saving_ms=wait_ms,
        )
    ]


def _depends(later: IoOp, earlier: IoOp, known_before: frozenset[str]) -> bool:
    """Whether ``later`` may have needed ``earlier``'s result."""
    if earlier.end > later.start:
        return False  # they overlapped: already concurrent
    if later.layer is _DB and later.in_write_transaction:
        return True  # a write transaction orders its statements
    if earlier.outputs is None:
        return True  # what it returned is not known: assume it was used
    fresh = (later.inputs & earlier.outputs) - known_before
    return bool(fresh)


def _critical_path_ms(ops: list[IoOp], known: frozenset[str]) -> tuple[float, list[bool]]:
    """The time the operations would take with every independent one run concurrently
    (the longest chain of dependent ones), and per operation whether it depends on an
    earlier one."""
    finish: list[float] = []
    dependent: list[bool] = []
    inputs_so_far: set[str] = set(known)
    for index, op in enumerate(ops):
        before = frozenset(inputs_so_far)
        start = 0.0
        depends = False
        for earlier_index in range(index):
            if _depends(op, ops[earlier_index], before):
                depends = True
                start = max(start, finish[earlier_index])
        finish.append(start + op.ms)
        dependent.append(depends)
        inputs_so_far |= op.inputs
    return (max(finish) if finish else 0.0), dependent


def _sequential_io(scope: Scope) -> list[Finding]:
    if len(scope.timeline.ops) < 2:
        return []  # one operation is nothing to overlap (most requests stop here)
    settings = scope.settings
    if scope.duration_ms <= settings.budget_for(scope.name):
        return []  # within its budget: concurrency would add complexity for nothing needed
    candidates = [
        op
        for op in scope.timeline.ops
        if op.layer in (_DB, _HTTP) and op.ms >= settings.sequential_min_ms
    ]
    # the same statement or endpoint again and again is a loop (N+1, duplicate): judged by
    # those detectors, whose fix (one query, one batched call) beats running it concurrently
    repeats: defaultdict[str, int] = defaultdict(int)
    for op in candidates:
        repeats[op.target] += 1
    ops = sorted((op for op in candidates if repeats[op.target] == 1), key=lambda op: op.start)
    if len(ops) < 2:
        return []
    actual_ms = union_ms((op.start, op.end) for op in ops)
    threshold = max(
        settings.sequential_saving_ms, settings.sequential_saving_share * scope.duration_ms
    )
    if actual_ms - max(op.ms for op in ops) < threshold:
        # even all at once they take the longest one's time: the saving cannot reach the
        # threshold, whatever depends on what (most requests stop here, values unread)
        return []
    ideal_ms, dependent = _critical_path_ms(ops, text_values(scope.timeline.known_text))
    saving = actual_ms - ideal_ms
    independent = [op for op, dep in zip(ops, dependent, strict=True) if not dep]
    if saving < threshold or len(independent) < 2:
        return []
    involved = [op for op in ops if op in independent or op is ops[0]]
    lines = ", ".join(dict.fromkeys(_line(op.site) for op in involved))
    shared = _shared_connection(involved)
    # what the calls were made with, not the scope: under ASGI a `def` endpoint runs its sync
    # Session or client in a worker thread, where there is nothing to await
    if not all(op.awaited for op in involved):
        fix = (
            "run them concurrently: concurrent.futures.ThreadPoolExecutor().map(...) over "
            f"these calls ({lines})" + (", each query on its own Session" if shared else "")
        )
    elif shared:
        fix = (
            "these queries share one session, which runs one statement at a time: give each "
            "its own session (async with Session() as s: ...) and run them with "
            f"await gather_bounded(a(), b(), ...)  # hotpath.concurrent; or combine them into "
            f"one query. Lines: {lines}"
        )
    else:
        fix = f"await gather_bounded(a(), b(), ...)  # hotpath.concurrent; run together: {lines}"
    return [
        Finding(
            FindingKind.SEQUENTIAL_IO,
            f"sequential I/O: {len(ops)} independent calls made one after another took "
            f"{actual_ms:.1f} ms; concurrently they would take {ideal_ms:.1f} ms",
            involved[0].site,
            len(involved),
            fix=fix,
            details={
                "sites": [str(op.site) for op in involved],
                "calls": [" ".join(op.label.split())[:200] for op in involved],
                "sequential_ms": actual_ms,
                "concurrent_ms": ideal_ms,
            },
            saving_ms=saving,
        )
    ]


def _line(site: CallSite | None) -> str:
    """``path:line`` of a call site (the fix names lines, the finding the function)."""
    if site is None:
        return "?"
    return str(site).split(" in ", 1)[0]


def _shared_connection(ops: list[IoOp]) -> bool:
    connections = [op.connection for op in ops if op.layer is _DB]
    return len(connections) != len(set(connections))


def _n_plus_one_http(scope: Scope) -> list[Finding]:
    if len(scope.timeline.ops) < scope.settings.http_n_plus_one_threshold:
        return []  # too few operations for a loop (the guards here run per request)
    groups: dict[tuple[CallSite | None, str], list[IoOp]] = defaultdict(list)
    for op in scope.timeline.ops:
        if op.layer is _HTTP:
            groups[(op.site, op.target)].append(op)
    findings = []
    threshold = scope.settings.http_n_plus_one_threshold
    for (site, target), ops in groups.items():
        if len(ops) < threshold:
            continue
        total = sum(op.ms for op in ops)
        wall = union_ms((op.start, op.end) for op in ops)
        if wall < 0.67 * total:
            continue  # a concurrent fan-out, not a loop
        slowest = max(op.ms for op in ops)
        findings.append(
            Finding(
                FindingKind.N_PLUS_ONE_HTTP,
                f"N+1 HTTP: {target} was called {len(ops)} times in a loop ({total:.1f} ms)",
                site,
                len(ops),
                fix="fetch them in one batched call (e.g. GET ...?ids=1,2,3) if the API has "
                "one; otherwise run them concurrently: await gather_bounded(*(get(i) for i in "
                "ids), limit=8)  # hotpath.concurrent",
                details={"endpoint": target, "calls": len(ops), "total_ms": total},
                saving_ms=max(0.0, wall - slowest),
            )
        )
    return findings


def _no_timeout(scope: Scope) -> list[Finding]:
    seen: set[tuple[CallSite | None, str]] = set()
    findings = []
    for op in scope.timeline.ops:
        if op.layer is not _HTTP or op.timeout is not False:
            continue
        key = (op.site, op.dependency)
        if key in seen:
            continue
        seen.add(key)
        findings.append(
            Finding(
                FindingKind.NO_TIMEOUT,
                f"no timeout: a call to {op.dependency} can hang the request forever",
                op.site,
                1,
                fix="give it a timeout (timeout=2.0) and a deadline with a circuit breaker: "
                "await breaker.acall(lambda: with_deadline(call(), 0.5))  # hotpath.concurrent",
                details={"dependency": op.dependency, "call": op.label},
            )
        )
    return findings


def _slow_dependency(scope: Scope) -> list[Finding]:
    if scope.duration_ms <= scope.settings.budget_for(scope.name):
        return []  # a dependency taking most of a request that meets its budget is fine
    share = scope.settings.dependency_share
    by_dependency: dict[str, list[IoOp]] = defaultdict(list)
    for op in scope.timeline.ops:
        if op.layer is _HTTP:
            by_dependency[op.dependency].append(op)
    findings = []
    redis_ms = scope.breakdown_ms.get(_REDIS, 0.0)
    if redis_ms >= 1.0 and redis_ms >= share * scope.duration_ms:
        findings.append(
            Finding(
                FindingKind.SLOW_DEPENDENCY,
                f"slow dependency: Redis took {redis_ms:.1f} ms of {scope.duration_ms:.1f} ms",
                scope.timeline.redis_site,
                1,
                fix="fewer round trips: batch the commands in a pipeline (or MGET), keep hot "
                "keys in process memory (hotpath.cache L1)",
                details={"dependency": "redis", "ms": redis_ms},
            )
        )
    for dependency, ops in by_dependency.items():
        wall = union_ms((op.start, op.end) for op in ops)
        if wall < 1.0 or wall < share * scope.duration_ms:
            continue
        findings.append(
            Finding(
                FindingKind.SLOW_DEPENDENCY,
                f"slow dependency: {dependency} took {wall:.1f} ms of {scope.duration_ms:.1f} ms",
                ops[0].site,  # the first call to it: one finding per dependency and endpoint
                len(ops),
                fix="bound it and fail fast: await breaker.acall(lambda: with_deadline(call(), "
                "0.25))  # hotpath.concurrent CircuitBreaker; run it alongside the rest with "
                "gather_bounded, or cache its answers (hotpath.cache @cached)",
                # not estimated: what it saves depends on the deadline or the hit ratio
                # chosen; when nothing else explains the endpoint, its largest layer names it
                details={"dependency": dependency, "ms": wall, "calls": len(ops)},
            )
        )
    return findings


def _blocking_calls(scope: Scope) -> list[Finding]:
    # per line and per request that ran it: one line (a shared helper, the framework's
    # serialization under the app's middleware) blocks in several endpoints, and what removes
    # it differs by endpoint (a leaner response for one, fewer rows for another)
    by_site: dict[tuple[CallSite | None, bool, str], list[float]] = defaultdict(list)
    facts: dict[tuple[CallSite | None, bool, str], tuple[str, bool]] = {}
    for block in scope.timeline.blocks:
        if block.site is None:
            # nothing of the application's was running (SQLAlchemy compiling or building rows
            # in its greenlet, a step too short for the watchdog to look): its time stays in
            # the "blocked" layer, but there is no line to fix
            continue
        overlap = (min(block.end, scope.ended) - max(block.start, scope.started)) * 1000
        if overlap <= 0:
            continue
        own = block.scope_id == id(scope)
        key = (block.site, own, scope.name if own else block.endpoint)
        by_site[key].append(overlap)
        facts[key] = (block.what, block.cpu_bound)
    findings = []
    for (site, own, blocker), overlaps in by_site.items():
        what, cpu_bound = facts[(site, own, blocker)]
        blocked = sum(overlaps)
        if own:
            where = "this request"
        elif blocker == "?":  # a task whose request could not be read (Python < 3.12)
            where = "a request in flight"
        else:
            where = f"another request ({blocker})"
        ran_in = "a request in flight" if blocker == "?" else blocker
        if cpu_bound:
            fix = (
                f"CPU-bound work on the event loop in {ran_in}: do less of it per request "
                "(return fewer rows: hotpath.paging.keyset_page; a cheaper response: "
                "ORJSONResponse) or run it in a worker: await asyncio.to_thread(fn, ...)"
            )
        else:
            fix = (
                f"a blocking call inside async def in {ran_in}: use the async client "
                "(httpx.AsyncClient, redis.asyncio, create_async_engine, asyncio.sleep) or move "
                "it off the loop: await asyncio.to_thread(fn, ...)"
            )
        findings.append(
            Finding(
                FindingKind.BLOCKING_CALL,
                f"blocking call: {what} blocked the event loop {len(overlaps)} time(s), "
                f"{blocked:.1f} ms while this request ran (in {where})",
                site,
                len(overlaps),
                fix=fix,
                details={
                    "blocked_ms": blocked,
                    "own": own,
                    "what": what,
                    "cpu_bound": cpu_bound,
                    "blocker": blocker,  # the endpoint whose step held the loop
                },
                # A call that waits still takes its time off the loop: moving it saves the
                # other requests' wait, not its own. CPU-bound work is removed by its fix
                # (less of it: a leaner response, fewer rows), its own time included.
                saving_ms=blocked if cpu_bound or not own else 0.0,
            )
        )
    return findings


# each detector, and the Timeline field its evidence is in (None: it judges the breakdown)
_DETECTORS: tuple[tuple[FindingKind, Callable[[Scope], list[Finding]], str | None], ...] = (
    (FindingKind.CONNECTION_SETUP, _connection_setup, "connect_cause"),
    (FindingKind.POOL_WAIT, _pool_wait, "pool_waits"),
    (FindingKind.SEQUENTIAL_IO, _sequential_io, "ops"),
    (FindingKind.N_PLUS_ONE_HTTP, _n_plus_one_http, "ops"),
    (FindingKind.NO_TIMEOUT, _no_timeout, "ops"),
    (FindingKind.SLOW_DEPENDENCY, _slow_dependency, None),
    (FindingKind.BLOCKING_CALL, _blocking_calls, "blocks"),
)
