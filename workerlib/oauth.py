"""OAuth2 client-credentials tokens, cached globally so every worker shares one token.

Cached under `{name}:global:oauth2` for `expires_in - 300` seconds (never below a floor, never
past the token's own expiry), so a token handed out is always good for a while yet.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import httpx

from workerlib._readthrough import Store, read_through
from workerlib.client import KeychainClient
from workerlib.errors import TokenEndpointError
from workerlib.keys import cache_key
from workerlib.models import Entry

log = logging.getLogger(__name__)

CREDENTIAL_TYPE = "oauth2_client_credentials"
TOKEN_TYPE = "oauth2"
REFRESH_MARGIN_SECONDS = 300
MIN_TTL_SECONDS = 60
# RFC 6749 makes expires_in optional; assume the common hour when a server leaves it out.
DEFAULT_EXPIRES_IN = 3600


def cache_ttl(expires_in: int) -> int:
    """expires_in - REFRESH_MARGIN_SECONDS, at least MIN_TTL_SECONDS, but never longer than the token lives."""
    return min(expires_in, max(MIN_TTL_SECONDS, expires_in - REFRESH_MARGIN_SECONDS))


class OAuthClient(NamedTuple):
    """What a token request needs from the client's configuration (and its secret)."""

    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None


async def client_credentials_token(
    name: str,
    *,
    token_url: str,
    client_id: str,
    client_secret: str,
    scope: str | None = None,
    audience: str | None = None,
    auth_method: str = "client_secret_basic",
    client: KeychainClient | None = None,
    http_client: httpx.AsyncClient | None = None,
    timeout: float = 10.0,
) -> str:
    """An access token for `name`: from the cache, else from `token_url` (then cached)."""

    async def fetch_client() -> OAuthClient:
        return OAuthClient(token_url, client_id, client_secret, scope)

    return await cached_token(
        name, fetch_client, audience=audience, auth_method=auth_method, client=client,
        http_client=http_client, timeout=timeout,
    )


async def cached_token(
    name: str,
    fetch_client: Callable[[], Awaitable[OAuthClient]],
    *,
    audience: str | None = None,
    auth_method: str = "client_secret_basic",
    client: KeychainClient | None = None,
    http_client: httpx.AsyncClient | None = None,
    timeout: float = 10.0,
) -> str:
    """client_credentials_token with the client's configuration fetched only on a cache miss.

    A cached token needs no client secret: `fetch_client()` (which may read secrets) runs only
    when a token has to be requested.
    """
    if auth_method not in ("client_secret_basic", "client_secret_post"):
        raise ValueError("auth_method must be 'client_secret_basic' or 'client_secret_post'")
    key = cache_key(name, token_type=TOKEN_TYPE)

    def cached(entry: Entry) -> str | None:
        token = entry.data.get("access_token")
        return token if isinstance(token, str) else None

    async def produce() -> tuple[str, Store]:
        oauth = await fetch_client()
        token = await _request_token(
            oauth.token_url, oauth.client_id, oauth.client_secret, oauth.scope, audience, auth_method,
            http_client, timeout,
        )
        expires_in = _expires_in(token)
        if expires_in <= 0:
            return token["access_token"], None
        data = {k: token[k] for k in ("access_token", "token_type", "expires_in", "scope") if k in token}

        async def store(keychain: KeychainClient) -> None:
            # No execution_id: the server scopes it globally.
            await keychain.put(
                key,
                data,
                credential_type=CREDENTIAL_TYPE,
                cache_type="token",
                credential_name=name,
                ttl_seconds=cache_ttl(expires_in),
            )

        return token["access_token"], store

    return await read_through(
        ("oauth2", key),
        client,
        key,
        cached=cached,
        produce=produce,
        log=log,
        context={"credential_name": name},
        uncached=f"OAuth2 token {name} fetched without the cache",
        unstored=f"OAuth2 token {name} was not cached",
    )


def _expires_in(token: dict[str, Any]) -> int:
    value = token.get("expires_in", DEFAULT_EXPIRES_IN)
    try:
        return int(value)
    except (TypeError, ValueError):
        return DEFAULT_EXPIRES_IN


async def _request_token(
    token_url: str,
    client_id: str,
    client_secret: str,
    scope: str | None,
    audience: str | None,
    auth_method: str,
    http_client: httpx.AsyncClient | None,
    timeout: float,
) -> dict[str, Any]:
    form = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    if audience:
        form["audience"] = audience
    auth: httpx.Auth | None = None
    if auth_method == "client_secret_basic":
        auth = httpx.BasicAuth(client_id, client_secret)
    else:
        form.update(client_id=client_id, client_secret=client_secret)

    owned = http_client is None
    http = http_client or httpx.AsyncClient(timeout=timeout)
    try:
        response = await http.post(token_url, data=form, auth=auth, headers={"Accept": "application/json"}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise TokenEndpointError(f"cannot reach the token endpoint {token_url} ({type(exc).__name__})") from exc
    finally:
        if owned:
            await http.aclose()

    try:
        body = response.json()
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the stack allows
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        # Only the RFC 6749 error code: a body might echo what we sent.
        error = body.get("error") if isinstance(body, dict) else None
        reason = f", error {error!r}" if isinstance(error, str) else ""
        raise TokenEndpointError(f"token endpoint {token_url} answered {response.status_code}{reason}")
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise TokenEndpointError(f"token endpoint {token_url} answered without an access_token")
    return body
