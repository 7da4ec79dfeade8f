"""The demo's traffic: about 80% reads and 20% writes, Zipf-popular users and products.

Browsing follows the API's own ``next`` links (a page number or a keyset cursor, whichever
the configuration returns), so deep pages are reached the way users reach them. Placing an
order is followed by reading the user's orders back; a missing order counts as a stale read.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import date, timedelta

from ._load import Recorder, Step
from .shop.data import _WORDS, Scale, Zipf


def shop_mix(scale: Scale) -> Sequence[tuple[float, Step]]:
    users, products, categories = Zipf(scale.users), Zipf(scale.products), Zipf(scale.categories)

    async def browse(rec: Recorder, rng: random.Random) -> None:
        category = categories.draw(rng)
        params: dict[str, object] | None = {}
        for _ in range(1 + min(int(rng.expovariate(0.25)), 40)):
            response = await rec.request(
                "GET /categories/{category_id}/products",
                "GET",
                f"/categories/{category}/products",
                params=params,
            )
            params = response.json().get("next") if response is not None else None
            if not params or rec.expired:
                return

    async def detail(rec: Recorder, rng: random.Random) -> None:
        await rec.request("GET /products/{product_id}", "GET", f"/products/{products.draw(rng)}")

    async def orders(rec: Recorder, rng: random.Random) -> None:
        await rec.request("GET /users/{user_id}/orders", "GET", f"/users/{users.draw(rng)}/orders")

    async def profile(rec: Recorder, rng: random.Random) -> None:
        await rec.request(
            "GET /users/{user_id}/profile", "GET", f"/users/{users.draw(rng)}/profile"
        )

    async def search(rec: Recorder, rng: random.Random) -> None:
        await rec.request("GET /search", "GET", "/search", params={"q": rng.choice(_WORDS)})

    async def report(rec: Recorder, rng: random.Random) -> None:
        start = date(2025, 1, 1) + timedelta(days=rng.randrange(350))
        await rec.request(
            "GET /reports/sales",
            "GET",
            "/reports/sales",
            params={"start": start.isoformat(), "days": 7},
        )

    async def export(rec: Recorder, rng: random.Random) -> None:
        category = categories.draw(rng)
        await rec.request(
            "GET /categories/{category_id}/export", "GET", f"/categories/{category}/export"
        )

    async def order(rec: Recorder, rng: random.Random) -> None:
        user = users.draw(rng)
        lines = [
            {"product_id": p, "quantity": rng.randint(1, 3)}
            for p in dict.fromkeys(products.draws(rng, rng.randint(1, 3)))
        ]
        placed = await rec.request(
            "POST /orders", "POST", "/orders", json={"user_id": user, "lines": lines}
        )
        if placed is None or placed.status_code != 201:
            return
        mine = await rec.request("GET /users/{user_id}/orders", "GET", f"/users/{user}/orders")
        if mine is not None and placed.json()["id"] not in [o["id"] for o in mine.json()]:
            rec.stale_read()  # the user does not see the order just placed

    return [
        (0.28, browse),
        (0.15, detail),
        (0.15, orders),
        (0.10, profile),
        (0.05, search),
        (0.05, report),
        (0.02, export),
        (0.20, order),
    ]
