"""gather_bounded, deadlines, the circuit breaker and retries against a real local HTTP
server that is fast, slow, failing or flaky, and counts what reaches it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from prometheus_client import CollectorRegistry, generate_latest

from hotpath.concurrent import (
    BreakerCollector,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    ConcurrencyConfigError,
    DeadlineExceeded,
    gather_bounded,
    retry,
    with_deadline,
)
from hotpath.demo._server import serve

T = TypeVar("T")


class Dependency:
    """The server's own view: requests received, and the most running at once."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.running = 0
        self.peak = 0


@pytest.fixture(scope="module")
def dependency() -> Iterator[tuple[str, Dependency]]:
    state = Dependency()
    app = FastAPI()

    @app.get("/slow")
    async def slow(ms: int = 100) -> dict[str, int]:
        state.hits["slow"] += 1
        state.running += 1
        state.peak = max(state.peak, state.running)
        try:
            await asyncio.sleep(ms / 1000)
        finally:
            state.running -= 1
        return {"slept_ms": ms}

    @app.get("/fail")
    async def fail() -> None:
        state.hits["fail"] += 1
        raise HTTPException(503, "down")

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        state.hits["ok"] += 1
        return {"ok": True}

    @app.get("/flaky/{key}")
    async def flaky(key: str, failures: int = 2) -> dict[str, int]:
        state.hits[f"flaky:{key}"] += 1
        if state.hits[f"flaky:{key}"] <= failures:
            raise HTTPException(503, "try again")
        return {"attempt": state.hits[f"flaky:{key}"]}

    with serve(app) as url:
        yield url, state


async def _get(client: httpx.AsyncClient, path: str) -> httpx.Response:
    response = await client.get(path)
    response.raise_for_status()
    return response


async def test_independent_calls_run_at_once(dependency: tuple[str, Dependency]) -> None:
    """The server sees the three calls in flight together (the time of one, whatever the
    machine's load), where awaiting them in turn has one at a time."""
    url, state = dependency
    async with httpx.AsyncClient(base_url=url) as client:
        state.peak = 0
        for _ in range(3):
            await _get(client, "/slow?ms=300")
        assert state.peak == 1
        state.peak = 0
        results = await gather_bounded(*(_get(client, "/slow?ms=300") for _ in range(3)))
    assert [r.json() for r in results] == [{"slept_ms": 300}] * 3
    assert state.peak == 3


async def test_limit_caps_how_many_run_at_once(dependency: tuple[str, Dependency]) -> None:
    url, state = dependency
    async with httpx.AsyncClient(base_url=url) as client:
        state.peak = 0
        await gather_bounded(*(_get(client, "/slow?ms=50") for _ in range(8)), limit=2)
        assert state.peak == 2
        state.peak = 0
        await gather_bounded(*(_get(client, "/slow?ms=50") for _ in range(8)), limit=8)
        assert state.peak > 2


async def test_a_failure_cancels_the_rest_and_a_timeout_cancels_everything(
    dependency: tuple[str, Dependency],
) -> None:
    url, _ = dependency
    async with httpx.AsyncClient(base_url=url) as client:
        failed = Outcomes()
        with pytest.raises(httpx.HTTPStatusError):
            await gather_bounded(
                failed.watch(_get(client, "/slow?ms=3000")),
                _get(client, "/fail"),
                failed.watch(_get(client, "/slow?ms=3000")),
            )
        assert (failed.cancelled, failed.completed) == (2, 0)  # did not wait for the slow ones
        timed_out = Outcomes()
        with pytest.raises(DeadlineExceeded, match=r"longer than 0\.2s"):
            await gather_bounded(
                *(timed_out.watch(_get(client, "/slow?ms=3000")) for _ in range(3)), timeout=0.2
            )
        assert (timed_out.cancelled, timed_out.completed) == (3, 0)
        mixed = await gather_bounded(
            _get(client, "/ok"), _get(client, "/fail"), return_exceptions=True
        )
    assert mixed[0].json() == {"ok": True}
    assert isinstance(mixed[1], httpx.HTTPStatusError)


