"""OAuth2 client credentials: a token endpoint served in-process, the token cached globally."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs

import pytest

from tests.conftest import BASE_URL
from tests.workerlib.helpers import (
    CACHE_FAILURE_IDS,
    CACHE_FAILURES,
    IDP_URL,
    MISS,
    UNUSABLE_SETTING_IDS,
    UNUSABLE_SETTINGS,
    ScriptedServer,
    assert_logged_degraded,
    assert_logged_unusable_configuration,
    token_endpoint,
)
from workerlib import KeychainClient, TokenEndpointError, client_credentials_token
from workerlib import client as client_module
from workerlib.oauth import cache_ttl

TOKEN_URL = f"{IDP_URL}/oauth/token"
CLIENT_SECRET = "client-secret-0000"


async def test_the_token_is_cached_globally_with_ttl_expires_in_minus_300_and_reused(
    keychain: KeychainClient,
) -> None:
    idp = token_endpoint(expires_in=3600)
    async with idp.http_client(IDP_URL) as http:
        kwargs = dict(token_url=TOKEN_URL, client_id="worker", client_secret=CLIENT_SECRET, scope="read",
                      client=keychain, http_client=http)
        assert await client_credentials_token("crm", **kwargs) == "at-first"
        assert await client_credentials_token("crm", **kwargs) == "at-first"
    assert len(idp.requests) == 1

    request = idp.requests[0]
    assert parse_qs(request["body"].decode()) == {"grant_type": ["client_credentials"], "scope": ["read"]}
    expected_basic = base64.b64encode(f"worker:{CLIENT_SECRET}".encode()).decode()
    assert request["headers"]["authorization"] == f"Basic {expected_basic}"

    entry = await keychain.get("crm:global:oauth2")
    assert entry is not None
    assert entry.ttl_seconds == 3300
    assert (entry.scope_type, entry.cache_type, entry.credential_type) == ("global", "token", "oauth2_client_credentials")
    assert entry.data["access_token"] == "at-first"
    assert CLIENT_SECRET not in str(entry.data)


async def test_a_short_lived_token_is_cached_for_the_floor(keychain: KeychainClient) -> None:
    idp = token_endpoint(expires_in=200)
    async with idp.http_client(IDP_URL) as http:
        await client_credentials_token("short", token_url=TOKEN_URL, client_id="w", client_secret=CLIENT_SECRET,
                                       client=keychain, http_client=http)
    entry = await keychain.get("short:global:oauth2")
    assert entry is not None and entry.ttl_seconds == 60


def test_the_cache_never_outlives_the_token() -> None:
    assert cache_ttl(3600) == 3300
    assert cache_ttl(200) == 60
    assert cache_ttl(30) == 30


async def test_client_secret_post_sends_the_credentials_in_the_form(keychain: KeychainClient) -> None:
    idp = token_endpoint()
    async with idp.http_client(IDP_URL) as http:
        await client_credentials_token("post", token_url=TOKEN_URL, client_id="w", client_secret=CLIENT_SECRET,
                                       auth_method="client_secret_post", client=keychain, http_client=http)
    form = parse_qs(idp.requests[0]["body"].decode())
    assert form["client_id"] == ["w"] and form["client_secret"] == [CLIENT_SECRET]
    assert "authorization" not in idp.requests[0]["headers"]


async def test_a_refusal_names_the_oauth_error_but_never_echoes_the_body(keychain: KeychainClient) -> None:
    idp = ScriptedServer(
        (401, {}, {"error": "invalid_client", "error_description": f"bad secret {CLIENT_SECRET}"})
    )
    async with idp.http_client(IDP_URL) as http:
        with pytest.raises(TokenEndpointError) as caught:
            await client_credentials_token("bad", token_url=TOKEN_URL, client_id="w", client_secret=CLIENT_SECRET,
                                           client=keychain, http_client=http)
    assert "invalid_client" in str(caught.value) and "401" in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)
    assert await keychain.get("bad:global:oauth2") is None


async def test_keychain_down_still_gives_a_token(down_keychain: KeychainClient, caplog: pytest.LogCaptureFixture) -> None:
    idp = token_endpoint()
    async with idp.http_client(IDP_URL) as http:
        token = await client_credentials_token("down", token_url=TOKEN_URL, client_id="w",
                                               client_secret=CLIENT_SECRET, client=down_keychain, http_client=http)
    assert token == "at-first"
    assert "degraded" in caplog.text
    assert "at-first" not in caplog.text and CLIENT_SECRET not in caplog.text


@pytest.mark.parametrize(("status", "headers", "body", "error_class", "detail"), CACHE_FAILURES, ids=CACHE_FAILURE_IDS)
@pytest.mark.parametrize("failing", ["read", "write"])
async def test_a_failing_cache_never_fails_token_acquisition(
    caplog: pytest.LogCaptureFixture,
    failing: str, status: int, headers: dict, body: object, error_class: str, detail: str,
) -> None:
    keychain_server = ScriptedServer((status, headers, body)) if failing == "read" else ScriptedServer(MISS, (status, headers, body))
    idp = token_endpoint()
    async with keychain_server.http_client() as keychain_http, idp.http_client(IDP_URL) as http:
        keychain = KeychainClient(BASE_URL, http_client=keychain_http)
        token = await client_credentials_token("crm", token_url=TOKEN_URL, client_id="w",
                                               client_secret=CLIENT_SECRET, client=keychain, http_client=http)
    assert token == "at-first"
    assert [r["method"] for r in keychain_server.requests] == (["GET"] if failing == "read" else ["GET", "POST"])
    assert_logged_degraded(caplog, status, error_class, detail, "at-first", CLIENT_SECRET)


@pytest.mark.parametrize(("variable", "value"), UNUSABLE_SETTINGS, ids=UNUSABLE_SETTING_IDS)
async def test_an_unusable_client_configuration_still_gives_a_token(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    client_module.set_default_client(None)
    async with token_endpoint().http_client(IDP_URL) as http:
        token = await client_credentials_token("cfg", token_url=TOKEN_URL, client_id="w",
                                               client_secret=CLIENT_SECRET, http_client=http)
    assert token == "at-first"
    assert_logged_unusable_configuration(caplog, variable, value)
