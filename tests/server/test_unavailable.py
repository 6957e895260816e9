"""A database that cannot be reached is a 503, never a miss."""

from __future__ import annotations

import socket

import httpx
import msgspec
import pytest_asyncio

from app.asgi import create_app
from app.db.engine import Database, make_engine


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest_asyncio.fixture(loop_scope="session")
async def down_client(test_settings):
    settings = msgspec.structs.replace(test_settings, db_pool_size=1)
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/postgres"
    database = Database(make_engine(settings, url))
    app = create_app(settings, database=database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keychain.test") as client:
        yield client
    await database.dispose()


async def test_reads_and_writes_answer_503_with_retry_after(down_client):
    body = {"token_data": {"v": "secret-value"}, "credential_type": "bearer"}
    for answer in (
        await down_client.get("/api/auth-cache/some-key"),
        await down_client.post("/api/auth-cache/some-key", json=body),
        await down_client.delete("/api/auth-cache/some-key"),
    ):
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "5"
        assert answer.json() == {"status_code": 503, "detail": "the database is unreachable; retry shortly"}


async def test_ready_turns_503_while_health_stays_200(down_client):
    ready = await down_client.get("/ready")
    assert ready.status_code == 503
    assert ready.headers["retry-after"] == "5"
    assert (await down_client.get("/health")).status_code == 200
