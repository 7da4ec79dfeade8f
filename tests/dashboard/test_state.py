"""The dashboard's JSON and who may read it: /api/state, loopback clients, tokens, mounting."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from hotpath.dashboard import DashboardConfigError, hotpath_dashboard

from .conftest import HEALTH, ORDERS, REPORT, Planted

TOKEN = "k3Jx9-planted-dashboard-token"
LOOPBACK = ("127.0.0.1", 50123)
REMOTE = ("203.0.113.7", 50123)  # TEST-NET-3: never this machine


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def call(
    app: Any,
    path: str,
    *,
    client: tuple[str, int] | None = LOOPBACK,
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
    root_path: str = "",
    method: str = "GET",
) -> Response:
    """One HTTP request through the ASGI interface, with the client address a server sets."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": query,
        "headers": headers or [],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return Response(
        start["status"],
        dict(start["headers"]),
        b"".join(m.get("body", b"") for m in sent[1:]),
    )


def test_api_state_is_the_run_state_with_its_history(planted: Planted) -> None:
    planted.serve(2)
    app = hotpath_dashboard(planted.state)
    first = call(app, "/api/state")
    assert first.status == 200
    assert first.headers[b"content-type"] == b"application/json"
    payload = first.json()
    assert payload["poll_s"] == 2
    endpoints = {e["name"]: e for e in payload["state"]["report"]["endpoints"]}
    assert {ORDERS, REPORT, HEALTH} <= set(endpoints)
    [n_plus_one] = [f for f in endpoints[ORDERS]["fixes"] if f["kind"] == "n_plus_one"]
    assert n_plus_one["change"].startswith(".options(selectinload(User.orders))")
    assert "conftest.py" in n_plus_one["call_site"]
    [slow] = [f for f in endpoints[REPORT]["fixes"] if f["kind"] == "slow_query"]
    [flag] = [f for f in slow["evidence"]["plan_flags"] if f["kind"] == "seq_scan"]
    assert (flag["table"], flag["columns"]) == ("events", ["customer_id"])
    assert "$1" in slow["sql"]  # redacted: no literal of the request
    [sample] = payload["history"]
    count = sample["endpoints"][ORDERS][0]
    assert count == endpoints[ORDERS]["count"]

    planted.serve(1)
    second = call(app, "/api/state").json()
    assert [s["endpoints"][ORDERS][0] for s in second["history"]] == [count, count + 1]


def test_the_history_keeps_the_last_samples_only(planted: Planted) -> None:
    app = hotpath_dashboard(planted.state, history=2)
    counts = []
    for _ in range(3):
        planted.serve(1)
        counts.append(planted.state()["report"]["endpoints"][0]["count"])
        call(app, "/api/state")
    kept = call(app, "/api/state").json()["history"]
    assert len(kept) == 2
    assert kept[0]["endpoints"][sorted([ORDERS, REPORT, HEALTH])[0]][0] == counts[-1]


@pytest.mark.parametrize(
    "client", [("127.0.0.1", 1), ("127.8.9.10", 1), ("::1", 1), ("::ffff:127.0.0.1", 1)]
)
def test_loopback_clients_are_served_without_a_token(
    planted: Planted, client: tuple[str, int]
) -> None:
    app = hotpath_dashboard(planted.state)
    for path in ("/", "/api/state", "/static/uPlot.iife.min.js"):
        assert call(app, path, client=client).status == 200, path


@pytest.mark.faults
@pytest.mark.parametrize(
    ("client", "headers"),
    [
        (REMOTE, []),
        (("10.0.0.5", 1), []),
        (("::ffff:203.0.113.7", 1), []),
        (("testclient", 1), []),  # not an address at all
        (None, []),  # a Unix socket: the peer is unknown
        # a reverse proxy on this machine relays another client
        (LOOPBACK, [(b"x-forwarded-for", b"203.0.113.7")]),
        (LOOPBACK, [(b"forwarded", b"for=203.0.113.7")]),
    ],
)
def test_other_clients_are_refused_without_a_token(
    planted: Planted, client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]
) -> None:
    app = hotpath_dashboard(planted.state)
    for path in ("/", "/api/state", "/static/dashboard.js", "/nothing"):
        response = call(app, path, client=client, headers=headers)
        assert response.status == 403, path
        assert b"loopback clients only" in response.body


