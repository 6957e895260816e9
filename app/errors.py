"""Domain errors. Services raise these; app.asgi maps each to one HTTP answer."""

from __future__ import annotations


class KeychainError(Exception):
    """Base class; the message is safe to show a caller (it never holds a secret)."""


class ConfigurationError(KeychainError):
    """A setting is missing or malformed; raised at start-up, never per request."""


class InvalidEntry(KeychainError):
    """The caller sent something we will not store (400)."""


class EntryNotFound(KeychainError):
    """No live entry under that key (404); `reason` is "absent" or "expired"."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnreadableEntry(KeychainError):
    """The stored ciphertext does not open with the configured keys (409).

    Tampering, a key removed from the ring too early, or a row copied between keys.
    The caller should write the entry again; the row is left for an operator to inspect.
    """


class DatabaseUnavailable(KeychainError):
    """PostgreSQL cannot be reached (503): an unavailable cache must not look like a miss."""
