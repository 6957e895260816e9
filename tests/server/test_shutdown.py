"""SIGTERM on a real `keychain serve`: what it took is answered, its counts are written, it exits 0."""

from __future__ import annotations

import asyncio
import signal
import threading

import asyncpg
import httpx
import pytest

from app.db.tables import keychain
from tests.bodies import entry_body
from tests.conftest import TEST_KEY, TEST_KEY_ID, qualified_name
from tests.local_server import LocalKeychainServer

BODY = entry_body({"value": "sk-drained"})


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture
def server(own_database, tmp_path):
    served = LocalKeychainServer(
        tmp_path / "server",
        database_url=own_database,
        encryption_keys=f"{TEST_KEY_ID}:{TEST_KEY}",
        allow_open_api="true",
        db_pool_size="1",  # so that a request can be made to wait for the database
        hit_flush_seconds="3600",  # counts reach the table only when the server stops
        sweep_interval_seconds="0",
    )
    served.start()
    yield served
    served.stop()


async def _wait_for_lock_waiter(conn: asyncpg.Connection) -> None:
    async with asyncio.timeout(10):
        while not await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'keychain' AND wait_event_type = 'Lock'"
        ):
            await asyncio.sleep(0.02)


async def test_sigterm_answers_the_requests_in_flight_writes_their_counts_and_exits_0(
    server, own_database, test_settings
):
    table = qualified_name(keychain, test_settings.db_schema)
    async with httpx.AsyncClient(base_url=server.url) as http:
        for key in ("held:global", "counted:global", "fresh:global"):
            assert (await http.post(f"/api/auth-cache/{key}", json=BODY)).status_code == 200
        hits = [
            (await http.get("/api/auth-cache/counted:global")).json()["access_count"]
            for _ in range(3)
        ]
    assert hits == [1, 2, 3]

    conn = await asyncpg.connect(_dsn(own_database))
    try:
        # Two requests the server has taken and cannot finish when SIGTERM arrives: a replace
        # waiting on this row lock with the pool's one connection, and a first read of
        # fresh:global (not in memory yet) waiting for that connection.
        locker = conn.transaction()
        await locker.start()
        await conn.execute(f"SELECT 1 FROM {table} WHERE cache_key = 'held:global' FOR UPDATE")
        answers: dict[str, httpx.Response] = {}

        def send(method: str, key: str) -> threading.Thread:
            def call() -> None:
                answers[method] = httpx.request(
                    method,
                    f"{server.url}/api/auth-cache/{key}",
                    json=BODY if method == "POST" else None,
                    timeout=30,
                )

            thread = threading.Thread(target=call)
            thread.start()
            return thread

        in_flight = [send("POST", "held:global")]
        await _wait_for_lock_waiter(conn)
        in_flight.append(send("GET", "fresh:global"))
        await asyncio.sleep(0.3)
        server._process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert server._process.poll() is None  # still draining
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as probe:
                await probe.get(f"{server.url}/health")  # but no longer taking new requests
        await locker.rollback()
        for thread in in_flight:
            await asyncio.to_thread(thread.join, 10)
        assert {method: a.status_code for method, a in answers.items()} == {"POST": 200, "GET": 200}
        assert await asyncio.to_thread(server._process.wait, 30) == 0
        counts = dict(await conn.fetch(f"SELECT cache_key, access_count FROM {table}"))
        assert counts == {"held:global": 0, "counted:global": 3, "fresh:global": 1}
    finally:
        await conn.close()
