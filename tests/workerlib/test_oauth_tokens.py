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
    ScriptedServer,
    assert_logged_degraded,
    cached_oauth_tokens,
    token_endpoint,
)
from workerlib import KeychainClient
from workerlib.errors import TokenEndpointError
from workerlib.oauth import OAuthClient, cache_ttl, client_credentials_token

TOKEN_URL = f"{IDP_URL}/oauth/token"
CLIENT_SECRET = "client-secret-0000"


async def test_the_token_is_cached_globally_with_ttl_expires_in_minus_300_and_reused(
    keychain: KeychainClient,
) -> None:
    idp = token_endpoint(expires_in=3600)
    async with idp.http_client(IDP_URL) as http:
        kwargs = dict(
            token_url=TOKEN_URL,
            client_id="worker",
            client_secret=CLIENT_SECRET,
            scope="read",
            keychain=keychain,
            http_client=http,
        )
        assert await client_credentials_token("crm", **kwargs) == "at-first"
        assert await client_credentials_token("crm", **kwargs) == "at-first"
    assert len(idp.requests) == 1

    request = idp.requests[0]
    assert parse_qs(request["body"].decode()) == {
        "grant_type": ["client_credentials"],
        "scope": ["read"],
    }
    expected_basic = base64.b64encode(f"worker:{CLIENT_SECRET}".encode()).decode()
    assert request["headers"]["authorization"] == f"Basic {expected_basic}"

    [entry] = (await cached_oauth_tokens(keychain, "crm")).values()
    assert entry.ttl_seconds == 3300
    assert (entry.scope_type, entry.cache_type, entry.credential_type) == (
        "global",
        "token",
        "oauth2_client_credentials",
    )
    assert entry.data["access_token"] == "at-first"
    assert CLIENT_SECRET not in str(entry.data)


@pytest.mark.parametrize(("expires_in", "ttl"), [(200, 60), (100, 40), (61, 1)])
async def test_a_short_lived_token_is_cached_only_while_a_minute_of_it_is_left(
    keychain: KeychainClient, expires_in: int, ttl: int
) -> None:
    """expires_in=61 used to be cached for 60 s: handed out with a second to live."""
    idp = token_endpoint(expires_in=expires_in)
    async with idp.http_client(IDP_URL) as http:
        await client_credentials_token(
            "short",
            token_url=TOKEN_URL,
            client_id="w",
            client_secret=CLIENT_SECRET,
            keychain=keychain,
            http_client=http,
        )
    [entry] = (await cached_oauth_tokens(keychain, "short")).values()
    assert entry.ttl_seconds == ttl and expires_in - entry.ttl_seconds >= 60


async def test_a_token_with_a_minute_or_less_to_live_is_not_cached(
    keychain: KeychainClient,
) -> None:
    idp = token_endpoint(expires_in=60)
    async with idp.http_client(IDP_URL) as http:
        kwargs = dict(
            token_url=TOKEN_URL,
            client_id="w",
            client_secret=CLIENT_SECRET,
            keychain=keychain,
            http_client=http,
        )
        assert await client_credentials_token("brief", **kwargs) == "at-first"
        assert await client_credentials_token("brief", **kwargs) == "at-second"
    assert await cached_oauth_tokens(keychain, "brief") == {}


def test_the_cache_always_leaves_the_token_a_minute() -> None:
    expires = (3600, 361, 360, 200, 100, 61, 60, 30, 0)
    assert [cache_ttl(e) for e in expires] == [3300, 61, 60, 60, 40, 1, None, None, None]


async def test_a_call_for_another_endpoint_client_scope_or_audience_gets_its_own_token(
    keychain: KeychainClient,
) -> None:
    """The cache used to answer by credential name alone: a call naming another endpoint and
    scope "admin write" got the token issued to the first for scope "read"."""
    idp = ScriptedServer(
        *((200, {}, {"access_token": f"at-{n}", "expires_in": 3600}) for n in range(1, 6))
    )
    first = dict(token_url=TOKEN_URL, client_id="worker", scope="read", audience=None)
    others = [
        {**first, "token_url": f"{IDP_URL}/other/token", "scope": "admin write"},
        {**first, "client_id": "admin"},
        {**first, "scope": "read write"},
        {**first, "audience": "https://api.test"},
    ]
    async with idp.http_client(IDP_URL) as http:

        async def token(fields: dict) -> str:
            return await client_credentials_token(
                "crm", **fields, client_secret=CLIENT_SECRET, keychain=keychain, http_client=http
            )

        assert await token(first) == "at-1"
        assert [await token(fields) for fields in others] == ["at-2", "at-3", "at-4", "at-5"]
        assert await token(first) == "at-1"  # each is cached under its own key
        assert await token({**others[2], "scope": "write  read"}) == "at-4"  # a scope is a set
    assert len(idp.requests) == 5 and idp.requests[1]["path"] == "/other/token"
    cached = await cached_oauth_tokens(keychain, "crm")
    assert len(cached) == 5
    # Readable and stable: the name, the type, then a digest of what the token is.
    assert f"crm:global:oauth2:{OAuthClient(TOKEN_URL, 'worker', 'read').digest()}" in cached
    assert CLIENT_SECRET not in repr(cached)


