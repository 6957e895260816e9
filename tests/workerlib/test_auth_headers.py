"""Playbook `auth:` maps become headers; every secret goes through fetch_secret and the cache."""

from __future__ import annotations

import base64
import json
import traceback
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from tests.secret_manager_emulator import SecretManagerEmulator
from tests.workerlib.helpers import (
    IDP_URL,
    cached_oauth_tokens,
    resolve_in_two_executions,
    token_endpoint,
)
from workerlib import KeychainClient, resolve_auth
from workerlib.errors import AuthConfigError, SecretNotFound
from workerlib.providers import FileProvider, GoogleSecretManagerProvider

OPENAI = "projects/123/secrets/openai-api-key/versions/1"
JIRA = "projects/123/secrets/jira-password/versions/2"
MAPS = "projects/123/secrets/maps-key/versions/1"
CRM_CLIENT = "projects/123/secrets/crm-client-secret/versions/1"
OAUTH_CLIENT = "projects/123/secrets/openai-oauth-client/versions/1"
OAUTH_CLIENT_SECRET = "oauth-client-secret-0000"
WORKER_TOKEN = "worker-keychain-token-0000"
SERVICE_ACCOUNT_TOKEN = "eyJhbGciOi-service-account"


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
    with pytest.raises(
        AuthConfigError, match="'openai' and 'jira' both set the Authorization header"
    ):
        await resolve_auth(
            auth, execution_id=77, keychain=keychain, providers={"secret_manager": provider}
        )
    assert secrets.total_calls == 0  # refused before any secret was read

    del auth["jira"]
    headers = await resolve_auth(
        auth, execution_id=77, keychain=keychain, providers={"secret_manager": provider}
    )
    assert headers == {"Authorization": "Bearer sk-openai", "X-Goog-Api-Key": "maps-key-value"}

    headers = await resolve_auth(
        {"jira": {"type": "basic", "username": "bot", "password_key": JIRA}},
        execution_id=77,
        keychain=keychain,
        providers={"secret_manager": provider},
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
        {
            "maps": {"type": "api_key", "key": MAPS},
            "other": {
                "type": "api_key",
                "key": MAPS,
                "header": "Authorization",
                "prefix": "Token ",
            },
        },
        execution_id=1,
        keychain=keychain,
        providers={"secret_manager": provider},
    )
    assert headers == {"X-API-Key": "maps-key-value", "Authorization": "Token maps-key-value"}


async def test_bearer_from_an_oauth_credential(
    keychain: KeychainClient, provider: GoogleSecretManagerProvider, secrets: SecretManagerEmulator
) -> None:
    idp = token_endpoint(access_token="crm-token")
    auth = {
        "crm": {
            "type": "bearer",
            "oauth_credential": "crm",
            "token_url": f"{IDP_URL}/token",
            "client_id": "worker",
            "client_secret_key": CRM_CLIENT,
        }
    }
    headers = await resolve_in_two_executions(auth, idp, keychain, provider)
    assert headers == [{"Authorization": "Bearer crm-token"}] * 2
    assert len(idp.requests) == 1  # the token is global, shared by both executions
    assert len(await cached_oauth_tokens(keychain, "crm")) == 1


async def test_a_cached_oauth_token_reads_no_client_secret(
    keychain: KeychainClient, provider: GoogleSecretManagerProvider, secrets: SecretManagerEmulator
) -> None:
    auth = {
        "crm": {
            "type": "bearer",
            "oauth_credential": "crm",
            "token_url": f"{IDP_URL}/token",
            "client_id": "worker",
            "client_secret_key": CRM_CLIENT,
        }
    }
    await resolve_in_two_executions(auth, token_endpoint(), keychain, provider)
    # The second execution found the token cached: its client secret was never fetched.
    assert secrets.calls[CRM_CLIENT] == 1
    assert await keychain.get(f"{CRM_CLIENT}:2") is None


