"""A simulated external payment service: fixed latency, injectable failures, or down. It
times its own handling of every request (``PaymentBehaviour.handled``), so what a caller
measures for its calls can be checked against what the service itself spent."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException

from .timing import WallClock, WallSample


@dataclass
class PaymentBehaviour:
    """How the simulated dependency behaves right now (tests and the demo change it live)."""

    latency_s: float = 0.05
    failure_rate: float = 0.0
    down: bool = False
    calls: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(11))
    # each answered request, timed from the server handing it over to its last body byte
    handled: deque[WallSample] = field(default_factory=lambda: deque(maxlen=100_000))


def create_payment_app(behaviour: PaymentBehaviour) -> FastAPI:
    app = FastAPI(title="payments (simulated)")
    app.add_middleware(WallClock, samples=behaviour.handled)

    @app.get("/payments/{user_id}")
    async def payment_status(user_id: int) -> dict[str, object]:
        behaviour.calls += 1
        if behaviour.down:
            await asyncio.sleep(30)  # a hung dependency: only a deadline saves the caller
        await asyncio.sleep(behaviour.latency_s)
        if behaviour.rng.random() < behaviour.failure_rate:
            raise HTTPException(503, "payment provider unavailable")
        return {"user_id": user_id, "card_on_file": user_id % 3 != 0, "balance_due": "0.00"}

    return app
