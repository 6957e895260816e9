"""The read-through that fetch_secret and the OAuth2 token cache share.

A hit is the cached value. A miss (or an entry the server can no longer open) produces the value
and writes it back, once per key per process however many callers are waiting, and once per
key for the whole cluster while the server coordinates the fill (a fill lease: the first reader
produces and writes, the others wait on the server for that write). The cache is an
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
from workerlib.client import KeychainClient
from workerlib.errors import KeychainError, UnreadableEntry
from workerlib.models import Entry, FillLease

T = TypeVar("T")

# Writes the produced value back through the given client, filling the lease if this caller
# holds one; None when there is nothing worth caching.
Store = Callable[[KeychainClient, FillLease | None], Awaitable[object]] | None


async def read_through(
    flight_key: tuple[Hashable, ...],
    keychain: KeychainClient,
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

    `cached` answers None for an entry it cannot use (refetched and overwritten). `uncached` and
    `unstored` are the degraded log's words for a failed read and a failed write-back;
    `unreadable`, when given, is logged for an entry the server can no longer open. Concurrent
    callers with one `flight_key` and client share one load.
    """

    async def load() -> T:
        cacheable = True
        lease = None
        try:
            found = await keychain.get_or_fill(key)
        except UnreadableEntry:
            # The server can no longer open it (key rotated out too early): a miss, rewritten below.
            if unreadable:
                log.warning(unreadable, extra=context)
            found = None
        except KeychainError as exc:
            # Down, refusing our token or the key, rate limiting, answering nonsense: none of it
            # is the caller's problem. Nor is writing back to a cache that just failed worth a request.
            cache_failed(log, uncached, exc, context)
            found, cacheable = None, False
        if isinstance(found, Entry):
            hit = cached(found)
            if hit is not None:
                if found.refresh_lease is not None:
                    # This reader was chosen to refresh it: the current value now, its successor
                    # fetched and written behind it, so that no reader waits for the provider.
                    refresh = FillLease(cache_key=key, lease_id=found.refresh_lease)
                    _start_refresh(keychain, refresh, produce, log, context, unstored)
                return hit
        elif isinstance(found, FillLease):
            lease = found

        return await _produce_and_store(keychain, lease, produce, cacheable, log, context, unstored)

    # Another client may carry another token, allowed other entries: loads are shared per client.
    return await single_flight((id(keychain), *flight_key), load, keychain._start_task)


async def _release(
    keychain: KeychainClient, lease: FillLease, log: logging.Logger, context: Mapping[str, Any]
) -> None:
    """Let a waiting reader take the fill over now; if even that fails, the lease runs out."""
    try:
        await keychain.release_fill_lease(lease)
    except KeychainError as exc:
        cache_failed(log, "fill lease not released; it runs out on its own", exc, context)


def _start_refresh(
    keychain: KeychainClient,
    lease: FillLease,
    produce: Callable[[], Awaitable[tuple[Any, Store]]],
    log: logging.Logger,
    context: Mapping[str, Any],
    unstored: str,
) -> None:
    async def refresh() -> None:
        try:
            await _produce_and_store(keychain, lease, produce, True, log, context, unstored)
        except Exception as exc:
            log.warning(
                "refresh ahead failed (%s); the current value serves until it expires",
                type(exc).__name__,
                extra=context,
            )

    keychain._start_task(refresh())  # the client keeps it, and lets it finish as it closes


async def _produce_and_store(
    keychain: KeychainClient,
    lease: FillLease | None,
    produce: Callable[[], Awaitable[tuple[T, Store]]],
    cacheable: bool,
    log: logging.Logger,
    context: Mapping[str, Any],
    unstored: str,
) -> T:
    """produce()'s value, written back (filling `lease`, if this caller holds one) when the cache
    is worth writing to; a lease that is not filled is released. Only produce()'s errors raise."""
    try:
        value, store = await produce()
    except BaseException:
        if lease is not None:
            await _release(keychain, lease, log, context)
        raise
    if cacheable and store is not None:
        try:
            await store(keychain, lease)
        except KeychainError as exc:
            cache_failed(log, unstored, exc, context)
    elif lease is not None:
        await _release(keychain, lease, log, context)
    return value
