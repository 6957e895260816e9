"""CredentialCache: the original worker interface, now over HTTP instead of SQL.

Same names, arguments, key formats and return shapes as before, so existing callers change
only their import. Like the original, these never raise for a cache that is unavailable:
get_cached answers None and the others False, logging that the cache was degraded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from workerlib._degraded import cache_failed
from workerlib.client import KeychainClient, default_client
from workerlib.errors import KeychainError
from workerlib.keys import cache_key
from workerlib.models import HIDDEN

__all__ = ["CredentialCache", "cache_key"]

log = logging.getLogger(__name__)


def _failed(
    action: str, credential_name: str, execution_id: int | None, exc: KeychainError
) -> None:
    context = {"credential_name": credential_name, "execution_id": execution_id}
    cache_failed(log, f"credential cache {action} failed for {credential_name}", exc, context)


class CachedCredential(dict[str, Any]):
    """What get_cached() answers: the original plain dict, except that its repr (a log line,
    a traceback, a failed assert) shows no secret."""

    def __repr__(self) -> str:
        return repr({**self, "data": HIDDEN}) if "data" in self else super().__repr__()


class CredentialCache:
    """Async static methods over the process's KeychainClient (see `use_client`)."""

    _client: KeychainClient | None = None

    @staticmethod
    def use_client(client: KeychainClient | None) -> None:
        """Inject the client (tests, or a worker that builds its own); None goes back to the
        process default, built from the environment."""
        CredentialCache._client = client

    @staticmethod
    def _keychain() -> KeychainClient:
        return CredentialCache._client or default_client()

    @staticmethod
    async def get_cached(
        credential_name: str,
        execution_id: int | None = None,
        token_type: str | None = None,
    ) -> dict[str, Any] | None:
        key = cache_key(credential_name, execution_id, token_type)
        try:
            entry = await CredentialCache._keychain().get(key)
        except KeychainError as exc:
            _failed("read", credential_name, execution_id, exc)
            return None
        if entry is None:
            return None
        return CachedCredential(
            credential_name=entry.credential_name,
            data=entry.data,
            credential_type=entry.credential_type,
            cache_type=entry.cache_type,
            expires_at=entry.expires_at,
        )

    @staticmethod
    async def set_cached(
        credential_name: str,
        credential_type: str,
        data: Mapping[str, Any],
        cache_type: str = "secret",
        execution_id: int | None = None,
        parent_execution_id: int | None = None,
        token_type: str | None = None,
        ttl_seconds: int | str | None = None,
        expires_at: datetime | None = None,
    ) -> bool:
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping (a JSON object), not {type(data).__name__}")
        key = cache_key(credential_name, execution_id, token_type)
        try:
            await CredentialCache._keychain().put(
                key,
                data,
                credential_type=credential_type,
                cache_type=cache_type,
                execution_id=execution_id,
                parent_execution_id=parent_execution_id,
                credential_name=credential_name,
                ttl_seconds=ttl_seconds,
                expires_at=expires_at,
            )
        except KeychainError as exc:
            _failed("write", credential_name, execution_id, exc)
            return False
        return True

    @staticmethod
    async def delete_cached(
        credential_name: str,
        execution_id: int | None = None,
        token_type: str | None = None,
    ) -> bool:
        key = cache_key(credential_name, execution_id, token_type)
        try:
            return await CredentialCache._keychain().delete(key)
        except KeychainError as exc:
            _failed("delete", credential_name, execution_id, exc)
            return False
