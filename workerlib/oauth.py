"""OAuth2 client-credentials tokens, cached globally so every worker shares one token.

A token is cached under `{name}:global:oauth2:{digest}`, the digest taken over what the token
is (token URL, client id, scope, audience): a call naming another endpoint or scope never gets
a token issued for the first. It is cached until REFRESH_MARGIN_SECONDS before it expires, and
never so long that a token handed out from the cache has less than MIN_REMAINING_SECONDS left.

The token URL must be https: the client secret travels in the request. Plain http is allowed
only to hosts listed in KEYCHAIN_OAUTH_INSECURE_HOSTS (comma-separated) or `insecure_hosts=`.
Messages show a URL without user:password@, query or fragment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Collection
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx

from workerlib._readthrough import Store, read_through
from workerlib.client import KeychainClient, display_url
from workerlib.errors import TokenEndpointError
from workerlib.keys import oauth2_token_key
from workerlib.models import Entry, FillLease

log = logging.getLogger(__name__)

# How the client authenticates to the token endpoint (RFC 6749 section 2.3.1).
AUTH_METHODS = ("client_secret_basic", "client_secret_post")

CREDENTIAL_TYPE = "oauth2_client_credentials"
INSECURE_HOSTS_ENV = "KEYCHAIN_OAUTH_INSECURE_HOSTS"
REFRESH_MARGIN_SECONDS = 300
MIN_REMAINING_SECONDS = 60
# RFC 6749 makes expires_in optional; assume the common hour when a server leaves it out.
DEFAULT_EXPIRES_IN = 3600


def cache_ttl(expires_in: int) -> int | None:
    """Seconds to cache a token that lives `expires_in`; None when it cannot be cached.

    expires_in - REFRESH_MARGIN_SECONDS; for a short-lived token up to a minute instead, but
    always leaving MIN_REMAINING_SECONDS of the token's life when the entry expires.
    """
    ttl = max(expires_in - REFRESH_MARGIN_SECONDS, min(expires_in - MIN_REMAINING_SECONDS, 60))
    return ttl if ttl > 0 else None


class OAuthClient(NamedTuple):
    """Which token is asked for: what the cache key's digest covers (never the client secret)."""

    token_url: str
    client_id: str
    scope: str | None = None
    audience: str | None = None

    def digest(self) -> str:
        # A scope is a set of space-separated names (RFC 6749, 3.3): "write read" is "read write".
        scope = " ".join(sorted(set((self.scope or "").split())))
        identity = json.dumps([self.token_url, self.client_id, scope, self.audience or ""])
        return hashlib.sha256(identity.encode()).hexdigest()[:32]


def check_token_url(token_url: str, insecure_hosts: Collection[str] | None = None) -> None:
    """TokenEndpointError unless `token_url` is https (or http to an allowed host)."""
    try:
        parts = urlsplit(token_url)
        host = parts.hostname
    except ValueError:
        host = None
    if not host or parts.scheme not in ("https", "http"):
        raise TokenEndpointError(
            f"token_url {display_url(token_url)!r} is not an https:// URL with a host"
        )
    if parts.scheme == "https":
        return
    allowed = {h.strip().lower() for h in os.environ.get(INSECURE_HOSTS_ENV, "").split(",")}
    allowed.update(h.lower() for h in insecure_hosts or ())
    if host not in allowed:
        raise TokenEndpointError(
            f"token_url {display_url(token_url)} is plain http, which would send the client secret in clear; "
            f"use https, or list {host} in {INSECURE_HOSTS_ENV} (or insecure_hosts=) if it is on a trusted network"
        )


async def client_credentials_token(
    name: str,
    *,
    token_url: str,
    client_id: str,
    client_secret: str,
    scope: str | None = None,
    audience: str | None = None,
    auth_method: str = "client_secret_basic",
    keychain: KeychainClient,
    http_client: httpx.AsyncClient | None = None,
    token_timeout: float = 10.0,
    insecure_hosts: Collection[str] | None = None,
) -> str:
    """An access token for `name`: from the cache, else from `token_url` (then cached).

    Raises TokenEndpointError (an endpoint that is not https, refuses, or answers without a
    token), ValueError for an unknown auth_method, WrongEventLoop; never the cache's errors.
    """

    async def secret() -> str:
        return client_secret

    return await cached_token(
        name,
        OAuthClient(token_url, client_id, scope, audience),
        secret,
        auth_method=auth_method,
        keychain=keychain,
        http_client=http_client,
        token_timeout=token_timeout,
        insecure_hosts=insecure_hosts,
    )


async def cached_token(
    name: str,
    oauth: OAuthClient,
    client_secret: Callable[[], Awaitable[str]],
    *,
    auth_method: str = "client_secret_basic",
    keychain: KeychainClient,
    http_client: httpx.AsyncClient | None = None,
    token_timeout: float = 10.0,
    insecure_hosts: Collection[str] | None = None,
) -> str:
    """client_credentials_token with the client secret read only on a cache miss.

    A cached token needs no client secret: `client_secret()` (which may read a secret) runs only
    when a token has to be requested.
    """
    if auth_method not in AUTH_METHODS:
        raise ValueError(f"auth_method must be one of {', '.join(AUTH_METHODS)}")
    check_token_url(oauth.token_url, insecure_hosts)
    key = oauth2_token_key(name, oauth.digest())

    def cached(entry: Entry) -> str | None:
        token = entry.data.get("access_token")
        return token if isinstance(token, str) else None

    async def produce() -> tuple[str, Store]:
        token = await _request_token(
            oauth, await client_secret(), auth_method, http_client, token_timeout
        )
        ttl = cache_ttl(_expires_in(token))
        if ttl is None:
            return token["access_token"], None
        data: dict[str, Any] = {
            k: token[k] for k in ("access_token", "token_type", "expires_in", "scope") if k in token
        }

        async def store(keychain: KeychainClient, lease: FillLease | None) -> None:
            # No execution_id: the server scopes it globally.
            await keychain.put(
                key,
                data,
                credential_type=CREDENTIAL_TYPE,
                cache_type="token",
                credential_name=name,
                ttl_seconds=ttl,
                fill_lease=lease,
            )

        return token["access_token"], store

    return await read_through(
        ("oauth2", key),
        keychain,
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
    oauth: OAuthClient,
    client_secret: str,
    auth_method: str,
    http_client: httpx.AsyncClient | None,
    token_timeout: float,
) -> dict[str, Any]:
    form = {"grant_type": "client_credentials"}
    if oauth.scope:
        form["scope"] = oauth.scope
    if oauth.audience:
        form["audience"] = oauth.audience
    # The base Auth sends the request as it is: the secret travels in the form instead.
    auth = httpx.Auth()
    if auth_method == "client_secret_basic":
        auth = httpx.BasicAuth(oauth.client_id, client_secret)
    else:
        form.update(client_id=oauth.client_id, client_secret=client_secret)
    where = display_url(oauth.token_url)

    owned = http_client is None
    http = http_client or httpx.AsyncClient(timeout=token_timeout)
    try:
        response = await http.post(
            oauth.token_url,
            data=form,
            auth=auth,
            headers={"Accept": "application/json"},
            timeout=token_timeout,
        )
    except httpx.HTTPError as exc:
        # Not chained: an httpx error may quote the URL whole.
        raise TokenEndpointError(
            f"cannot reach the token endpoint {where} ({type(exc).__name__})"
        ) from None
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
        raise TokenEndpointError(f"token endpoint {where} answered {response.status_code}{reason}")
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise TokenEndpointError(f"token endpoint {where} answered without an access_token")
    return body
