"""Domain errors. Services raise these; app.asgi maps each to one HTTP answer."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType


class KeychainError(Exception):
    """Base class; the message is safe to show a caller (it never holds a secret)."""

    # Headers the HTTP answer carries besides its status's own (a fill lease, say).
    headers: Mapping[str, str] = MappingProxyType({})


class ConfigurationError(KeychainError):
    """A setting is missing or malformed; raised at start-up, never per request."""


class InvalidEntry(KeychainError):
    """The caller sent something we will not store (400)."""


class EntryNotFound(KeychainError):
    """No live entry under that key (404); `reason` is "absent" or "expired". `headers` say
    what became of a coordinated fill (see FillLeaseGranted)."""

    def __init__(self, message: str, *, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        if headers:
            self.headers = headers


FILL_LEASE_HEADER = "Keychain-Fill-Lease"
FILL_HEADER = "Keychain-Fill"


class FillLeaseGranted(EntryNotFound):
    """A miss whose fill is now the caller's (404 with the lease): fetch the value, write it
    with the lease id, or release the lease if the fetch fails."""

    def __init__(self, message: str, *, reason: str, lease_id: str, lease_seconds: float) -> None:
        super().__init__(
            message,
            reason=reason,
            headers={
                FILL_LEASE_HEADER: lease_id,
                f"{FILL_LEASE_HEADER}-Seconds": f"{lease_seconds:g}",
            },
        )
        self.lease_id = lease_id


class AccessDenied(KeychainError):
    """The caller's token may not touch this entry (403); the message says which rule refused."""


class TokenRevoked(KeychainError):
    """An execution token whose execution has ended (401): it never works again."""


class Unauthenticated(KeychainError):
    """The caller proved no identity this call accepts (401); the message says what was wrong,
    never the credential itself."""


class ExecutionEnded(KeychainError):
    """No token is minted for an execution that has already been cleaned up (409)."""


class FeatureDisabled(KeychainError):
    """The call needs something this server was not configured with (501)."""


class UnreadableEntry(KeychainError):
    """The stored ciphertext does not open with the configured keys (409).

    Tampering, a key removed from the ring too early, or a row copied between keys.
    The caller should write the entry again; the row is left for an operator to inspect.
    """


# Sent with every 503. Short: a restarted database is usually back within a second, and
# workerlib retries a 503 only when Retry-After is within its patience (2 s).
RETRY_AFTER_SECONDS = "1"


class DatabaseUnavailable(KeychainError):
    """PostgreSQL cannot serve us (503): an unavailable cache must not look like a miss."""


class DatabaseNotMigrated(DatabaseUnavailable):
    """The database answers but has no keychain table yet (503 too: nothing can be served)."""


class VerificationUnavailable(KeychainError):
    """What proves a caller's identity (a JWKS URL) cannot be reached now (503): the caller
    should retry, as Pub/Sub does on its own."""


class InvalidPush(InvalidEntry):
    """A request to the events endpoint that is not the body Pub/Sub pushes (400)."""
