"""Execution tokens from the worker's side: the engine mints one per execution, the workers of
that execution use it, and nothing else of the cache opens to them."""

from __future__ import annotations

import logging

import pytest
import pytest_asyncio

from tests.conftest import BASE_URL, asgi_client
from tests.secret_manager_emulator import SecretManagerEmulator
from workerlib import KeychainClient, fetch_secret
from workerlib.errors import ExecutionEnded, Forbidden, NotEnabled, Unauthorized
from workerlib.providers import GoogleSecretManagerProvider

ENGINE_TOKEN = "engine-issuer-token-0123456789"
NAME = "projects/123/secrets/openai-api-key/versions/1"
VALUE = "sk-live-execution-bound"


@pytest_asyncio.fixture(loop_scope="session")
async def issuer(make_app):
    """The engine's client: an issuer token on the real app (on the test transaction)."""
    app = make_app(api_tokens=f"engine:issuer:{ENGINE_TOKEN}")
    async with (
        asgi_client(app) as http,
        KeychainClient(BASE_URL, ENGINE_TOKEN, http_client=http) as client,
    ):
        yield client


async def test_a_worker_with_its_executions_token_reads_through_its_own_entries(
    issuer: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
) -> None:
    secret_manager.add(NAME, VALUE)
    minted = await issuer.mint_execution_token(42)
    assert minted.execution_id == 42 and minted.token not in repr(minted)
    worker = issuer.with_token(minted.token)
    assert await fetch_secret(NAME, execution_id=42, keychain=worker, provider=provider) == VALUE
    assert await fetch_secret(NAME, execution_id=42, keychain=worker, provider=provider) == VALUE
    assert secret_manager.calls[NAME] == 1
    entry = await worker.get(f"{NAME}:42")
    assert entry is not None and entry.written_by == "execution:42"


async def test_another_executions_token_is_refused_and_its_step_still_gets_the_secret(
    issuer: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_manager.add(NAME, VALUE)
    owner = issuer.with_token((await issuer.mint_execution_token(42)).token)
    await fetch_secret(NAME, execution_id=42, keychain=owner, provider=provider)
    intruder = issuer.with_token((await issuer.mint_execution_token(43)).token)
    with pytest.raises(Forbidden, match="bound to execution 43"):
        await intruder.get(f"{NAME}:42")
    # Its own execution's secret still comes through, cached under its own key.
    assert await fetch_secret(NAME, execution_id=43, keychain=intruder, provider=provider) == VALUE


async def test_after_cleanup_the_token_is_dead_and_fetch_secret_degrades(
    issuer: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secret_manager: SecretManagerEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_manager.add(NAME, VALUE)
    worker = issuer.with_token((await issuer.mint_execution_token(77)).token)
    await fetch_secret(NAME, execution_id=77, keychain=worker, provider=provider)
    assert await issuer.cleanup_execution(77) == 1
    with pytest.raises(Unauthorized, match="execution 77 has ended"):
        await worker.get(f"{NAME}:77")
    with caplog.at_level(logging.WARNING, logger="workerlib"):
        assert (
            await fetch_secret(NAME, execution_id=77, keychain=worker, provider=provider) == VALUE
        )
    assert any(r.levelno == logging.ERROR and "degraded" in r.getMessage() for r in caplog.records)
    assert VALUE not in caplog.text


async def test_with_token_shares_the_pool_and_leaves_it_open(issuer: KeychainClient) -> None:
    worker = issuer.with_token((await issuer.mint_execution_token(5)).token)
    await worker.close()  # not its pool to close
    assert (await issuer.mint_execution_token(6)).execution_id == 6
    assert "token=set" in repr(worker)


async def test_no_token_is_minted_for_an_execution_already_cleaned_up(
    issuer: KeychainClient,
) -> None:
    await issuer.mint_execution_token(88)
    await issuer.cleanup_execution(88)
    with pytest.raises(ExecutionEnded, match="execution 88 has ended") as caught:
        await issuer.mint_execution_token(88)
    assert caught.value.status_code == 409
    with pytest.raises(ExecutionEnded, match="execution 88 has ended"):
        await issuer.mint_execution_token(89, parent_execution_id=88)


async def test_a_server_without_a_signing_key_says_so_and_is_not_retried(
    make_app, caplog: pytest.LogCaptureFixture
) -> None:
    # An open API (local work): the one way to reach minting with no signing key, as a server
    # with an issuer token and no signing key refuses to start.
    app = make_app(token_signing_keys="")
    async with asgi_client(app) as http, KeychainClient(BASE_URL, http_client=http) as engine:
        with (
            caplog.at_level(logging.INFO, logger="workerlib"),
            pytest.raises(NotEnabled, match="KEYCHAIN_TOKEN_SIGNING_KEYS") as caught,
        ):
            await engine.mint_execution_token(1)
    assert caught.value.status_code == 501
    assert "retried" not in caplog.text  # a setting to fix: retrying cannot help
