"""Execution tokens from the worker's side: the engine mints one per execution, the workers of
that execution use it, and nothing else of the cache opens to them."""

from __future__ import annotations

import logging

import pytest
import pytest_asyncio

from tests.conftest import BASE_URL, asgi_client
from tests.secret_manager_emulator import SecretManagerEmulator
from workerlib import (
    Forbidden,
    GoogleSecretManagerProvider,
    KeychainClient,
    Unauthorized,
    fetch_secret,
)

ENGINE_TOKEN = "engine-issuer-token-0123456789"
NAME = "projects/123/secrets/openai-api-key/versions/1"
VALUE = "sk-live-execution-bound"


@pytest_asyncio.fixture(loop_scope="session")
async def engine(make_app):
    """The engine's client: an issuer token on the real app (on the test transaction)."""
    app = make_app(api_tokens=f"engine:issuer:{ENGINE_TOKEN}")
    async with (
        asgi_client(app) as http,
        KeychainClient(BASE_URL, ENGINE_TOKEN, http_client=http) as client,
    ):
        yield client


async def test_a_worker_with_its_executions_token_reads_through_its_own_entries(
    engine: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
) -> None:
    secret_manager.add(NAME, VALUE)
    minted = await engine.mint_execution_token(42)
    assert minted.execution_id == 42 and minted.token not in repr(minted)
    worker = engine.with_token(minted.token)
    assert await fetch_secret(NAME, execution_id=42, client=worker, provider=provider) == VALUE
    assert await fetch_secret(NAME, execution_id=42, client=worker, provider=provider) == VALUE
    assert secret_manager.calls[NAME] == 1
    entry = await worker.get(f"{NAME}:42")
    assert entry is not None and entry.written_by == "execution:42"


async def test_another_executions_token_is_refused_and_its_step_still_gets_the_secret(
    engine: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_manager.add(NAME, VALUE)
    owner = engine.with_token((await engine.mint_execution_token(42)).token)
    await fetch_secret(NAME, execution_id=42, client=owner, provider=provider)
    intruder = engine.with_token((await engine.mint_execution_token(43)).token)
    with pytest.raises(Forbidden, match="bound to execution 43"):
        await intruder.get(f"{NAME}:42")
    # Its own execution's secret still comes through, cached under its own key.
    assert await fetch_secret(NAME, execution_id=43, client=intruder, provider=provider) == VALUE


async def test_after_cleanup_the_token_is_dead_and_fetch_secret_degrades(
    engine: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_manager.add(NAME, VALUE)
    worker = engine.with_token((await engine.mint_execution_token(77)).token)
    await fetch_secret(NAME, execution_id=77, client=worker, provider=provider)
    assert await engine.cleanup_execution(77) == 1
    with pytest.raises(Unauthorized, match="execution 77 has ended"):
        await worker.get(f"{NAME}:77")
    with caplog.at_level(logging.WARNING, logger="workerlib"):
        assert await fetch_secret(NAME, execution_id=77, client=worker, provider=provider) == VALUE
    assert any(r.levelno == logging.ERROR and "degraded" in r.getMessage() for r in caplog.records)
    assert VALUE not in caplog.text


async def test_with_token_shares_the_pool_and_leaves_it_open(engine: KeychainClient) -> None:
    worker = engine.with_token((await engine.mint_execution_token(5)).token)
    await worker.close()  # not its pool to close
    assert (await engine.mint_execution_token(6)).execution_id == 6
    assert "token=set" in repr(worker)
