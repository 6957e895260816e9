"""KEYCHAIN_SCHEMA moves every table: migrations, the app, its sweeps, hit counts and
announcements, and the CLI all work in a schema other than the default, from the one table
definition (app.db.tables) that each engine maps into the configured schema."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta

import asyncpg
import msgspec
import pytest_asyncio
from sqlalchemy import func, inspect, select, update

from app.cli import migrate
from app.db.engine import Database, make_engine
from app.db.tables import keychain
from app.invalidation import Invalidation, channel_name
from app.keychain.repository import KeychainRepository
from app.keychain.sweeper import sweep_once
from app.settings import load_settings
from tests.bodies import entry_body
from tests.cluster import plain_dsn
from tests.server.replicas import read_into_memory, replica, until

SCHEMA = "keychain_alt"
BODY = entry_body({"v": "x"})


@pytest_asyncio.fixture(loop_scope="session")
async def elsewhere(make_empty_database, test_settings):
    url = await asyncio.to_thread(make_empty_database)  # it drives its own event loop
    settings = msgspec.structs.replace(test_settings, database_url=url, db_schema=SCHEMA)
    await asyncio.to_thread(migrate, settings)
    database = Database(make_engine(settings))
    yield settings, database
    await database.dispose()


async def test_everything_runs_in_the_configured_schema(elsewhere, test_settings, repo_root):
    settings, database = elsewhere
    default = load_settings({}).db_schema
    assert default != SCHEMA
    async with database.engine.connect() as conn:
        schemas = await conn.run_sync(lambda c: inspect(c).get_schema_names())
    assert SCHEMA in schemas and default not in schemas

    # A server with its lifespan: it listens on the schema's channel (replica() waits for
    # that), serves hits from memory and writes their counts at shutdown.
    async with replica(test_settings, settings.database_url, db_schema=SCHEMA) as server:
        client = server.client
        assert (await client.get("/ready")).status_code == 200
        for key in ("kept:global", "old:global", "job:7"):
            body = {**BODY, "execution_id": 7} if key == "job:7" else BODY
            assert (await client.post(f"/api/auth-cache/{key}", json=body)).status_code == 200
        await read_into_memory(server, "kept:global")
        hits = (await client.get("/api/auth-cache/kept:global")).json()["access_count"]
        # What another server announces reaches this one's memory.
        async with database.transaction() as conn:
            await KeychainRepository(conn).announce(Invalidation(keys=["kept:global"]))

        async def dropped() -> bool:
            return server.process.tier.get("kept:global") is None

        await until(dropped, 5)
        # The ended-executions table moves too.
        cleanup = await client.delete("/api/executions/7/auth-cache")
        assert cleanup.json() == {"deleted": 1}

    async with database.engine.begin() as conn:
        await conn.execute(
            update(keychain)
            .where(keychain.c.cache_key == "old:global")
            .values(expires_at=func.now() - timedelta(seconds=1))
        )

    # Sweeps announce on the configured schema's channel, the one its servers listen on.
    heard: asyncio.Queue[str] = asyncio.Queue()
    listening = await asyncpg.connect(plain_dsn(settings.database_url))
    try:
        await listening.add_listener(channel_name(SCHEMA), lambda *args: heard.put_nowait(args[-1]))
        result = await sweep_once(database, batch_size=10, ended_retention_seconds=3600)
        assert result.swept and result.deleted == 1
        assert "expired_before" in await asyncio.wait_for(heard.get(), 5)
    finally:
        await listening.close()

    async with database.engine.connect() as conn:
        rows = (await conn.execute(select(keychain.c.cache_key, keychain.c.access_count))).all()
    assert [tuple(row) for row in rows] == [("kept:global", hits)]

    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYCHAIN_")}
    stats = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "stats", "--json"],
        cwd=repo_root,
        env={**clean, "KEYCHAIN_DATABASE_URL": settings.database_url, "KEYCHAIN_SCHEMA": SCHEMA},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stats.returncode == 0, stats.stderr
    report = json.loads(stats.stdout)
    assert (report["live_entries"], report["hits"]) == (1, hits)
