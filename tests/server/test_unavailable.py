"""A database that cannot serve us is a 503, never a miss and never a 500."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import msgspec
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.asgi import create_app
from app.db.engine import Database, async_url, make_engine
from tests.bodies import entry_body
from tests.conftest import asgi_client

UNREACHABLE = {"status_code": 503, "detail": "the database is unreachable; retry shortly"}


async def test_reads_and_writes_answer_503_with_retry_after(down_client):
    body = entry_body({"v": "secret-value"})
    for answer in (
        await down_client.get("/api/auth-cache/some-key"),
        await down_client.post("/api/auth-cache/some-key", json=body),
        await down_client.delete("/api/auth-cache/some-key"),
    ):
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json() == UNREACHABLE
        assert "secret-value" not in answer.text


async def test_ready_turns_503_while_health_stays_200(down_client):
    ready = await down_client.get("/ready")
    assert ready.status_code == 503
    assert ready.headers["retry-after"] == "1"
    assert (await down_client.get("/health")).status_code == 200


class _KilledMidRequest(Database):
    """Kills the request's own backend after its transaction began: the database 'restarts'
    between the request's checkout and its first statement."""

    def __init__(self, engine, admin_engine) -> None:
        super().__init__(engine)
        self.admin_engine = admin_engine

    @asynccontextmanager
    async def transaction(self):
        async with super().transaction() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            async with self.admin_engine.connect() as admin:
                await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            yield conn


async def test_a_connection_lost_mid_request_is_503_and_the_next_request_recovers(
    test_settings, database_url, engine
):
    settings = msgspec.structs.replace(test_settings, db_pool_size=1)
    killer = _KilledMidRequest(make_engine(settings, database_url), engine)
    async with asgi_client(create_app(settings, database=killer)) as client:
        answer = await client.get("/api/auth-cache/some-key")
    assert answer.status_code == 503
    assert answer.json() == UNREACHABLE

    # The pool dropped the dead connection: the same engine serves the next request.
    healthy = Database(killer.engine)
    async with asgi_client(create_app(settings, database=healthy)) as client:
        assert (await client.get("/api/auth-cache/some-key")).status_code == 404
    await healthy.dispose()


async def test_a_database_without_the_table_is_503_saying_to_migrate(
    test_settings, make_empty_database
):
    url = await asyncio.to_thread(make_empty_database)
    database = Database(make_engine(test_settings, url))
    async with asgi_client(create_app(test_settings, database=database)) as client:
        for answer in (await client.get("/api/auth-cache/k"), await client.get("/ready")):
            assert answer.status_code == 503
            assert "run `keychain migrate`" in answer.json()["detail"]
    await database.dispose()


def test_libpq_sslmode_in_the_url_is_passed_to_asyncpg_as_ssl():
    url = async_url("postgresql://u:p@db.internal:5432/keychain?sslmode=require")
    assert url == "postgresql+asyncpg://u:p@db.internal:5432/keychain?ssl=require"


async def test_an_sslmode_url_connects(test_settings, database_url):
    # The test server has no TLS: 'disable' must reach it, where a raw sslmode made asyncpg
    # fail with a TypeError on every connection.
    with_sslmode = make_url(database_url).update_query_dict({"sslmode": "disable"})
    database = Database(make_engine(test_settings, async_url(with_sslmode.render_as_string(False))))
    async with asgi_client(create_app(test_settings, database=database)) as client:
        assert (await client.get("/ready")).json() == {"status": "ready"}
    await database.dispose()
