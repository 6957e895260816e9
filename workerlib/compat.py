"""CredentialCache: the original worker interface, now over HTTP instead of SQL.

Same names, arguments, key formats and return shapes as before, so existing callers change
only their import. Like the original, these never raise for a cache that is unavailable:
get_cached answers None and the others False, logging that the cache was degraded.

Each call builds a KeychainClient of its own from the environment (KEYCHAIN_SERVER_URL,
KEYCHAIN_API_TOKEN) and closes it before it returns. The original interface has no place to
pass a client, and a client kept between calls would belong to the first call's event loop: a
worker running each task in its own asyncio.run() would meet it closed. The cost is a new
connection per call (no keep-alive across calls); a worker that wants a pool uses
`async with KeychainClient() as keychain:` itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from workerlib._degraded import cache_failed
from workerlib.client import KeychainClient
from workerlib.errors import KeychainError
from workerlib.keys import cache_key
from workerlib.models import HIDDEN, Entry

__all__ = ["CredentialCache", "cache_key"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def _call(
    action: str,
    credential_name: str,
    execution_id: int | None,
    call: Callable[[KeychainClient], Awaitable[T]],
    failed: T,
) -> T:
    """`call` on a client of its own; `failed` when the cache fails (settings included), logged."""
    try:
        async with KeychainClient() as keychain:
            return await call(keychain)
    except KeychainError as exc:
        context = {"credential_name": credential_name, "execution_id": execution_id}
        cache_failed(log, f"credential cache {action} failed for {credential_name}", exc, context)
        return failed


class CachedCredential(dict[str, Any]):
    """What get_cached() answers: the original plain dict, except that its repr (a log line,
    a traceback, a failed assert) shows no secret."""

    def __repr__(self) -> str:
        return repr({**self, "data": HIDDEN}) if "data" in self else super().__repr__()


class CredentialCache:
    """The original worker interface: async static methods, each on a client of its own."""

    @staticmethod
    async def get_cached(
        credential_name: str,
        execution_id: int | None = None,
        token_type: str | None = None,
    ) -> dict[str, Any] | None:
        """The entry as a dict (credential_name, data, credential_type, cache_type, expires_at),
        or None on a miss or when the cache fails. Raises InvalidKey for a name or token type
        that would spell another entry's key."""
        key = cache_key(credential_name, execution_id, token_type)

        async def get(keychain: KeychainClient) -> Entry | None:
            return await keychain.get(key)

        entry = await _call("read", credential_name, execution_id, get, None)
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
        """True when stored, False when the cache failed or refused it. Raises TypeError for
        `data` that is not a mapping, InvalidKey as get_cached()."""
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping (a JSON object), not {type(data).__name__}")
        key = cache_key(credential_name, execution_id, token_type)

        async def put(keychain: KeychainClient) -> bool:
            await keychain.put(
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
            return True

        return await _call("write", credential_name, execution_id, put, False)

    @staticmethod
    async def delete_cached(
        credential_name: str,
        execution_id: int | None = None,
        token_type: str | None = None,
    ) -> bool:
        """True when an entry was deleted, False when there was none or the cache failed.
        Raises InvalidKey as get_cached()."""
        key = cache_key(credential_name, execution_id, token_type)

        async def delete(keychain: KeychainClient) -> bool:
            return await keychain.delete(key)

        return await _call("delete", credential_name, execution_id, delete, False)
