"""Behaviour under real concurrency: committed rows, a real pool, many connections at once.

The rest of the suite serialises requests on one rolled-back connection, which cannot show a
lost update; these tests use a throwaway migrated database of their own instead.
"""

from __future__ import annotations

import asyncio
import base64
import os

from app.asgi import create_app
from app.crypto import KeyRing
from app.keychain.rotation import count_to_reseal, reseal_all
from tests.bodies import entry_body
from tests.conftest import asgi_client

K1 = "k1:" + base64.b64encode(os.urandom(32)).decode()
K2 = "k2:" + base64.b64encode(os.urandom(32)).decode()


async def test_concurrent_hits_on_separate_connections_all_count(committed):
    async with committed.client() as client:
        await client.post("/api/auth-cache/busy", json=entry_body({"v": "x"}))
        answers = await asyncio.gather(*(client.get("/api/auth-cache/busy") for _ in range(30)))
        assert [a.status_code for a in answers] == [200] * 30
        # Each hit saw its own increment: no two read the same count, none was lost.
        assert sorted(a.json()["access_count"] for a in answers) == list(range(1, 31))


async def test_rotation_under_load_reseals_every_row_and_reads_never_fail(committed):
    async with committed.client(encryption_keys=K1) as old:
        for i in range(60):
            await old.post(f"/api/auth-cache/entry-{i}", json=entry_body({"v": i}))

    async with committed.client(encryption_keys=f"{K2},{K1}") as client:
        rotation = asyncio.create_task(
            reseal_all(committed.database, KeyRing.parse(f"{K2},{K1}"), batch_size=5)
        )
        statuses = []
        while not rotation.done():
            reads = await asyncio.gather(
                *(client.get(f"/api/auth-cache/entry-{i}") for i in range(0, 60, 7))
            )
            statuses += [r.status_code for r in reads]
        result = await rotation
    assert set(statuses) == {200}
    assert (result.resealed, result.unreadable) == (60, 0)
    assert await count_to_reseal(committed.database, KeyRing.parse(f"{K2},{K1}")) == 0

    async with committed.client(encryption_keys=K2) as new:
        for i in range(60):
            assert (await new.get(f"/api/auth-cache/entry-{i}")).json()["data"] == {"v": i}


async def test_an_app_without_an_injected_database_owns_and_disposes_its_engine(committed):
    app = create_app(committed.settings)
    runtime = app.state.runtime
    async with app.lifespan():
        async with asgi_client(app) as client:
            assert (await client.get("/ready")).json() == {"status": "ready"}
        assert runtime.database is not None
    assert runtime.database is None
