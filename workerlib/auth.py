"""Turn a playbook `auth:` map into request headers, every secret through fetch_secret.

    {"openai": {"type": "bearer", "provider": "secret_manager", "key": "projects/1/secrets/openai/versions/1"},
     "jira":   {"type": "basic", "username": "bot", "password_key": "projects/1/secrets/jira/versions/2"},
     "maps":   {"type": "api_key", "header": "X-Goog-Api-Key", "key": "projects/1/secrets/maps/versions/1"},
     "crm":    {"type": "bearer", "oauth_credential": "crm", "token_url": "https://crm/oauth/token",
                "client_id": "worker", "client_secret_key": "projects/1/secrets/crm-client/versions/1"},
     "llm":    {"type": "bearer", "key": "projects/1/secrets/llm-oauth-client/versions/1",
                "oauth_credential": "llm"}}

An `oauth_credential` entry is an OAuth2 client-credentials token, cached globally under
`{oauth_credential}:global:oauth2:{digest}` (see workerlib.oauth). Its client is either spelled
out in the map (`token_url`, `client_id` or `client_id_key`, `client_secret_key`) or, with none
of those, kept whole in the `key` secret as JSON:
{"token_url": ..., "client_id": ..., "client_secret": ..., "scope": optional}.

Where secrets come from is not the playbook's to choose: a playbook that could say `env` or
`file` could read the worker's own token or the pod's service-account token. `provider` may
only be `secret_manager` (the default: the provider the operator configured, which
KEYCHAIN_SECRET_PROVIDER may point at environment variables or files; or the one the worker's
code passes as `providers["secret_manager"]`) or another name the worker's code passed in
`providers=`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from workerlib.client import KeychainClient
from workerlib.errors import AuthConfigError, TokenEndpointError
from workerlib.oauth import AUTH_METHODS, OAuthClient, cached_token, check_token_url
from workerlib.providers import PROVIDER_ENV, SECRETS_DIR_ENV, SecretProvider
from workerlib.secrets import fetch_secret

DEFAULT_API_KEY_HEADER = "X-API-Key"
# With any of these in the map, the OAuth2 client is configured there; without them, `key` is
# a secret holding it as JSON.
_EXPLICIT_OAUTH_FIELDS = ("token_url", "client_id", "client_id_key", "client_secret_key")
_OAUTH_CLIENT_FIELDS = ("token_url", "client_id", "client_secret")


def _provider(
    entry: str, spec: Mapping[str, Any], providers: Mapping[str, SecretProvider]
) -> SecretProvider | None:
    """The provider the worker's code gave under the entry's `provider` name; None for the
    configured one (fetch_secret builds it only on a miss)."""
    if "directory" in spec:
        raise AuthConfigError(
            f"auth entry {entry!r}: 'directory' is not accepted from a playbook; the operator sets "
            f"{PROVIDER_ENV}=file and {SECRETS_DIR_ENV}"
        )
    kind = str(spec.get("provider") or "secret_manager")
    if kind in providers:
        return providers[kind]
    if kind == "secret_manager":
        return None
    raise AuthConfigError(
        f"auth entry {entry!r}: provider {kind!r} is not available; a playbook may use secret_manager "
        f"(the operator can point it at env or file with {PROVIDER_ENV}) or a provider the worker registers"
    )


async def resolve_auth(
    auth: Mapping[str, Mapping[str, Any]],
    *,
    keychain: KeychainClient,
    execution_id: int | None = None,
    providers: Mapping[str, SecretProvider] | None = None,
    http_client: httpx.AsyncClient | None = None,
) -> dict[str, str]:
    """The request headers of a playbook's `auth:` map, every entry's merged; secrets through
    fetch_secret, OAuth2 tokens through the cache too. `http_client` (optional) reaches token
    endpoints.

    Raises AuthConfigError for an incomplete or unknown entry, or two entries setting one header
    (before any secret is read); SecretError, TokenEndpointError, InvalidKey and WrongEventLoop
    as fetch_secret and the token request do; never the cache's errors.
    """
    providers = providers or {}
    # Refuse a bad map before any secret is fetched.
    owner: dict[str, str] = {}
    entries: list[tuple[str, Mapping[str, Any], str, str, SecretProvider | None]] = []
    for name, spec in auth.items():
        kind, header = _kind_and_header(name, spec)
        if header.lower() in owner:
            raise AuthConfigError(
                f"auth entries {owner[header.lower()]!r} and {name!r} both set the {header} header"
            )
        owner[header.lower()] = name
        entries.append((name, spec, kind, header, _provider(name, spec, providers)))
    resolved = await asyncio.gather(
        *(
            _resolve_one(name, spec, kind, header, provider, execution_id, keychain, http_client)
            for name, spec, kind, header, provider in entries
        )
    )
    return dict(resolved)


def _kind(spec: Mapping[str, Any]) -> str:
    kind = str(spec.get("type", "")).lower().replace("-", "_")
    return "api_key" if kind == "apikey" else kind


def _kind_and_header(name: str, spec: Mapping[str, Any]) -> tuple[str, str]:
    """The entry's type, normalised, and the header it sets."""
    if not isinstance(spec, Mapping):
        raise AuthConfigError(f"auth entry {name!r} must be a mapping")
    if spec.get("auth_method") and spec["auth_method"] not in AUTH_METHODS:
        raise AuthConfigError(
            f"auth entry {name!r}: auth_method must be one of {', '.join(AUTH_METHODS)}"
        )
    kind = _kind(spec)
    if kind == "bearer":
        return kind, str(spec.get("header") or "Authorization")
    if kind == "basic":
        return kind, "Authorization"
    if kind == "api_key":
        return kind, str(spec.get("header") or DEFAULT_API_KEY_HEADER)
    raise AuthConfigError(
        f"auth entry {name!r}: unknown type {spec.get('type')!r}; use bearer, basic or api_key"
    )


