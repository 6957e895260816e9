"""The errors workerlib raises. Messages are safe to log: they never hold a secret or a payload.

    KeychainError                   everything workerlib raises on purpose
    ├── InvalidKey                  a cache key that could not reach the server unchanged (ValueError)
    ├── KeychainConfigError         unusable client settings (ValueError)
    ├── KeychainUnavailable         no answer, or a 5xx, after the retries
    ├── KeychainAPIError            the server refused the request (4xx, 501)
    │   ├── BadRequest              400, 413, 422
    │   ├── TokenRefused            401 or 403: the token, or what it may do
    │   │   ├── Unauthorized        401: missing, unknown, expired, or its execution ended
    │   │   └── Forbidden           403: its role or grants do not reach this
    │   ├── NotFound                404
    │   ├── UnreadableEntry         409 reading an entry
    │   ├── ExecutionEnded          409 minting a token for an execution already cleaned up
    │   ├── RateLimited             429
    │   └── NotEnabled              501: the server is not configured for this call
    ├── SecretError                 a provider could not read a secret
    │   └── SecretNotFound
    ├── AuthConfigError             a playbook's auth: entry is incomplete or unknown
    └── TokenEndpointError          an OAuth2 token endpoint refused or answered nonsense

fetch_secret, resolve_auth and CredentialCache never raise the cache's errors (KeychainUnavailable,
KeychainAPIError): they degrade to the provider and log it. They raise the provider's and the
playbook's (SecretError, AuthConfigError, TokenEndpointError).

    WrongEventLoop (RuntimeError)   a client or provider used on another event loop than its own

WrongEventLoop is a mistake in the calling code, not trouble with the cache, so it is not a
KeychainError: nothing degrades on it, it always reaches the caller.
"""

from __future__ import annotations


class KeychainError(Exception):
    """Base class of everything workerlib raises on purpose."""


class InvalidKey(KeychainError, ValueError):
    """A cache key workerlib will not send: it could not reach the server unchanged, or another
    call could build the same key for a different entry."""


class KeychainConfigError(KeychainError, ValueError):
    """KeychainClient's settings are unusable (server URL, API token, CA file). Raised when the
    client is built; the message names the setting, never a token's value."""


class KeychainUnavailable(KeychainError):
    """The Keychain server could not be reached, or answered 5xx, after the retries.

    Callers that can work without the cache (fetch_secret, CredentialCache) degrade on this.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class KeychainAPIError(KeychainError):
    """The server refused the request (4xx, or 501 for a call it is not configured for);
    `detail` is the server's own explanation."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"keychain answered {status_code} on {method} {path}: {detail}")
        self.status_code = status_code
        self.detail = detail
        # The answer's headers (a 404 may carry a fill lease).
        self.headers = headers or {}


class BadRequest(KeychainAPIError):
    """400/413/422: the key or the body is not acceptable; fix the call, retrying will not help."""


class TokenRefused(KeychainAPIError):
    """401 or 403: the server will not take this token for this call; retrying will not help."""


class Unauthorized(TokenRefused):
    """401: no token, or a token the server does not know (KEYCHAIN_API_TOKEN), an expired one,
    or an execution token whose execution has ended."""


class Forbidden(TokenRefused):
    """403: the token's role or grants do not reach this call or entry."""


class NotFound(KeychainAPIError):
    """404 where a miss is not a normal answer (get() returns None, delete() returns False)."""


class UnreadableEntry(KeychainAPIError):
    """409: the stored entry no longer opens with the server's keys; write it again."""


class ExecutionEnded(KeychainAPIError):
    """409 from mint_execution_token(): the execution (or its parent) has been cleaned up, and
    no token is minted for it."""


class RateLimited(KeychainAPIError):
    """429 that outlasted the retries."""


class NotEnabled(KeychainAPIError):
    """501: the server was not configured for this call (execution tokens need
    KEYCHAIN_TOKEN_SIGNING_KEYS on the server). A setting to fix, not an outage: not retried."""


class SecretError(KeychainError):
    """A secret could not be read from its provider (Secret Manager, environment, file)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.secret_name = name


class SecretNotFound(SecretError):
    """The provider has no such secret (or version)."""


class AuthConfigError(KeychainError):
    """A playbook `auth:` entry is incomplete or of an unknown type."""


class TokenEndpointError(KeychainError):
    """An OAuth2 token endpoint refused the request or answered something unusable."""


class WrongEventLoop(RuntimeError):
    """A KeychainClient or GoogleSecretManagerProvider used on an event loop other than the one
    it was first used on: its connections belong to that loop. Make one per loop, inside
    `async with`, so that it is closed before its loop ends."""
