"""Key rotation: re-seal under the new key, then the old key can leave the ring."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from datetime import timedelta

import httpx
from sqlalchemy import func, insert, select

from app.crypto import KeyRing
from app.db.tables import keychain
from app.keychain.rotation import count_to_reseal, reseal_all
from tests.bodies import entry_body
from tests.conftest import asgi_client

K1 = "k1:" + base64.b64encode(os.urandom(32)).decode()
K2 = "k2:" + base64.b64encode(os.urandom(32)).decode()


async def _write(client, key: str, value: str) -> None:
    body = entry_body({"value": value}, ttl_seconds=600)
    assert (await client.post(f"/api/auth-cache/{key}", json=body)).status_code == 200


def client_for(make_app, keys: str) -> httpx.AsyncClient:
    """A client on an app that runs with this key ring (same test transaction)."""
    return asgi_client(make_app(encryption_keys=keys))


async def _rows(connection) -> dict[str, tuple]:
    result = await connection.execute(
        select(
            keychain.c.cache_key,
            keychain.c.key_id,
            keychain.c.access_count,
            keychain.c.expires_at,
            keychain.c.created_at,
        )
    )
    return {row.cache_key: tuple(row) for row in result}


async def test_rotate_k1_to_k2_then_drop_k1_and_read_everything(make_app, connection, database):
    async with client_for(make_app, K1) as old:
        for i in range(7):
            await _write(old, f"entry-{i}", f"value-{i}")
        await old.get("/api/auth-cache/entry-0")
    before = await _rows(connection)

    ring = KeyRing.parse(f"{K2},{K1}")
    assert await count_to_reseal(database, ring) == 7
    batches: list[int] = []
    result = await reseal_all(database, ring, batch_size=3, on_batch=batches.append)
    assert (result.resealed, result.unreadable) == (7, 0)
    assert batches == [3, 3, 1]
    assert await count_to_reseal(database, ring) == 0

    after = await _rows(connection)
    assert {key: row[1] for key, row in after.items()} == {key: "k2" for key in before}
    # TTL, counters and timestamps are untouched by re-sealing.
    assert {k: r[2:] for k, r in after.items()} == {k: r[2:] for k, r in before.items()}

    async with client_for(make_app, K2) as new:
        for i in range(7):
            answer = await new.get(f"/api/auth-cache/entry-{i}")
            assert answer.status_code == 200
            assert answer.json()["data"] == {"value": f"value-{i}"}


async def test_rows_no_key_opens_are_reported_and_left_alone(make_app, connection, database):
    lost = "lost:" + base64.b64encode(os.urandom(32)).decode()
    async with client_for(make_app, lost) as client:
        await _write(client, "orphan", "v")
    before = await _rows(connection)
    result = await reseal_all(database, KeyRing.parse(f"{K2},{K1}"), batch_size=10)
    assert (result.resealed, result.unreadable) == (0, 1)
    assert await _rows(connection) == before


async def test_the_rotate_keys_command_reseals_committed_rows(committed):
    async with committed.client(encryption_keys=K1) as client:
        for i in range(3):
            await _write(client, f"entry-{i}", f"value-{i}")

    env = {
        **os.environ,
        "KEYCHAIN_DATABASE_URL": committed.url,
        "KEYCHAIN_ENCRYPTION_KEYS": f"{K2},{K1}",
    }
    process = await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(sys.executable), "keychain"),
        "rotate-keys",
        "--batch-size",
        "2",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert "re-sealed 3 rows under key 'k2'" in stdout.decode()

    async with committed.client(encryption_keys=K2) as client:
        for i in range(3):
            assert (await client.get(f"/api/auth-cache/entry-{i}")).json()["data"] == {
                "value": f"value-{i}"
            }


async def test_rows_sealed_before_writes_were_bound_still_open_and_rotation_binds_them(
    make_app, connection, database
):
    """Migration 0002 leaves older rows without a write id (bound to their key alone): they
    stay readable, and rotate-keys re-seals them bound to a write, even under the same key."""
    ring = KeyRing.parse(K1)
    legacy = ring.seal(b'{"value": "from-before"}', b"legacy:global")
    await connection.execute(
        insert(keychain).values(
            cache_key="legacy:global",
            credential_name="legacy",
            credential_type="bearer",
            cache_type="secret",
            scope_type="global",
            data=legacy.envelope,
            key_id="k1",
            ttl_seconds=600,
            expires_at=func.now() + timedelta(minutes=10),
        )
    )
    async with client_for(make_app, K1) as app:
        answer = await app.get("/api/auth-cache/legacy:global")
        assert answer.json()["data"] == {"value": "from-before"}
        assert answer.json()["written_by"] == "unknown"  # migration 0003's default
        assert await count_to_reseal(database, ring) == 1
        assert (await reseal_all(database, ring, batch_size=10)).resealed == 1
        assert await count_to_reseal(database, ring) == 0
        assert (await app.get("/api/auth-cache/legacy:global")).json()["data"] == {
            "value": "from-before"
        }
    write_id = (await connection.execute(select(keychain.c.write_id))).scalar_one()
    assert write_id is not None
