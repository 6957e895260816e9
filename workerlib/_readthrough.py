"""The read-through that fetch_secret and the OAuth2 token cache share.

A hit is the cached value. A miss (or an entry the server can no longer open) produces the value
and writes it back, once per key per process however many callers are waiting. The cache is an
optimisation: when it fails to answer, the value is produced without it, nothing is written
back to it, and the failure is logged as degraded; a failed write-back is logged the same way.
Only the producer's own errors reach the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, TypeVar

from workerlib._degraded import cache_failed
from workerlib._flight import single_flight
from workerlib.client import KeychainClient, default_client
from workerlib.errors import KeychainConfigError, KeychainError, UnreadableEntry
from workerlib.models import Entry

T = TypeVar("T")

# Writes the produced value back through the given client; None when there is nothing worth caching.
Store = Callable[[KeychainClient], Awaitable[object]] | None


async def read_through(
    flight_key: tuple[Hashable, ...],
    client: KeychainClient | None,
    key: str,
    *,
    cached: Callable[[Entry], T | None],
    produce: Callable[[], Awaitable[tuple[T, Store]]],
    log: logging.Logger,
    context: Mapping[str, Any],
    uncached: str,
    unstored: str,
    unreadable: str | None = None,
) -> T:
    """The value under `key`: `cached(entry)` on a hit, else `produce()`'s value, then stored.

    `client` None is the process default; a default the environment cannot build is the
    cache failing too. `cached` answers None for an entry it cannot use (refetched and
    overwritten). `uncached` and `unstored` are the degraded log's words for a failed read and
    a failed write-back; `unreadable`, when given, is logged for an entry the server can no
    longer open. Concurrent callers with one `flight_key` and client share one load.
    """
    keychain = client
    if keychain is None:
        try:
            keychain = default_client()
        except KeychainConfigError as exc:
            cache_failed(log, uncached, exc, context)

    async def load() -> T:
        if keychain is None:
            value, _ = await produce()
            return value
        cacheable = True
        try:
            entry = await keychain.get(key)
        except UnreadableEntry:
            # The server can no longer open it (key rotated out too early): a miss, rewritten below.
            if unreadable:
                log.warning(unreadable, extra=context)
            entry = None
        except KeychainError as exc:
            # Down, refusing our token or the key, rate limiting, answering nonsense: none of it
            # is the caller's problem. Nor is writing back to a cache that just failed worth a request.
            cache_failed(log, uncached, exc, context)
            entry, cacheable = None, False
        if entry is not None:
            value = cached(entry)
            if value is not None:
                return value

        value, store = await produce()
        if cacheable and store is not None:
            try:
                await store(keychain)
            except KeychainError as exc:
                cache_failed(log, unstored, exc, context)
        return value

    # Another client may carry another token, allowed other entries: loads are shared per client.
    return await single_flight((id(keychain), *flight_key), load)