class Outcomes:
    """How the awaited calls ended, seen from the caller: a cancelled call did not wait for
    its answer (what the timings used to stand for, without depending on machine load)."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.completed = 0

    async def watch(self, call: Awaitable[T]) -> T:
        try:
            result = await call
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.completed += 1
        return result


async def test_a_slow_dependency_costs_at_most_its_deadline(
    dependency: tuple[str, Dependency],
) -> None:
    url, _ = dependency
    outcomes = Outcomes()
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(DeadlineExceeded, match="payment status"):
            await with_deadline(
                outcomes.watch(_get(client, "/slow?ms=1000")), 0.15, "payment status"
            )
        assert (outcomes.cancelled, outcomes.completed) == (1, 0)  # abandoned at the deadline
        unbounded = await outcomes.watch(_get(client, "/slow?ms=1000"))  # no deadline: waits
    assert unbounded.json() == {"slept_ms": 1000}
    assert (outcomes.cancelled, outcomes.completed) == (1, 1)


async def test_breaker_opens_fails_fast_half_opens_and_closes(
    dependency: tuple[str, Dependency],
) -> None:
    url, state = dependency
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=0.3, name="payments")
    async with httpx.AsyncClient(base_url=url) as client:
        before = state.hits["fail"]
        for _ in range(3):
            with pytest.raises(httpx.HTTPStatusError):
                await breaker.acall(_get, client, "/fail")
        assert breaker.state is BreakerState.OPEN
        for _ in range(5):
            with pytest.raises(CircuitOpenError, match="payments"):
                await breaker.acall(_get, client, "/fail")
        assert state.hits["fail"] - before == 3  # the 5 refused calls never reached it
        await asyncio.sleep(0.35)
        assert breaker.state is BreakerState.HALF_OPEN
        with pytest.raises(httpx.HTTPStatusError):
            await breaker.acall(_get, client, "/fail")  # the trial fails: open again
        assert breaker.state is BreakerState.OPEN
        await asyncio.sleep(0.35)
        await breaker.acall(_get, client, "/ok")  # the trial succeeds: closed
        assert breaker.state is BreakerState.CLOSED
    stats = breaker.stats()
    assert (stats.failures, stats.rejected, stats.opened, stats.successes) == (4, 5, 2, 1)
    registry = CollectorRegistry()
    registry.register(BreakerCollector(breaker))
    exported = generate_latest(registry).decode()
    assert 'hotpath_breaker_state{breaker="payments",state="closed"} 1.0' in exported
    assert 'hotpath_breaker_rejected_total{breaker="payments"} 5.0' in exported


async def test_without_a_breaker_every_call_waits_for_the_timeout(
    dependency: tuple[str, Dependency],
) -> None:
    url, state = dependency

    async def payment(client: httpx.AsyncClient) -> httpx.Response:
        return await _get(client, "/slow?ms=2000")  # a hung dependency

    async def ten_calls(guard: CircuitBreaker | None) -> tuple[Counter[str], int]:
        """How each call ended (a timeout waited its 0.2 s; a refusal waited for nothing),
        and the dependency's hit count before them."""
        before = state.hits["slow"]
        ended: Counter[str] = Counter()
        async with httpx.AsyncClient(base_url=url, timeout=0.2) as client:
            for _ in range(10):
                try:
                    await (guard.acall(payment, client) if guard else payment(client))
                except httpx.TimeoutException:
                    ended["timeout"] += 1
                except CircuitOpenError:
                    ended["refused"] += 1
        return ended, before

    async def reached_since(before: int, expected: int) -> int:
        """How many calls reached the dependency: on a busy machine its thread may count the
        last one after the client gave up on it (seen: 9 of 10 right after the calls)."""
        deadline = time.monotonic() + 5
        while state.hits["slow"] - before < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # and no more than expected arrive late
        return state.hits["slow"] - before

    unprotected, before = await ten_calls(None)
    reached = await reached_since(before, 10)
    protected, before = await ten_calls(CircuitBreaker(failure_threshold=3, reset_timeout=60))
    reached_with_breaker = await reached_since(before, 3)
    assert reached == 10
    assert unprotected == {"timeout": 10}
    assert reached_with_breaker == 3
    assert protected == {"timeout": 3, "refused": 7}  # 3 waits for the timeout instead of 10


def test_sync_breaker_with_fallback_and_retry(dependency: tuple[str, Dependency]) -> None:
    url, state = dependency
    with httpx.Client(base_url=url) as client:

        @retry(idempotent=True, attempts=3, base_delay=0.01)
        def status(key: str) -> dict[str, int]:
            response = client.get(f"/flaky/{key}")
            response.raise_for_status()
            return dict(response.json())

        assert status("a") == {"attempt": 3}  # two 503s, then success
        assert state.hits["flaky:a"] == 3

        @retry(idempotent=True, attempts=2, base_delay=0.01)
        def impatient(key: str) -> dict[str, int]:
            return status.__wrapped__(key)  # type: ignore[attr-defined,no-any-return]

        with pytest.raises(httpx.HTTPStatusError):
            impatient("b")
        assert state.hits["flaky:b"] == 2

        breaker = CircuitBreaker(
            failure_threshold=1, reset_timeout=60, fallback=lambda: {"degraded": True}
        )

        @breaker
        def always_down() -> dict[str, bool]:
            client.get("/fail").raise_for_status()
            return {"degraded": False}

        with pytest.raises(httpx.HTTPStatusError):
            always_down()
        assert always_down() == {"degraded": True}  # open: the fallback answers


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConcurrencyConfigError, match="not idempotent"):
        retry(idempotent=False)
    with pytest.raises(ConcurrencyConfigError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ConcurrencyConfigError):
        asyncio.run(gather_bounded(limit=0))


async def test_a_dependency_that_is_down_opens_the_breaker() -> None:
    from hotpath.stack._process import free_ports

    down = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=60, name="down")
    async with httpx.AsyncClient(base_url=down, timeout=1.0) as client:
        for _ in range(2):
            with pytest.raises(httpx.ConnectError):
                await breaker.acall(_get, client, "/ok")
        with pytest.raises(CircuitOpenError):
            await breaker.acall(_get, client, "/ok")
    assert breaker.stats().opened == 1