async def test_a_plain_http_token_url_is_refused_unless_allowed(
    keychain: KeychainClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEYCHAIN_OAUTH_INSECURE_HOSTS")
    idp = token_endpoint()
    async with idp.http_client(IDP_URL) as http:
        kwargs = dict(
            client_id="w", client_secret=CLIENT_SECRET, keychain=keychain, http_client=http
        )
        with pytest.raises(
            TokenEndpointError,
            match=r"plain http.*use https, or list idp.test in KEYCHAIN_OAUTH_INSECURE_HOSTS",
        ):
            await client_credentials_token("insecure", token_url=TOKEN_URL, **kwargs)
        with pytest.raises(TokenEndpointError, match="not an https:// URL"):
            await client_credentials_token("insecure", token_url="ftp://idp.test/token", **kwargs)
        assert idp.requests == []  # the client secret was not sent
        allowed = await client_credentials_token(
            "insecure", token_url=TOKEN_URL, insecure_hosts=["idp.test"], **kwargs
        )
        assert allowed == "at-first"
        monkeypatch.setenv("KEYCHAIN_OAUTH_INSECURE_HOSTS", "127.0.0.1, IDP.test")
        assert (
            await client_credentials_token("insecure2", token_url=TOKEN_URL, **kwargs)
            == "at-second"
        )


async def test_errors_never_quote_userinfo_or_query_of_the_token_url(
    keychain: KeychainClient, closed_port: int
) -> None:
    refusing = ScriptedServer((401, {}, {"error": "invalid_client"}))
    url = "https://ops:pw-0000@idp.test/oauth/token?api_key=q-0000#f-0000"
    async with refusing.http_client("https://idp.test") as http:
        with pytest.raises(
            TokenEndpointError, match=r"https://idp.test/oauth/token answered 401"
        ) as refused:
            await client_credentials_token(
                "u",
                token_url=url,
                client_id="w",
                client_secret=CLIENT_SECRET,
                keychain=keychain,
                http_client=http,
            )
    with pytest.raises(
        TokenEndpointError, match=r"cannot reach the token endpoint https://127.0.0.1"
    ) as unreachable:
        await client_credentials_token(
            "u",
            token_url=f"https://ops:pw-0000@127.0.0.1:{closed_port}/t?api_key=q-0000",
            client_id="w",
            client_secret=CLIENT_SECRET,
            keychain=keychain,
        )
    for caught in (refused, unreachable):
        error: BaseException | None = caught.value
        while (
            error is not None
        ):  # the error and whatever it carries along, as a log would show them
            assert not any(hidden in repr(error) for hidden in ("pw-0000", "q-0000", "f-0000")), (
                repr(error)
            )
            error = error.__cause__ or error.__context__


async def test_client_secret_post_sends_the_credentials_in_the_form(
    keychain: KeychainClient,
) -> None:
    idp = token_endpoint()
    async with idp.http_client(IDP_URL) as http:
        await client_credentials_token(
            "post",
            token_url=TOKEN_URL,
            client_id="w",
            client_secret=CLIENT_SECRET,
            auth_method="client_secret_post",
            keychain=keychain,
            http_client=http,
        )
    form = parse_qs(idp.requests[0]["body"].decode())
    assert form["client_id"] == ["w"] and form["client_secret"] == [CLIENT_SECRET]
    assert "authorization" not in idp.requests[0]["headers"]


async def test_a_refusal_names_the_oauth_error_but_never_echoes_the_body(
    keychain: KeychainClient,
) -> None:
    idp = ScriptedServer(
        (401, {}, {"error": "invalid_client", "error_description": f"bad secret {CLIENT_SECRET}"})
    )
    async with idp.http_client(IDP_URL) as http:
        with pytest.raises(TokenEndpointError) as caught:
            await client_credentials_token(
                "bad",
                token_url=TOKEN_URL,
                client_id="w",
                client_secret=CLIENT_SECRET,
                keychain=keychain,
                http_client=http,
            )
    assert "invalid_client" in str(caught.value) and "401" in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)
    assert await cached_oauth_tokens(keychain, "bad") == {}


async def test_keychain_down_still_gives_a_token(
    down_keychain: KeychainClient, caplog: pytest.LogCaptureFixture
) -> None:
    idp = token_endpoint()
    async with idp.http_client(IDP_URL) as http:
        token = await client_credentials_token(
            "down",
            token_url=TOKEN_URL,
            client_id="w",
            client_secret=CLIENT_SECRET,
            keychain=down_keychain,
            http_client=http,
        )
    assert token == "at-first"
    assert "degraded" in caplog.text
    assert "at-first" not in caplog.text and CLIENT_SECRET not in caplog.text


@pytest.mark.parametrize(
    ("status", "headers", "body", "error_class", "detail"), CACHE_FAILURES, ids=CACHE_FAILURE_IDS
)
@pytest.mark.parametrize("failing", ["read", "write"])
async def test_a_failing_cache_never_fails_token_acquisition(
    caplog: pytest.LogCaptureFixture,
    failing: str,
    status: int,
    headers: dict,
    body: object,
    error_class: str,
    detail: str,
) -> None:
    keychain_server = (
        ScriptedServer((status, headers, body))
        if failing == "read"
        else ScriptedServer(MISS, (status, headers, body))
    )
    idp = token_endpoint()
    async with keychain_server.http_client() as keychain_http, idp.http_client(IDP_URL) as http:
        keychain = KeychainClient(BASE_URL, http_client=keychain_http)
        token = await client_credentials_token(
            "crm",
            token_url=TOKEN_URL,
            client_id="w",
            client_secret=CLIENT_SECRET,
            keychain=keychain,
            http_client=http,
        )
    assert token == "at-first"
    assert [r["method"] for r in keychain_server.requests] == (
        ["GET"] if failing == "read" else ["GET", "POST"]
    )
    assert_logged_degraded(caplog, status, error_class, detail, "at-first", CLIENT_SECRET)
