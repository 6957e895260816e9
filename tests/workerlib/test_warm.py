"""Warming an execution: two workers on two replicas prefetch the same secrets and auth map at
once, and each missing secret costs one Secret Manager call for both."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from tests.server.replicas import replica
from workerlib import KeychainClient, fetch_secret, warm_execution

SECRETS = {f"projects/1/secrets/warm-{i}/versions/1": f"sk-warm-{i}" for i in range(3)}
MISSING = "projects/1/secrets/never-created/versions/1"
AUTH_KEY = "projects/1/secrets/openai/versions/1"
AUTH = {"openai": {"type": "bearer", "provider": "secret_manager", "key": AUTH_KEY}}


async def test_two_workers_warming_one_execution_make_one_call_per_secret(
    test_settings, own_database, secret_manager, provider
):
    for name, value in {**SECRETS, AUTH_KEY: "sk-openai"}.items():
        secret_manager.add(name, value)
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(replica(test_settings, own_database)) for _ in range(2)
        ]
        workers = [KeychainClient(http_client=s.client) for s in servers]
        providers = {"secret_manager": provider}
        failed = await asyncio.gather(
            *(
                warm_execution(
                    secrets=[*SECRETS, MISSING],
                    auth=AUTH,
                    execution_id=7,
                    keychain=w,
                    provider=provider,
                    providers=providers,
                )
                for w in workers
            )
        )
        assert [list(f) for f in failed] == [[MISSING], [MISSING]]
        assert "not found" in failed[0][MISSING]
        assert {name: secret_manager.calls[name] for name in [*SECRETS, AUTH_KEY]} == dict.fromkeys(
            [*SECRETS, AUTH_KEY], 1
        )

        # The steps that follow read from the cache.
        got = [
            await fetch_secret(name, execution_id=7, keychain=workers[1], provider=provider)
            for name in SECRETS
        ]
        assert got == list(SECRETS.values())
        assert secret_manager.total_calls - secret_manager.calls[MISSING] == len(SECRETS) + 1
