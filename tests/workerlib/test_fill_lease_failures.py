"""A worker that holds a fill lease and fails to fetch gives it up at once: a waiting worker
takes the fill over then, not when the lease runs out."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.server.replicas import replica
from workerlib import KeychainClient, fetch_secret
from workerlib.errors import SecretError

NAME = "projects/1/secrets/flaky/versions/1"


class FlakyProvider:
    """Fails its first fetch (after a while, as a timeout would), then serves the secret."""

    def __init__(self) -> None:
        self.calls = 0

    async def access(self, name: str) -> str:
        self.calls += 1
        await asyncio.sleep(0.2)
        if self.calls == 1:
            raise SecretError(name, "Secret Manager failed reading the secret (a test's failure)")
        return "sk-second-try"


async def test_a_failed_fetch_hands_the_fill_to_a_waiting_worker_at_once(
    test_settings, own_database
):
    provider = FlakyProvider()
    async with replica(test_settings, own_database, fill_lease_seconds=30.0) as server:
        first, second = (KeychainClient(http_client=server.client) for _ in range(2))
        started = time.monotonic()
        holder = asyncio.ensure_future(
            fetch_secret(NAME, execution_id=5, keychain=first, provider=provider)
        )
        await asyncio.sleep(0.05)  # the holder has the lease; the second worker waits for it
        waiter = asyncio.ensure_future(
            fetch_secret(NAME, execution_id=5, keychain=second, provider=provider)
        )
        with pytest.raises(SecretError):
            await holder  # the provider's error is the caller's, as without the cache
        assert await waiter == "sk-second-try"
        assert time.monotonic() - started < 5  # not the lease's 30 s
        assert provider.calls == 2