@pytest.mark.faults
def test_with_a_token_every_data_request_must_carry_it(planted: Planted) -> None:
    app = hotpath_dashboard(planted.state, token=TOKEN)
    for client in (REMOTE, LOOPBACK):
        for path in ("/", "/api/state"):
            refused = call(app, path, client=client)
            assert refused.status == 401, (client, path)
            assert refused.headers[b"www-authenticate"].startswith(b"Bearer")
            wrong = call(app, path, client=client, headers=[(b"authorization", b"Bearer nope")])
            assert wrong.status == 401
            assert call(app, path, client=client, query=b"token=nope").status == 401
            bearer = [(b"authorization", f"Bearer {TOKEN}".encode())]
            assert call(app, path, client=client, headers=bearer).status == 200
            assert call(app, path, client=client, query=f"token={TOKEN}".encode()).status == 200
        # the page's own assets hold no data: served to the page before it has read its token
        assert call(app, "/static/dashboard.js", client=client).status == 200


def test_mounted_under_a_prefix(planted: Planted) -> None:
    """Mounted in a FastAPI app: Starlette's Mount sets root_path; the bare prefix
    redirects to the prefix with a slash (the page's URLs are relative), keeping the query."""
    from fastapi import FastAPI

    planted.serve(1)  # its own requests: the module's other tests may run elsewhere first
    outer = FastAPI()
    outer.mount("/_hotpath", hotpath_dashboard(planted.state))
    assert call(outer, "/_hotpath/api/state").json()["state"]["report"]["endpoints"]
    page = call(outer, "/_hotpath/")
    assert page.status == 200
    assert b'src="static/dashboard.js"' in page.body
    assert call(outer, "/_hotpath/static/uPlot.min.css").status == 200
    redirect = call(outer, "/_hotpath", query=b"token=x")  # Starlette's own redirect
    assert redirect.status == 307
    assert redirect.headers[b"location"].endswith(b"/_hotpath/?token=x")
    # a server that hands the app the bare prefix gets the same answer from the app itself
    bare = call(hotpath_dashboard(planted.state), "/_hotpath", root_path="/_hotpath", query=b"a=1")
    assert (bare.status, bare.headers[b"location"]) == (307, b"/_hotpath/?a=1")
    assert call(outer, "/_hotpath/api/state", client=REMOTE).status == 403


def test_only_its_own_files_are_served(planted: Planted) -> None:
    app = hotpath_dashboard(planted.state)
    assert call(app, "/static/../_app.py").status == 404
    assert call(app, "/static/index.html").status == 404
    assert call(app, "/static/%2e%2e/__init__.py").status == 404
    assert call(app, "/api/state", method="POST").status == 405
    head = call(app, "/api/state", method="HEAD")
    assert head.status == 200
    assert head.body == b""
    license_text = call(app, "/static/uPlot.LICENSE").body
    assert b"MIT" in license_text


def test_a_failing_source_is_an_error_the_page_shows() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("workers' files unreadable")

    response = call(hotpath_dashboard(broken), "/api/state")
    assert response.status == 500
    assert "workers' files unreadable" in response.json()["error"]


@pytest.mark.faults
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"token": "short"}, "token must be a string of at least 16"),
        ({"token": 12345678901234567890}, "token must be a string"),
        ({"history": 1}, "history"),
        ({"history": 2.5}, "history"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], named: str) -> None:
    with pytest.raises(DashboardConfigError, match=named):
        hotpath_dashboard(dict, **options)


@pytest.mark.faults
def test_a_source_that_is_not_callable_is_refused() -> None:
    with pytest.raises(DashboardConfigError, match="give a function returning the RUN STATE"):
        hotpath_dashboard({"report": {}})  # type: ignore[arg-type]
