"""diagnose quick start: where a FastAPI app's time goes, and which fix comes first.

The app has three planted problems: a connection opened per request (NullPool), three
independent calls to a payment API awaited one after another, and a blocking ``time.sleep``
inside ``async def``. hotpath names each with its line and fix, ranked by the time it saves.

Run: .venv/bin/python examples/diagnose_quickstart.py   (starts its own local PostgreSQL and a
payment stub on loopback)
"""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from hotpath.observe import ASGIMiddleware, Profiler
from hotpath.stack import LocalStack


class PaymentServer(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of concurrent connects (the default 5 makes them retry)


class Payments(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(0.03)  # the provider answers in 30 ms
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        return


def make_app(database_url: str, payments_url: str, profiler: Profiler) -> FastAPI:
    engine = create_async_engine(database_url, poolclass=NullPool)  # connect per request
    client = httpx.AsyncClient(base_url=payments_url, timeout=2)
    app = FastAPI()
    app.add_middleware(ASGIMiddleware, profiler=profiler)

    @app.get("/users/{user_id}/profile")
    async def profile(user_id: int) -> dict[str, int]:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        await client.get(f"/balance?user={user_id}")  # three independent calls, in turn
        await client.get(f"/invoices?user={user_id}")
        await client.get(f"/cards?user={user_id}")
        return {"user": user_id}

    @app.get("/report")
    async def report() -> dict[str, int]:
        time.sleep(0.05)  # blocks the event loop: every request in flight waits
        return {"ok": 1}

    return app


async def load(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        for user_id in range(20):
            await asyncio.gather(client.get(f"/users/{user_id}/profile"), client.get("/report"))


def main() -> None:
    payments = PaymentServer(("127.0.0.1", 0), Payments)
    threading.Thread(target=payments.serve_forever, daemon=True).start()
    with LocalStack(replicas=0, redis=False) as stack:
        profiler = Profiler(budget_ms=50, modes={"n_plus_one": "off"})
        profiler.instrument()
        url = stack.primary.url_for("postgres", driver="asyncpg")
        app = make_app(url, f"http://127.0.0.1:{payments.server_address[1]}", profiler)
        asyncio.run(load(app))
        profiler.report().print()
    payments.shutdown()


if __name__ == "__main__":
    import logging

    logging.getLogger("hotpath.observe").setLevel(logging.ERROR)  # the report says it all
    main()
