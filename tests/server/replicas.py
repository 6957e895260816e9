"""Replicas in-process: apps with their lifespans (listener, hit flusher, memory tier) on one
committed database of the test's own, each with an httpx client on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import msgspec

from app.asgi import create_app
from app.settings import Settings
from tests.conftest import BASE_URL


class Replica:
    def __init__(self, app, client: httpx.AsyncClient) -> None:
        self.app, self.client = app, client
        self.process = app.state.runtime.process

    @property
    def engine(self):
        return self.app.state.runtime.database.engine


@asynccontextmanager
async def replica(test_settings: Settings, url: str, **overrides: object) -> AsyncIterator[Replica]:
    settings = msgspec.structs.replace(
        test_settings, database_url=url, hit_flush_seconds=60.0, **overrides
    )
    app = create_app(settings)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            server = Replica(app, client)
            deadline = time.monotonic() + 10
            while not server.process.tier.serving:
                assert time.monotonic() < deadline, "the listener did not connect"
                await asyncio.sleep(0.01)
            yield server


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 2.0) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, "timed out"
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def read_into_memory(server: Replica, key: str) -> None:
    """GET until the replica's tier holds the key. The write's own notification comes back to
    every replica, the writer included, and may land after the first read filled the tier:
    dropping that fill is right (it may have read the row before the write committed)."""

    async def held() -> bool:
        assert (await server.client.get(f"/api/auth-cache/{key}")).status_code == 200
        return server.process.tier.get(key) is not None

    await until(held)
