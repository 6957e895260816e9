"""Expired rows are swept in batches, by one replica at a time, and the task stops cleanly."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import func, select, text, update

from app.db.tables import keychain
from app.keychain.repository import SWEEP_LOCK_ID
from app.keychain.sweeper import run_sweeper, sweep_once
from tests.bodies import entry_body

BODY = entry_body({"v": "x"}, ttl_seconds=60)
RETENTION = 3600  # how long ended executions are remembered


async def _expire(connection, *keys: str) -> None:
    await connection.execute(
        update(keychain)
        .where(keychain.c.cache_key.in_(keys))
        .values(expires_at=func.now() - timedelta(seconds=1))
    )


async def _keys(connection) -> list[str]:
    return list(
        (
            await connection.scalars(select(keychain.c.cache_key).order_by(keychain.c.cache_key))
        ).all()
    )


async def test_a_sweep_deletes_only_expired_rows_in_batches(client, connection, database):
    for i in range(5):
        await client.post(f"/api/auth-cache/old-{i}", json=BODY)
    await client.post("/api/auth-cache/live", json=BODY)
    await _expire(connection, *(f"old-{i}" for i in range(5)))

    result = await sweep_once(database, batch_size=2, ended_retention_seconds=RETENTION)
    assert result.swept and result.deleted == 5
    assert await _keys(connection) == ["live"]
    again = await sweep_once(database, batch_size=2, ended_retention_seconds=RETENTION)
    assert again.swept and again.deleted == 0


async def test_only_one_replica_sweeps_at_a_time(client, connection, database, engine):
    await client.post("/api/auth-cache/old", json=BODY)
    await _expire(connection, "old")
    async with engine.connect() as other_replica, other_replica.begin():
        await other_replica.execute(
            text("SELECT pg_advisory_xact_lock(:id)"), {"id": SWEEP_LOCK_ID}
        )
        result = await sweep_once(database, batch_size=10, ended_retention_seconds=RETENTION)
    assert not result.swept
    assert await _keys(connection) == ["old"]


async def test_the_background_task_sweeps_and_is_cancelled_cleanly(client, connection, database):
    await client.post("/api/auth-cache/old", json=BODY)
    await _expire(connection, "old")
    task = asyncio.create_task(
        run_sweeper(database, interval=0.01, batch_size=10, ended_retention_seconds=RETENTION)
    )
    for _ in range(200):
        async with database.transaction() as conn:  # the sweeper shares this connection
            if not await _keys(conn):
                break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert await _keys(connection) == []


async def test_the_lifespan_starts_and_stops_the_sweeper(make_app):
    app = make_app(sweep_interval_seconds=3600)
    async with app.lifespan():
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == "keychain-sweeper"]
        assert len(tasks) == 1 and not tasks[0].done()
    assert tasks[0].cancelled()
