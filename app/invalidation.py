"""The invalidation channel: changes are announced with NOTIFY in the transaction that makes
them (so only committed ones arrive), and every server process listens on one dedicated
connection, outside the request pool.

What a process learns from the channel may stand in for a database read only while it is
listening: `epoch` moves on every (re)connect, so anything learned before a gap is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

LISTENER_APPLICATION_NAME = "keychain-listener"
# How often a quiet listening connection is asked whether it is still there (a dead TCP peer
# may never say so).
LIVENESS_INTERVAL_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 5.0


def channel_name(schema: str) -> str:
    """One channel per schema: deployments sharing a database do not hear each other."""
    return f"keychain_{schema}"


class Invalidation(msgspec.Struct, kw_only=True, omit_defaults=True):
    # Entries written, replaced, deleted or re-sealed.
    keys: list[str] = []
    # An execution was cleaned up: its entries are gone and its tokens end.
    ended_execution_id: int | None = None
    # A sweep deleted rows that expired by then (epoch seconds, the database's clock).
    expired_before: float | None = None


# NOTIFY payloads must stay under 8000 bytes.
MAX_PAYLOAD_BYTES = 7000


def encode(message: Invalidation) -> str:
    return msgspec.json.encode(message).decode()


def key_messages(keys: list[str]) -> list[Invalidation]:
    """Invalidations for `keys`, as few as fit the payload limit (a key is at most 512
    characters, so each message holds at least a dozen)."""
    messages: list[Invalidation] = []
    batch: list[str] = []
    size = 0
    for key in keys:
        cost = len(msgspec.json.encode(key)) + 1
        if batch and size + cost > MAX_PAYLOAD_BYTES:
            messages.append(Invalidation(keys=batch))
            batch, size = [], 0
        batch.append(key)
        size += cost
    if batch:
        messages.append(Invalidation(keys=batch))
    return messages


class InvalidationListener:
    """LISTENs on the channel, reconnecting with capped backoff until cancelled."""

    def __init__(
        self, url: str | URL, channel: str, on_message: Callable[[Invalidation], None]
    ) -> None:
        # Its own engine without a pool: the listening connection is never a request's.
        self._engine = create_async_engine(
            url,
            poolclass=NullPool,
            connect_args={
                "timeout": 5,
                "server_settings": {"application_name": LISTENER_APPLICATION_NAME},
            },
        )
        self._channel = channel
        self._on_message = on_message
        self.connected = False
        self.epoch = 0
        # The database's clock minus ours, in seconds, measured on every probe.
        self.clock_offset = 0.0

    def _deliver(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = msgspec.json.decode(payload, type=Invalidation)
        except msgspec.DecodeError:
            log.warning("ignored a malformed invalidation on %s", self._channel)
            return
        self._on_message(message)

    async def run(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    await self._listen_until_lost()
                    failures = 0
                # asyncpg's connection errors are OSErrors; its server errors come below.
                except (TimeoutError, OSError) as exc:
                    log.warning(
                        "invalidation listener cannot connect (%s); retrying", type(exc).__name__
                    )
                except Exception as exc:
                    log.warning(
                        "invalidation listener failed (%s); reconnecting", type(exc).__name__
                    )
                self.connected = False
                failures += 1
                await asyncio.sleep(random.uniform(0, min(MAX_BACKOFF_SECONDS, 0.1 * 2**failures)))
        finally:
            self.connected = False
            await self._engine.dispose()

    def database_time(self) -> float:
        """Now by the database's clock (epoch seconds): what expires_at is compared with."""
        return time.time() + self.clock_offset

    async def _measure_clock(self, raw: Any) -> None:
        """Also the liveness probe: a connection that cannot answer this is gone."""
        before = time.time()
        database_now = await raw.fetchval(
            "SELECT extract(epoch FROM clock_timestamp())::float8", timeout=2
        )
        after = time.time()
        self.clock_offset = database_now - (before + after) / 2

    async def _listen_until_lost(self) -> None:
        async with self._engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None  # an open connection always has its asyncpg connection
            lost = asyncio.Event()
            raw.add_termination_listener(lambda _conn: lost.set())
            await raw.add_listener(self._channel, self._deliver)
            await self._measure_clock(raw)
            # Anything learned before this moment may have missed a notification.
            self.epoch += 1
            self.connected = True
            log.info("listening for invalidations on %s", self._channel)
            try:
                while not lost.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(lost.wait(), LIVENESS_INTERVAL_SECONDS)
                        break
                    await self._measure_clock(raw)
            finally:
                self.connected = False
            log.warning("invalidation listener lost its connection; reconnecting")
