"""A bounded closed-loop load generator for the demo: loopback only, capped in time and
request count, N simulated users each sending their next request when the last returns.

A *step* is one user action (an ``async`` callable), usually one request, sometimes a short
flow such as "place an order, then read my orders back", checked for stale reads.

Two ways to bound a run: by time (each user runs steps until the duration is up: what a
configuration sustains), or by work (``LoadSpec.steps_per_user``: every user runs exactly that
many steps, drawn from its own seeded stream, so two configurations serve the very same
requests and their mean request times compare without the mix's noise).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from .._errors import HotpathError
from ..observe._report import Timing

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class LoadTargetError(HotpathError):
    """The load generator only sends traffic to this machine's loopback interface."""


@dataclass
class EndpointStats:
    requests: int = 0
    errors: int = 0
    latency: Timing = field(default_factory=Timing)


@dataclass
class LoadResult:
    """Per endpoint and overall: requests, errors, latency percentiles, throughput."""

    duration_s: float
    endpoints: dict[str, EndpointStats]
    stale_reads: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    steps: int = 0  # user actions completed
    complete: bool = True  # a run bounded by work: every user ran all its steps

    @property
    def requests(self) -> int:
        return sum(e.requests for e in self.endpoints.values())

    @property
    def errors(self) -> int:
        return sum(e.errors for e in self.endpoints.values())

    def throughput(self, endpoint: str | None = None) -> float:
        count = self.endpoints[endpoint].requests if endpoint else self.requests
        return count / self.duration_s if self.duration_s else 0.0

    def mean_ms(self) -> float:
        """The mean request time: with the same requests (a run bounded by work), what two
        configurations compare by (in a closed loop, throughput is its inverse)."""
        latency = self.overall_latency()
        return latency.total_ms / latency.count if latency.count else 0.0

    def overall_latency(self) -> Timing:
        merged = Timing()
        for stats in self.endpoints.values():
            merged.merge(stats.latency)
        return merged


class Recorder:
    """What steps use to send a measured request."""

    def __init__(self, client: httpx.AsyncClient, result: LoadResult) -> None:
        self.client = client
        self._result = result
        self.deadline = float("inf")  # perf_counter() time the run ends (set as it starts)

    @property
    def expired(self) -> bool:
        """The run's time is up: a step of several requests stops at the next one (its
        remaining requests would only run past the duration)."""
        return time.perf_counter() >= self.deadline

    async def request(
        self, name: str, method: str, path: str, **kwargs: Any
    ) -> httpx.Response | None:
        stats = self._result.endpoints.setdefault(name, EndpointStats())
        started = time.perf_counter()
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError:
            response = None
        stats.latency.record_ms((time.perf_counter() - started) * 1000)
        stats.requests += 1
        if response is None or response.status_code >= 500:
            stats.errors += 1
            return None
        return response

    def stale_read(self) -> None:
        self._result.stale_reads += 1


Step = Callable[[Recorder, random.Random], Awaitable[None]]


@dataclass(frozen=True)
class LoadSpec:
    """Bounds of one run."""

    concurrency: int = 16
    duration_s: float = 20.0
    max_requests: int = 200_000
    seed: int = 7
    timeout_s: float = 10.0
    # bounded by work: each user runs exactly this many steps (duration_s is then a cap; a
    # run that reaches it is marked incomplete)
    steps_per_user: int | None = None


async def run_load(base_url: str, mix: Sequence[tuple[float, Step]], spec: LoadSpec) -> LoadResult:
    """Run ``mix`` (weights and steps) against ``base_url`` until the duration or the request
    cap is reached, or each user ran ``spec.steps_per_user`` steps; every simulated user has
    its own deterministic random stream."""
    host = urlsplit(base_url).hostname or ""
    if host not in _LOOPBACK:
        raise LoadTargetError(
            f"refusing to send load to {host!r}: the demo's load generator only targets "
            "127.0.0.1 / localhost"
        )
    if not mix:
        raise LoadTargetError("the request mix is empty: give at least one (weight, step)")
    weights = [w for w, _ in mix]
    steps = [s for _, s in mix]
    result = LoadResult(0.0, {})
    # one client per simulated user: its own connection and its own cookies (a session token)
    async with contextlib.AsyncExitStack() as clients:
        recorders = [
            Recorder(
                await clients.enter_async_context(
                    httpx.AsyncClient(
                        base_url=base_url,
                        timeout=spec.timeout_s,
                        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    )
                ),
                result,
            )
            for _ in range(spec.concurrency)
        ]
        started = time.perf_counter()
        deadline = started + spec.duration_s
        for recorder in recorders:
            recorder.deadline = deadline
        steps_left = spec.steps_per_user

        async def user(number: int) -> None:
            rng = random.Random(f"{spec.seed}:{number}")
            done = 0
            while time.perf_counter() < deadline and result.requests < spec.max_requests:
                if steps_left is not None and done >= steps_left:
                    return
                step = rng.choices(steps, weights=weights, k=1)[0]
                await step(recorders[number], rng)
                done += 1
                result.steps += 1
            if steps_left is not None:
                result.complete = False  # stopped by the cap before its work was done

        await asyncio.gather(*(user(n) for n in range(spec.concurrency)))
        result.duration_s = time.perf_counter() - started
    return result
