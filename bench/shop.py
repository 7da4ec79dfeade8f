"""The shop under load, naive against optimized (and each fix alone), in one run.

Quick mode: tiny scale, 5 s per configuration. Full mode: small scale (100k products, 500k
orders), 30 s per configuration, with the ablation. The targets of the demo issue are
≥ 10x throughput on the product list, p99 ≤ 1/10, and ≤ 3 queries per request on the orders
endpoint, for the optimized configuration against naive.
"""

from __future__ import annotations

from hotpath.demo._runner import DemoResult, run_shop, summary_rows
from hotpath.stack import LocalStack

from ._harness import console

LIST = "GET /categories/{category_id}/products"
ORDERS = "GET /users/{user_id}/orders"


def _markdown(result: DemoResult) -> str:
    rows = summary_rows(result)
    base = rows[0]
    lines = [
        f"scale {result.scale}, {result.concurrency} users, {result.duration_s:.0f} s per "
        "configuration",
        "",
        "| configuration | req/s | x naive | p50 ms | p95 ms | p99 ms | p99 x naive | errors "
        "| stale reads | connections opened | cache hits (L1 / Redis) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['configuration']} | {row['requests/s']:.1f} "
            f"| {row['requests/s'] / base['requests/s']:.2f} | {row['p50 ms']:.1f} "
            f"| {row['p95 ms']:.1f} | {row['p99 ms']:.1f} "
            f"| {base['p99 ms'] / row['p99 ms']:.2f} | {row['errors']} | {row['stale reads']} "
            f"| {row['connections opened']} | {_hits(row['cache hits'])} |"
        )
    naive, best = result.runs[0], result.runs[-1]
    lines += [
        "",
        "| endpoint | naive req/s | optimized req/s | x | naive p99 ms | optimized p99 ms "
        "| naive queries/req | optimized queries/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for route in (LIST, ORDERS):
        n, o = naive.load.endpoints.get(route), best.load.endpoints.get(route)
        if n is None or o is None:
            continue
        ratio = best.load.throughput(route) / naive.load.throughput(route)
        lines.append(
            f"| {route} | {naive.load.throughput(route):.1f} | {best.load.throughput(route):.1f} "
            f"| {ratio:.1f} | {n.latency.percentile_ms(99):.1f} "
            f"| {o.latency.percentile_ms(99):.1f} | {naive.queries_per_request.get(route, 0):.0f} "
            f"| {best.queries_per_request.get(route, 0):.0f} |"
        )
    lines += ["", *_targets(result)]
    if result.indexes:
        lines += ["", "Indexes `hotpath advise` recommended from the naive run:", ""]
        lines += [f"- `{ddl}`" for ddl in result.indexes]
    return "\n".join(lines) + "\n"


def _targets(result: DemoResult) -> list[str]:
    """The demo issue's targets, optimized against naive, each with its measured figure."""
    naive, best = result.runs[0], result.runs[-1]
    throughput = best.load.throughput(LIST) / naive.load.throughput(LIST)
    p99 = naive.load.overall_latency().percentile_ms(
        99
    ) / best.load.overall_latency().percentile_ms(99)
    queries = best.queries_per_request.get(ORDERS, 0)

    def verdict(met: bool) -> str:
        return "met" if met else "**not met**"

    return [
        f"- product list throughput: {throughput:.1f}x naive (target >= 10x: "
        f"{verdict(throughput >= 10)})",
        f"- p99 latency, all requests: 1/{p99:.1f} of naive (target <= 1/10: {verdict(p99 >= 10)})",
        f"- queries per request on the orders endpoint: {queries:.0f}, naive "
        f"{naive.queries_per_request.get(ORDERS, 0):.0f} (target <= 3: {verdict(queries <= 3)})",
    ]


def _hits(rates: tuple[float, float] | None) -> str:
    if rates is None:
        return "-"
    return f"{rates[0] + rates[1]:.0%} ({rates[0]:.0%} / {rates[1]:.0%})"


def run(quick: bool) -> str:
    scale, duration, ablation = ("tiny", 5.0, False) if quick else ("small", 30.0, True)
    with LocalStack(replicas=2, redis=True) as stack:
        result = run_shop(stack, scale, duration, 16, ablation, progress=console.print)
    return _markdown(result)
