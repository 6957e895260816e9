"""fetch_secret: read-through from the Keychain cache to the secret provider.

Hit: the cached value. Miss: one provider call per key per process however many callers
are waiting, stored execution-scoped for the next step. The cache is an optimisation: whatever
goes wrong with it (server down or failing, our token refused, rate limits, an answer that does
not decode), the value still comes from the provider and the worker logs that it ran degraded.
Only the provider's own errors reach the caller. Nothing here ever logs a secret's value.
"""

from __future__ import annotations

import logging

from workerlib._degraded import cache_failed
from workerlib._flight import single_flight
from workerlib.client import KeychainClient, default_client
from workerlib.errors import BadRequest, InvalidKey, KeychainError, UnreadableEntry
from workerlib.keys import cache_key
from workerlib.providers import SecretProvider, default_provider

log = logging.getLogger(__name__)

CREDENTIAL_TYPE = "secret_manager"
CACHE_TYPE = "secret"


async def fetch_secret(
    name: str,
    *,
    execution_id: int | None = None,
    ttl_seconds: int = 3600,
    client: KeychainClient | None = None,
    provider: SecretProvider | None = None,
) -> str:
    """The secret `name` (a Secret Manager version path), through the Keychain cache.

    Cached execution-scoped under `{name}:{execution_id}`; with no execution id, globally
    under `{name}:global`. Raises SecretNotFound (naming the secret) when the provider has none.
    """
    client = client or default_client()
    provider = provider or default_provider()
    key = cache_key(name, execution_id)
    return await single_flight(
        ("secret", client.base_url, key),
        lambda: _read_through(name, key, execution_id, ttl_seconds, client, provider),
    )


async def _read_through(
    name: str,
    key: str,
    execution_id: int | None,
    ttl_seconds: int,
    client: KeychainClient,
    provider: SecretProvider,
) -> str:
    context = {"secret_name": name, "execution_id": execution_id}
    cacheable = True
    try:
        entry = await client.get(key)
    except UnreadableEntry:
        # The server can no longer open it (key rotated out too early): a miss, rewritten below.
        log.warning("cached secret %s is unreadable; fetching and rewriting it", name, extra=context)
        entry = None
    except (BadRequest, InvalidKey) as exc:
        # The key itself is refused (too long, say): works, but never cached.
        cache_failed(log, f"secret {name} cannot be cached", exc, context)
        entry, cacheable = None, False
    except KeychainError as exc:
        # Down, refusing our token, rate limiting, answering nonsense: none of it is the step's
        # problem. Nor is writing back to a cache that just failed worth another request.
        cache_failed(log, f"secret {name} comes straight from the provider", exc, context)
        return await provider.access(name)

    if entry is not None:
        value = entry.data.get("value")
        if isinstance(value, str):
            log.debug("secret cache hit", extra=context)
            return value
        log.warning("cached secret %s has no string value; refetching", name, extra=context)

    value = await provider.access(name)
    if cacheable:
        await _store(client, key, name, value, execution_id, ttl_seconds)
    return value


async def _store(
    client: KeychainClient,
    key: str,
    name: str,
    value: str,
    execution_id: int | None,
    ttl_seconds: int,
) -> None:
    """Write the value back; never raises for the cache, the caller has its value already."""
    try:
        await client.put(
            key,
            {"value": value},
            credential_type=CREDENTIAL_TYPE,
            cache_type=CACHE_TYPE,
            scope_type="execution" if execution_id is not None else "global",
            execution_id=execution_id,
            credential_name=name,
            ttl_seconds=ttl_seconds,
        )
    except KeychainError as exc:
        cache_failed(log, f"secret {name} was not cached", exc, {"secret_name": name, "execution_id": execution_id})
