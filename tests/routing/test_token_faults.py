"""Hostile read-your-writes tokens (issue 18, item 3): malformed ones are refused by the API and
ignored by the middlewares; a forged one beyond the primary's position is capped at it, so it
neither pins reads to the primary nor holds a replica connection for a whole wait."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from hotpath.routing import (
    ASGITokenMiddleware,
    AsyncReplicaSet,
    ReplicaSet,
    TokenError,
    WSGITokenMiddleware,
    async_routed_sessionmaker,
    routed_sessionmaker,
    use_token,
)
from hotpath.testing import ModuleDatabase

from ._helpers import PORT
from .conftest import Engines

FORGED = "FFFFFFFF/FFFFFFFF"
READS = 20
FORGED_REQUESTS = 8
MALFORMED = [
    " 0/10 ",
    "0/10\n",
    "0x1/0x2",
    "０/10",  # noqa: RUF001 - fullwidth digit zero: int() takes it, PostgreSQL never prints it
    "0/1\u0660",  # Arabic-Indic digit zero
    "",
    "/",
    "0/",
    "1/2/3",
    "-1/2",
    "+1/2",
    "1_0/2",
    "123456789/0",  # a half wider than 32 bits
    "0/" + "F" * 500,  # overlong
]


@pytest.fixture
def replicas(engines: Engines) -> Iterator[ReplicaSet]:
    with ReplicaSet(
        engines.primary, engines.replicas, max_lag_s=5.0, probe_interval_s=0.1
    ) as replica_set:
        yield replica_set


@pytest.fixture
async def async_replicas(hotpath_db: ModuleDatabase) -> AsyncIterator[AsyncReplicaSet]:
    primary = create_async_engine(hotpath_db.async_url)
    replica_engines = [
        create_async_engine(r.url_for(hotpath_db.name, driver="asyncpg"))
        for r in hotpath_db.replicas
    ]
    async with AsyncReplicaSet(
        primary, replica_engines, max_lag_s=5.0, probe_interval_s=0.1
    ) as replica_set:
        yield replica_set
    for engine in [primary, *replica_engines]:
        await engine.dispose()


def _replica_ports(engines: Engines) -> set[int]:
    return {e.url.port for e in engines.replicas if e.url.port is not None}


@pytest.mark.faults
@pytest.mark.parametrize("bad", MALFORMED)
def test_malformed_tokens_are_refused_with_a_clear_error(bad: str) -> None:
    with (
        pytest.raises(TokenError, match="is not a WAL position: pass a token") as caught,
        use_token(bad),
    ):
        pass
    assert len(str(caught.value)) < 250  # an overlong value is named, not copied whole
    assert repr(bad)[:20] in str(caught.value)


@pytest.mark.faults
@pytest.mark.parametrize("mode", ["fast", "wait"])
def test_a_forged_token_neither_pins_reads_to_the_primary_nor_holds_a_wait(
    engines: Engines, replicas: ReplicaSet, mode: str
) -> None:
    Session = routed_sessionmaker(replicas, mode=mode, wait_timeout_s=30.0)  # type: ignore[arg-type]
    on_replicas = 0
    with use_token(FORGED):
        for _ in range(READS):
            with Session() as session:
                on_replicas += session.execute(PORT).scalar_one() in _replica_ports(engines)
        # Core connections check the token the same way.
        with replicas.connect(readonly=True, mode=mode, wait_timeout_s=30.0) as conn:  # type: ignore[arg-type]
            on_replicas += conn.execute(PORT).scalar_one() in _replica_ports(engines)
    # Without the cap: 0 (fast: every read falls back to the primary; wait: each waits 30 s).
    assert on_replicas >= READS * 3 // 4, f"{on_replicas} of {READS + 1} reads on replicas"
    assert replicas.stats()["tokens capped"] >= on_replicas
    assert replicas.stats().get("fallback: token not replayed", 0) <= READS + 1 - on_replicas


@pytest.mark.faults
@pytest.mark.parametrize("mode", ["fast", "wait"])
async def test_async_a_forged_token_neither_pins_reads_to_the_primary_nor_holds_a_wait(
    engines: Engines, async_replicas: AsyncReplicaSet, mode: str
) -> None:
    Session = async_routed_sessionmaker(async_replicas, mode=mode, wait_timeout_s=30.0)  # type: ignore[arg-type]
    on_replicas = 0
    with use_token(FORGED):
        for _ in range(READS):
            async with Session() as session:
                port = (await session.execute(PORT)).scalar_one()
                on_replicas += port in _replica_ports(engines)
        async with async_replicas.connect(readonly=True, mode=mode, wait_timeout_s=30.0) as conn:  # type: ignore[arg-type]
            on_replicas += (await conn.execute(PORT)).scalar_one() in _replica_ports(engines)
    assert on_replicas >= READS * 3 // 4, f"{on_replicas} of {READS + 1} reads on replicas"
    assert async_replicas.stats()["tokens capped"] >= on_replicas


@pytest.mark.faults
def test_a_real_token_is_never_capped(engines: Engines, replicas: ReplicaSet) -> None:
    """A token the primary issued is at or below its position: it keeps read-your-writes."""
    Session = routed_sessionmaker(replicas)
    stale = 0
    for _ in range(READS):
        with Session() as session:
            written = session.execute(
                text("UPDATE counters SET value = value + 1 WHERE id = 2 RETURNING value")
            ).scalar_one()
            session.commit()
            read = session.execute(text("SELECT value FROM counters WHERE id = 2")).scalar_one()
            stale += read != written
    assert stale == 0
    assert replicas.stats().get("tokens capped", 0) == 0


@pytest.mark.faults
def test_wsgi_middleware_ignores_malformed_and_caps_forged_cookies(
    engines: Engines, replicas: ReplicaSet, caplog: pytest.LogCaptureFixture
) -> None:
    from flask import Flask

    Session = routed_sessionmaker(replicas)
    app = Flask(__name__)

    @app.get("/port")
    def port() -> dict[str, int]:
        with Session() as session:
            return {"port": session.execute(PORT).scalar_one()}

    app.wsgi_app = WSGITokenMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    client = app.test_client()
    on_replicas = {False: 0, True: 0}  # malformed, forged
    caplog.set_level(logging.INFO, logger="hotpath.routing")
    values = [*(b for b in MALFORMED if "\n" not in b), *[FORGED] * FORGED_REQUESTS]
    for cookie in values:  # (no client sends a newline in a header)
        client.set_cookie("hotpath_lsn", cookie)
        response = client.get("/port")
        assert response.status_code == 200, cookie
        on_replica = int(response.json["port"] in _replica_ports(engines))  # type: ignore[index]
        response = client.get("/port", headers={"x-hotpath-lsn": cookie})
        assert response.status_code == 200, cookie
        on_replica += response.json["port"] in _replica_ports(engines)  # type: ignore[index]
        on_replicas[cookie == FORGED] += on_replica
    malformed, forged = 2 * (len(values) - FORGED_REQUESTS), 2 * FORGED_REQUESTS
    assert on_replicas[False] >= malformed * 3 // 4, f"{on_replicas} of {malformed}, {forged}"
    assert on_replicas[True] >= forged * 3 // 4, f"{on_replicas} of {malformed}, {forged}"
    assert any("ignored a malformed token" in r.getMessage() for r in caplog.records)
    assert all(len(r.getMessage()) < 200 for r in caplog.records)


@pytest.mark.faults
async def test_asgi_middleware_ignores_malformed_and_caps_forged_cookies(
    engines: Engines, async_replicas: AsyncReplicaSet
) -> None:
    import httpx
    from fastapi import FastAPI

    Session = async_routed_sessionmaker(async_replicas)
    api = FastAPI()

    @api.get("/port")
    async def port() -> dict[str, int]:
        async with Session() as session:
            return {"port": (await session.execute(PORT)).scalar_one()}

    transport = httpx.ASGITransport(app=ASGITokenMiddleware(api))
    on_replicas = {False: 0, True: 0}  # malformed, forged
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        for value in [*MALFORMED, *[FORGED] * FORGED_REQUESTS]:
            # Raw header bytes as a client may send them (non-ASCII included).
            raw = value.encode("utf-8")
            for headers in ([(b"cookie", b"hotpath_lsn=" + raw)], [(b"x-hotpath-lsn", raw)]):
                response = await client.get("/port", headers=headers)
                assert response.status_code == 200, value
                on_replica = response.json()["port"] in _replica_ports(engines)
                on_replicas[value == FORGED] += on_replica
    malformed, forged = 2 * len(MALFORMED), 2 * FORGED_REQUESTS
    assert on_replicas[False] >= malformed * 3 // 4, f"{on_replicas} of {malformed}, {forged}"
    assert on_replicas[True] >= forged * 3 // 4, f"{on_replicas} of {malformed}, {forged}"