async def test_designs_example_bearer_from_an_oauth_client_kept_as_json_in_key(
    keychain: KeychainClient, provider: GoogleSecretManagerProvider, secrets: SecretManagerEmulator
) -> None:
    """DESIGN's own example: `key` and `oauth_credential`, no token_url in the map."""
    client_json = {
        "token_url": f"{IDP_URL}/oauth/token",
        "client_id": "worker",
        "client_secret": OAUTH_CLIENT_SECRET,
        "scope": "models.read",
    }
    secrets.add(OAUTH_CLIENT, json.dumps(client_json) + "\n")
    idp = token_endpoint(access_token="oa-token")
    auth = {
        "openai": {
            "type": "bearer",
            "provider": "secret_manager",
            "key": OAUTH_CLIENT,
            "oauth_credential": "openai-oauth",
        }
    }
    headers = await resolve_in_two_executions(auth, idp, keychain, provider)
    assert headers == [{"Authorization": "Bearer oa-token"}] * 2

    assert len(idp.requests) == 1  # the token is global, shared by both executions
    request = idp.requests[0]
    assert request["path"] == "/oauth/token"
    assert (
        request["headers"]["authorization"]
        == "Basic " + base64.b64encode(f"worker:{OAUTH_CLIENT_SECRET}".encode()).decode()
    )
    assert parse_qs(request["body"].decode()) == {
        "grant_type": ["client_credentials"],
        "scope": ["models.read"],
    }
    [token] = (await cached_oauth_tokens(keychain, "openai-oauth")).values()
    assert token.data["access_token"] == "oa-token"
    # The client JSON itself came through fetch_secret, so it is cached per execution too.
    assert await keychain.get(f"{OAUTH_CLIENT}:1") is not None


async def test_plain_http_token_urls_are_refused_before_any_secret_is_read(
    keychain: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secrets: SecretManagerEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEYCHAIN_OAUTH_INSECURE_HOSTS")
    secrets.add(
        OAUTH_CLIENT,
        json.dumps(
            {
                "token_url": "http://idp.test/t?tenant=q-0000",
                "client_id": "w",
                "client_secret": OAUTH_CLIENT_SECRET,
            }
        ),
    )
    explicit = {
        "type": "bearer",
        "oauth_credential": "crm",
        "token_url": "http://ops:pw-0000@idp.test/token",
        "client_id": "worker",
        "client_secret_key": CRM_CLIENT,
    }
    with pytest.raises(
        AuthConfigError, match=r"'crm': token_url http://idp.test/token is plain http"
    ) as caught:
        await resolve_auth(
            {"crm": explicit},
            execution_id=1,
            keychain=keychain,
            providers={"secret_manager": provider},
        )
    assert "KEYCHAIN_OAUTH_INSECURE_HOSTS" in str(caught.value) and "pw-0000" not in str(
        caught.value
    )
    assert secrets.total_calls == 0

    in_key = {"type": "bearer", "key": OAUTH_CLIENT, "oauth_credential": "llm"}
    with pytest.raises(
        AuthConfigError, match=r"'llm': token_url http://idp.test/t is plain http"
    ) as caught:
        await resolve_auth(
            {"llm": in_key},
            execution_id=1,
            keychain=keychain,
            providers={"secret_manager": provider},
        )
    assert "q-0000" not in str(caught.value) and OAUTH_CLIENT_SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (
            json.dumps({"token_url": "http://idp.test/t", "client_secret": OAUTH_CLIENT_SECRET}),
            "needs client_id",
        ),
        (json.dumps({"client_id": "w", "client_secret": ""}), "needs token_url, client_secret"),
        (
            json.dumps(
                {
                    "token_url": "http://idp.test/t",
                    "client_id": "w",
                    "client_secret": OAUTH_CLIENT_SECRET,
                    "scope": ["a"],
                }
            ),
            "'scope' .* must be a string",
        ),
        (f"client_secret={OAUTH_CLIENT_SECRET}", "must be a JSON object"),
        (json.dumps([OAUTH_CLIENT_SECRET]), "must be a JSON object"),
    ],
    ids=["no-client_id", "empty-fields", "scope-not-a-string", "not-json", "not-an-object"],
)
async def test_an_incomplete_oauth_client_json_is_named_without_its_values(
    keychain: KeychainClient,
    provider: GoogleSecretManagerProvider,
    secrets: SecretManagerEmulator,
    stored: str,
    message: str,
) -> None:
    secrets.add(OAUTH_CLIENT, stored)
    auth = {"openai": {"type": "bearer", "key": OAUTH_CLIENT, "oauth_credential": "openai-oauth"}}
    with pytest.raises(AuthConfigError, match=message) as caught:
        await resolve_auth(
            auth, execution_id=1, keychain=keychain, providers={"secret_manager": provider}
        )
    assert "'openai'" in str(caught.value)
    # Not in the message, nor anywhere in the traceback a worker would log.
    assert OAUTH_CLIENT_SECRET not in "".join(traceback.format_exception(caught.value))
    assert caught.value.__context__ is None and caught.value.__cause__ is None


