"""CredentialCache keeps the original worker interface: names, key formats and return shapes."""

from __future__ import annotations

import pprint
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
import pytest_asyncio
from rich.pretty import pretty_repr

from tests.json_http import serving_json
from tests.workerlib.helpers import (
    UNUSABLE_SETTING_IDS,
    UNUSABLE_SETTINGS,
    assert_logged_degraded,
    assert_logged_unusable_configuration,
    too_deep_entry,
)
from workerlib import CredentialCache, KeychainClient
from workerlib.errors import InvalidKey

TOKEN = {"access_token": "test123", "token_type": "bearer"}


@pytest.fixture(autouse=True)
def _from_env(keychain_from_env: str) -> None:
    """CredentialCache builds its client from the environment, as the original did."""


@pytest_asyncio.fixture(loop_scope="session")
async def keychain(keychain_from_env: str) -> AsyncIterator[KeychainClient]:
    """A client on the same server, to see what CredentialCache did."""
    async with KeychainClient(keychain_from_env) as keychain:
        yield keychain


async def test_global_token_round_trip_with_the_original_shapes(keychain: KeychainClient) -> None:
    stored = await CredentialCache.set_cached(
        "test_token",
        "oauth2_client_credentials",
        TOKEN,
        cache_type="token",
        token_type="bearer",
        ttl_seconds="3300",
    )
    assert stored is True

    cached = await CredentialCache.get_cached("test_token", token_type="bearer")
    assert cached is not None
    assert set(cached) == {"credential_name", "data", "credential_type", "cache_type", "expires_at"}
    assert cached["credential_name"] == "test_token"
    assert cached["data"] == TOKEN
    assert cached["credential_type"] == "oauth2_client_credentials"
    assert cached["cache_type"] == "token"
    assert isinstance(cached["expires_at"], datetime) and cached["expires_at"].tzinfo is not None

    # The original key format, visible to anyone using the HTTP API directly.
    entry = await keychain.get("test_token:global:bearer")
    assert entry is not None and entry.scope_type == "global" and entry.ttl_seconds == 3300

    assert await CredentialCache.delete_cached("test_token", token_type="bearer") is True
    assert await CredentialCache.get_cached("test_token", token_type="bearer") is None
    assert await CredentialCache.delete_cached("test_token", token_type="bearer") is False


async def test_execution_scoped_key_is_name_colon_execution_id(keychain: KeychainClient) -> None:
    assert await CredentialCache.set_cached(
        "projects/1/secrets/db/versions/3",
        "secret_manager",
        {"value": "pw"},
        execution_id=555,
        parent_execution_id=500,
    )
    entry = await keychain.get("projects/1/secrets/db/versions/3:555")
    assert entry is not None
    assert (entry.scope_type, entry.execution_id, entry.parent_execution_id) == (
        "execution",
        555,
        500,
    )
    assert entry.ttl_seconds == 3600  # the default

    assert (await CredentialCache.get_cached("projects/1/secrets/db/versions/3", execution_id=555))[
        "data"
    ] == {"value": "pw"}
    assert (
        await CredentialCache.get_cached("projects/1/secrets/db/versions/3", execution_id=556)
        is None
    )
    assert await keychain.cleanup_execution(500) == 1  # found through its parent


async def test_global_without_token_type_is_name_colon_global(keychain: KeychainClient) -> None:
    assert await CredentialCache.set_cached("svc", "bearer", {"token": "t"})
    assert await keychain.get("svc:global") is not None
    assert (await CredentialCache.get_cached("svc"))["data"] == {"token": "t"}


async def test_a_refused_write_is_false_not_an_exception() -> None:
    assert (
        await CredentialCache.set_cached("svc", "bearer", {"token": "t"}, ttl_seconds=-5) is False
    )


async def test_an_answer_nested_too_deep_to_decode_is_a_miss_and_false(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding it raises RecursionError; the caller sees the cache degrade, never that error."""
    methods: list[str] = []

    def answer(method: str, path: str, body: bytes) -> tuple[int, object]:
        methods.append(method)
        return 200, too_deep_entry()

    with serving_json(answer) as url:
        monkeypatch.setenv("KEYCHAIN_SERVER_URL", url)
        assert await CredentialCache.get_cached("svc", execution_id=1) is None
        assert (
            await CredentialCache.set_cached("svc", "bearer", {"token": "hush-123"}, execution_id=1)
            is False
        )
    assert methods == ["GET", "POST"]
    assert_logged_degraded(caplog, 200, "KeychainError", "maximum recursion depth", "hush-123")


async def test_an_unavailable_server_is_a_miss_and_false(
    closed_port: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYCHAIN_SERVER_URL", f"http://127.0.0.1:{closed_port}")
    assert await CredentialCache.get_cached("svc", execution_id=1) is None
    assert (
        await CredentialCache.set_cached("svc", "bearer", {"token": "hush-123"}, execution_id=1)
        is False
    )
    assert await CredentialCache.delete_cached("svc", execution_id=1) is False
    assert "credential cache" in caplog.text and "hush-123" not in caplog.text


async def test_a_name_that_would_spell_another_entrys_key_is_refused(
    keychain: KeychainClient,
) -> None:
    """("a:global", execution 7) used to be the key of ("a", token type "7"): reading one read the other."""
    assert await CredentialCache.set_cached("a", "oauth2_client_credentials", TOKEN, token_type="7")
    with pytest.raises(InvalidKey, match="'global' segment"):
        await CredentialCache.get_cached("a:global", execution_id=7)
    with pytest.raises(InvalidKey):
        await CredentialCache.set_cached(
            "a:global", "secret_manager", {"value": "x"}, execution_id=7
        )
    with pytest.raises(InvalidKey, match="contains ':'"):
        await CredentialCache.delete_cached("a", token_type="global:7")
    assert (await CredentialCache.get_cached("a", token_type="7"))["data"] == TOKEN


@pytest.mark.parametrize(("variable", "value"), UNUSABLE_SETTINGS, ids=UNUSABLE_SETTING_IDS)
async def test_an_unusable_client_configuration_is_a_miss_and_false(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert await CredentialCache.get_cached("svc", execution_id=1) is None
    assert (
        await CredentialCache.set_cached("svc", "bearer", {"token": "t"}, execution_id=1) is False
    )
    assert await CredentialCache.delete_cached("svc", execution_id=1) is False
    assert_logged_unusable_configuration(caplog, variable, value)


SECRET = "sk-repr-secret-5f0c2a"
BODY = {"api_key": SECRET}


async def test_results_hide_data_and_stay_plain_dicts() -> None:
    """A worker that logs what it got, or fails an assert on it, does not print the secret."""
    assert await CredentialCache.set_cached("crm", "bearer", BODY, execution_id=7)
    cached = await CredentialCache.get_cached("crm", execution_id=7)
    assert cached is not None
    for shown in (
        repr(cached),
        str(cached),
        pprint.pformat(cached),
        pretty_repr(cached),
        repr([cached]),
    ):
        assert (
            SECRET not in shown
            and "'data': <hidden>" in shown
            and "'credential_name': 'crm'" in shown
        )
    # Everything a caller does with the dict is as before.
    assert isinstance(cached, dict) and cached["data"] == BODY
    assert dict(cached) == {
        "credential_name": "crm",
        "data": BODY,
        "credential_type": "bearer",
        "cache_type": "secret",
        "expires_at": cached["expires_at"],
    }
