"""Overload answers fast: with every pooled connection taken, a request that needs one is
answered 503 within the pool timeout rather than hanging, and hits from memory, which need
none, keep coming."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import asyncpg
import httpx

from app.db.tables import keychain
from tests.bodies import entry_body
from tests.conftest import TEST_KEY, TEST_KEY_ID, qualified_name
from tests.local_server import LocalKeychainServer
from tests.server.replicas import read_into_memory, replica

BODY = entry_body({"value": "sk-busy"})


async def test_an_exhausted_pool_is_a_quick_503_and_hits_from_memory_go_on(
    test_settings, own_database
):
    async with replica(
        test_settings, own_database, db_pool_size=1, db_pool_timeout_seconds=1.0
    ) as a:
        for key in ("held:global", "hot:global"):
            assert (await a.client.post(f"/api/auth-cache/{key}", json=BODY)).status_code == 200
        await read_into_memory(a, "hot:global")
        locker = await asyncpg.connect(
            own_database.replace("postgresql+asyncpg://", "postgresql://")
        )
        try:
            # A replace that waits on this row lock holds the pool's one connection.
            async with locker.transaction():
                await locker.execute(
                    f"SELECT 1 FROM {qualified_name(keychain, test_settings.db_schema)}"
                    " WHERE cache_key = 'held:global' FOR UPDATE"
                )
                stuck = asyncio.ensure_future(
                    a.client.post("/api/auth-cache/held:global", json=BODY)
                )
                await asyncio.sleep(0.2)

                started = time.monotonic()
                miss = await a.client.get("/api/auth-cache/not-cached:global")
                assert time.monotonic() - started < 3.0  # the pool timeout (1 s), not a hang
                assert (miss.status_code, miss.headers["retry-after"]) == (503, "1")
                assert miss.json()["detail"].startswith(
                    "every database connection of this server is busy"
                )

                hits = [await a.client.get("/api/auth-cache/hot:global") for _ in range(20)]
                assert {h.status_code for h in hits} == {200}
                assert not stuck.done()
            assert (await stuck).status_code == 200  # and the stuck write went through
        finally:
            await locker.close()


def test_clients_dribbling_their_bodies_hold_up_nobody_else(own_database, tmp_path):
    server = LocalKeychainServer(
        tmp_path / "server",
        database_url=own_database,
        encryption_keys=f"{TEST_KEY_ID}:{TEST_KEY}",
        allow_open_api="true",
        sweep_interval_seconds="0",
    )
    server.start()
    slow: list[socket.socket] = []
    try:
        assert httpx.post(f"{server.url}/api/auth-cache/k:global", json=BODY).status_code == 200
        body = json.dumps(BODY).encode()
        for _ in range(50):  # each sends its headers and a byte of its body, then nothing
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(
                b"POST /api/auth-cache/slow:global HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:1]
            )
            slow.append(sock)
        with httpx.Client(base_url=server.url, timeout=5) as http:
            started = time.monotonic()
            answers = [http.get("/api/auth-cache/k:global").status_code for _ in range(20)]
            assert answers == [200] * 20
            assert time.monotonic() - started < 3.0
    finally:
        for sock in slow:
            sock.close()
        server.stop()