async def _resolve_one(
    name: str,
    spec: Mapping[str, Any],
    kind: str,
    header: str,
    provider: SecretProvider | None,
    execution_id: int | None,
    keychain: KeychainClient,
    http_client: httpx.AsyncClient | None,
) -> tuple[str, str]:
    async def secret(field: str) -> str:
        path = spec.get(field)
        if not path:
            raise AuthConfigError(f"auth entry {name!r}: type {kind!r} needs {field!r}")
        # Header values cannot carry line breaks; a secret saved with `echo` has one.
        return (
            await fetch_secret(
                str(path), keychain=keychain, execution_id=execution_id, provider=provider
            )
        ).strip()

    if kind == "bearer":
        if spec.get("oauth_credential"):
            token = await _oauth_token(name, spec, secret, keychain, http_client)
        else:
            token = await secret("key")
        return header, f"Bearer {token}"
    if kind == "basic":
        if spec.get("username_key"):
            username = await secret("username_key")
        elif spec.get("username") is not None:
            username = str(spec["username"])
        else:
            raise AuthConfigError(
                f"auth entry {name!r}: type 'basic' needs 'username' or 'username_key'"
            )
        password = await secret("password_key" if spec.get("password_key") else "key")
        encoded = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return header, f"Basic {encoded}"
    value = await secret("key")  # api_key, the only type left
    return header, f"{spec.get('prefix') or ''}{value}"


async def _oauth_token(
    name: str,
    spec: Mapping[str, Any],
    secret: Callable[[str], Awaitable[str]],
    keychain: KeychainClient,
    http_client: httpx.AsyncClient | None,
) -> str:
    """The entry's token. What the token is (and so its cache key) is read first, from the map or
    from the `key` secret; the client secret only on a cache miss, wherever it can wait."""
    client_secret: Callable[[], Awaitable[str]]
    if any(spec.get(field) for field in _EXPLICIT_OAUTH_FIELDS) or not spec.get("key"):
        # The map is checked before any secret is read.
        token_url = spec.get("token_url")
        if not token_url:
            raise AuthConfigError(
                f"auth entry {name!r}: 'oauth_credential' needs 'key' (a secret holding the OAuth2 client "
                "as JSON) or 'token_url', 'client_id' and 'client_secret_key'"
            )
        if not (spec.get("client_id_key") or spec.get("client_id")):
            raise AuthConfigError(
                f"auth entry {name!r}: 'oauth_credential' needs 'client_id' or 'client_id_key'"
            )
        if not spec.get("client_secret_key"):
            raise AuthConfigError(f"auth entry {name!r}: type 'bearer' needs 'client_secret_key'")
        _check_token_url(name, str(token_url))
        client_id = (
            await secret("client_id_key") if spec.get("client_id_key") else spec.get("client_id")
        )
        if not client_id:  # a client_id_key secret that is empty
            raise AuthConfigError(
                f"auth entry {name!r}: 'oauth_credential' needs 'client_id' or 'client_id_key'"
            )
        oauth = OAuthClient(str(token_url), str(client_id), spec.get("scope"), spec.get("audience"))

        async def client_secret() -> str:
            return await secret("client_secret_key")

    else:
        # One secret holds the client's identity and its secret together: it is read either way.
        settings = _oauth_client(name, await secret("key"))
        _check_token_url(name, settings["token_url"])
        oauth = OAuthClient(
            settings["token_url"],
            settings["client_id"],
            spec.get("scope") or settings.get("scope"),
            spec.get("audience"),
        )

        async def client_secret() -> str:
            return settings["client_secret"]

    return await cached_token(
        str(spec["oauth_credential"]),
        oauth,
        client_secret,
        auth_method=str(spec.get("auth_method") or "client_secret_basic"),
        keychain=keychain,
        http_client=http_client,
    )


def _check_token_url(name: str, token_url: str) -> None:
    try:
        check_token_url(token_url)
    except TokenEndpointError as exc:
        raise AuthConfigError(f"auth entry {name!r}: {exc}") from None


def _oauth_client(name: str, text: str) -> dict[str, str]:
    """The OAuth2 client JSON kept in the `key` secret; errors name fields, never values."""
    try:
        document = json.loads(text)
    except ValueError:
        # Raised outside the handler: a JSONDecodeError keeps the whole document (the secret)
        # in .doc, and would travel along as the new error's __context__.
        document = None
    if not isinstance(document, dict):
        raise AuthConfigError(
            f"auth entry {name!r}: the secret in 'key' must be a JSON object with "
            "token_url, client_id and client_secret"
        )
    missing = [
        field
        for field in _OAUTH_CLIENT_FIELDS
        if not isinstance(document.get(field), str) or not document[field]
    ]
    if missing:
        raise AuthConfigError(
            f"auth entry {name!r}: the OAuth2 client JSON in 'key' needs {', '.join(missing)} (non-empty strings)"
        )
    if document.get("scope") is not None and not isinstance(document["scope"], str):
        raise AuthConfigError(
            f"auth entry {name!r}: 'scope' in the OAuth2 client JSON in 'key' must be a string"
        )
    return {
        field: document[field] for field in (*_OAUTH_CLIENT_FIELDS, "scope") if document.get(field)
    }