async def test_an_oauth_credential_with_neither_key_nor_token_url_says_both_ways(
    keychain: KeychainClient,
) -> None:
    with pytest.raises(AuthConfigError, match=r"needs 'key' .* or 'token_url'"):
        await resolve_auth(
            {"svc": {"type": "bearer", "oauth_credential": "svc"}},
            execution_id=1,
            keychain=keychain,
        )


async def test_the_operator_can_point_the_default_provider_at_the_environment(
    keychain: KeychainClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYCHAIN_SECRET_PROVIDER", "env")
    monkeypatch.setenv("KEYCHAIN_SECRET_OPENAI_API_KEY", "sk-local")
    for spec in (
        {"type": "bearer", "key": OPENAI},
        {"type": "bearer", "provider": "secret_manager", "key": OPENAI},
    ):
        headers = await resolve_auth({"openai": spec}, execution_id=3, keychain=keychain)
        assert headers == {"Authorization": "Bearer sk-local"}


async def test_a_playbook_cannot_read_the_workers_own_token_from_its_environment(
    keychain: KeychainClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYCHAIN_API_TOKEN", WORKER_TOKEN)
    with pytest.raises(AuthConfigError, match="provider 'env' is not available") as caught:
        await resolve_auth(
            {"x": {"type": "bearer", "provider": "env", "key": "KEYCHAIN_API_TOKEN"}},
            execution_id=1,
            keychain=keychain,
        )
    assert WORKER_TOKEN not in str(caught.value)

    # Even with the operator's env provider, a secret name only reaches KEYCHAIN_SECRET_* variables.
    monkeypatch.setenv("KEYCHAIN_SECRET_PROVIDER", "env")
    for key in ("KEYCHAIN_API_TOKEN", "keychain-api-token", "../KEYCHAIN_API_TOKEN"):
        with pytest.raises(SecretNotFound, match="KEYCHAIN_SECRET_") as not_found:
            await resolve_auth(
                {"x": {"type": "bearer", "key": key}}, execution_id=1, keychain=keychain
            )
        assert WORKER_TOKEN not in str(not_found.value)


async def test_a_playbook_cannot_name_a_directory_to_read(
    keychain: KeychainClient, tmp_path: Path
) -> None:
    """`provider: file` with the service-account directory used to hand out the pod's token."""
    (tmp_path / "token").write_text(SERVICE_ACCOUNT_TOKEN)
    for spec in (
        {"type": "bearer", "provider": "file", "directory": str(tmp_path), "key": "token"},
        {"type": "bearer", "directory": str(tmp_path), "key": "token"},
    ):
        with pytest.raises(
            AuthConfigError,
            match=r"'directory' is not accepted from a playbook.*KEYCHAIN_SECRETS_DIR",
        ):
            await resolve_auth({"sa": spec}, execution_id=1, keychain=keychain)


async def test_the_workers_code_may_register_providers_by_name(
    keychain: KeychainClient, tmp_path: Path
) -> None:
    (tmp_path / "maps-key").write_text("maps-from-file\n")
    headers = await resolve_auth(
        {"maps": {"type": "api_key", "provider": "mounted", "key": MAPS}},
        execution_id=1,
        keychain=keychain,
        providers={"mounted": FileProvider(tmp_path)},
    )
    assert headers == {"X-API-Key": "maps-from-file"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "digest", "key": OPENAI}, "unknown type 'digest'"),
        ({"type": "bearer"}, "needs 'key'"),
        ({"type": "basic", "password_key": JIRA}, "needs 'username'"),
        (
            {"type": "bearer", "provider": "vault", "key": OPENAI},
            "provider 'vault' is not available",
        ),
    ],
)
async def test_incomplete_entries_say_what_is_missing(
    keychain: KeychainClient, spec: dict, message: str
) -> None:
    with pytest.raises(AuthConfigError, match=message) as caught:
        await resolve_auth({"svc": spec}, execution_id=1, keychain=keychain)
    assert "'svc'" in str(caught.value)


async def test_an_unknown_auth_method_is_refused_before_any_secret_is_read(
    keychain: KeychainClient, secrets: SecretManagerEmulator
) -> None:
    spec = {
        "type": "bearer",
        "key": OAUTH_CLIENT,
        "oauth_credential": "crm",
        "auth_method": "private_key_jwt",
    }
    with pytest.raises(AuthConfigError, match="'crm': auth_method must be one of"):
        await resolve_auth({"crm": spec}, execution_id=1, keychain=keychain)
    assert secrets.total_calls == 0
