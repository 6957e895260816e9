"""Playbook `auth:` maps become headers; every secret goes through fetch_secret and the cache."""

from __future__ import annotations

import base64

import pytest

from demo.secret_manager_emulator import SecretManagerEmulator
from tests.workerlib.helpers import ScriptedServer
from workerlib import AuthConfigError, GoogleSecretManagerProvider, KeychainClient, resolve_auth

OPENAI = "projects/123/secrets/openai-api-key/versions/1"
JIRA = "projects/123/secrets/jira-password/versions/2"
MAPS = "projects/123/secrets/maps-key/versions/1"
CRM_CLIENT = "projects/123/secrets/crm-client-secret/versions/1"


@pytest.fixture
def secrets(secret_manager: SecretManagerEmulator) -> SecretManagerEmulator:
    secret_manager.add(OPENAI, "sk-openai\n")  # saved with `echo`: the newline is not the secret
    secret_manager.add(JIRA, "jira-pass")
    secret_manager.add(MAPS, "maps-key-value")
    secret_manager.add(CRM_CLIENT, "crm-client-secret-value")
    return secret_manager


async def test_bearer_basic_and_api_key_headers(
    keychain: KeychainClient, provider: GoogleSecretManagerProvider, secrets: SecretManagerEmulator
) -> None:
    auth = {
        "openai": {"type": "bearer", "provider": "secret_manager", "key": OPENAI},
        "jira": {"type": "basic", "username": "bot", "password_key": JIRA},
        "maps": {"type": "api_key", "header": "X-Goog-Api-Key", "key": MAPS},
    }
    with pytest.raises(AuthConfigError, match="'openai' and 'jira' both set the Authorization header"):
        await resolve_auth(auth, execution_id=77, client=keychain, providers={"secret_manager": provider})
    assert secrets.total_calls == 0  # refused before any secret was read

    del auth["jira"]
    headers = await resolve_auth(auth, execution_id=77, client=keychain, providers={"secret_manager": provider})
    assert headers == {"Authorization": "Bearer sk-openai", "X-Goog-Api-Key": "maps-key-value"}

    headers = await resolve_auth(
        {"jira": {"type": "basic", "username": "bot", "password_key": JIRA}},
        execution_id=77, client=keychain, providers={"secret_manager": provider},
    )
    assert headers == {"Authorization": "Basic " + base64.b64encode(b"bot:jira-pass").decode()}

    # Every secret went through the cache, scoped to the execution; the cache served repeats.
    for name in (OPENAI, MAPS, JIRA):
        entry = await keychain.get(f"{name}:77")
        assert entry is not None and entry.execution_id == 77
    assert secrets.calls[OPENAI] == 1 and secrets.calls[JIRA] == 1


async def test_api_key_defaults_to_x_api_key_with_an_optional_prefix(
    keychain: KeychainClient, provider: GoogleSecretManagerProvider, secrets: SecretManagerEmulator
) -> None:
    headers = await resolve_auth(
        {"maps": {"type": "api_key", "key": MAPS},
         "other": {"type": "api_key", "key": MAPS, "header": "Authorization", "prefix": "Token "}},
        execution_id=1, client=keychain, providers={"secret_manager": provider},
    )
    assert headers == {"X-API-Key": "maps-key-value", "Authorization": "Token maps-key-value"}


async def test_bearer_from_an_oauth_credential(
    keychain: KeychainClient, provider: GoogleSecretManagerProvider, secrets: SecretManagerEmulator
) -> None:
    idp = ScriptedServer((200, {}, {"access_token": "crm-token", "token_type": "Bearer", "expires_in": 3600}))
    auth = {"crm": {"type": "bearer", "oauth_credential": "crm", "token_url": "http://idp.test/token",
                    "client_id": "worker", "client_secret_key": CRM_CLIENT}}
    async with idp.http_client("http://idp.test") as http:
        for execution_id in (1, 2):
            headers = await resolve_auth(auth, execution_id=execution_id, client=keychain,
                                         providers={"secret_manager": provider}, http_client=http)
            assert headers == {"Authorization": "Bearer crm-token"}
    assert len(idp.requests) == 1  # the token is global, shared by both executions
    assert await keychain.get("crm:global:oauth2") is not None


async def test_the_env_provider_serves_local_runs(keychain: KeychainClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    headers = await resolve_auth({"openai": {"type": "bearer", "provider": "env", "key": OPENAI}},
                                 execution_id=3, client=keychain)
    assert headers == {"Authorization": "Bearer sk-local"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "digest", "key": OPENAI}, "unknown type 'digest'"),
        ({"type": "bearer"}, "needs 'key'"),
        ({"type": "basic", "password_key": JIRA}, "needs 'username'"),
        ({"type": "bearer", "provider": "vault", "key": OPENAI}, "unknown provider 'vault'"),
    ],
)
async def test_incomplete_entries_say_what_is_missing(keychain: KeychainClient, spec: dict, message: str) -> None:
    with pytest.raises(AuthConfigError, match=message) as caught:
        await resolve_auth({"svc": spec}, execution_id=1, client=keychain)
    assert "'svc'" in str(caught.value)
