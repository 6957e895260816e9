"""fetch_secret: read-through from the Keychain cache to the secret provider.

Hit: the cached value. Miss: one provider call per key per process however many callers
are waiting, stored execution-scoped for the next step. The cache is an optimisation: whatever
goes wrong with it (server down or failing, our token refused, rate limits, an answer that does
not decode), the value still comes from the provider and the worker logs that it ran degraded.
Only the provider's own errors reach the caller. Nothing here ever logs a secret's value.

An alias (`.../versions/latest`) is cached under the alias and under the version the provider
served (`.../versions/7`). Within an execution the alias entry pins that version: it is named by
the version (its credential_name), so Secret Manager's events that move `latest` leave it alone
and every step of the execution sees one version, while an event that disables or destroys the
version drops it. A global alias entry is named by the alias, and so goes when `latest` moves.
"""

from __future__ import annotations

import logging

from workerlib._degraded import cache_failed
from workerlib._readthrough import Store, read_through
from workerlib.client import KeychainClient
from workerlib.errors import KeychainError
from workerlib.keys import cache_key
from workerlib.models import Entry, FillLease
from workerlib.providers import SecretProvider, access_version

log = logging.getLogger(__name__)

CREDENTIAL_TYPE = "secret_manager"
CACHE_TYPE = "secret"


async def fetch_secret(
    name: str,
    *,
    keychain: KeychainClient,
    execution_id: int | None = None,
    ttl_seconds: int = 3600,
    provider: SecretProvider | None = None,
) -> str:
    """The value of the secret `name` (a Secret Manager version path), through the Keychain cache.

    Cached execution-scoped under `{name}:{execution_id}`; with no execution id, globally
    under `{name}:global`; and the same way under the version served, when the provider says
    `name` was an alias for it. On a miss the value comes from `provider`; None is the one the
    operator configured (KEYCHAIN_SECRET_PROVIDER), which `keychain` keeps open for its misses
    and closes with itself.

    Raises SecretNotFound (naming the secret) when the provider has none, SecretError when it
    cannot read it, InvalidKey for a name or execution id that cannot make a key, and
    WrongEventLoop; never the cache's errors (those are logged, degraded).
    """
    key = cache_key(name, execution_id)
    context = {"secret_name": name, "execution_id": execution_id}

    def cached(entry: Entry) -> str | None:
        value = entry.data.get("value")
        if isinstance(value, str):
            log.debug("secret cache hit", extra=context)
            return value
        log.warning("cached secret %s has no string value; refetching", name, extra=context)
        return None

    async def produce() -> tuple[str, Store]:
        served = await access_version(provider or keychain.configured_provider(), name)

        async def put(
            keychain: KeychainClient, entry_key: str, credential_name: str, lease: FillLease | None
        ) -> None:
            # The server derives the scope from execution_id: execution-scoped, else global.
            await keychain.put(
                entry_key,
                {"value": served.value},
                credential_type=CREDENTIAL_TYPE,
                cache_type=CACHE_TYPE,
                execution_id=execution_id,
                credential_name=credential_name,
                ttl_seconds=ttl_seconds,
                fill_lease=lease,
            )

        alias = _version_id(served.name) != _version_id(name)

        async def store(keychain: KeychainClient, lease: FillLease | None) -> None:
            # Events name versions: an execution's entry follows the version it pinned, a global
            # one the name asked for (see the module's docstring).
            await put(
                keychain, key, served.name if alias and execution_id is not None else name, lease
            )
            if not alias:
                return
            # The version itself, for steps that ask for it by number. The alias's lease is
            # already filled above; this is a plain write, and its failure costs a later miss.
            try:
                await put(keychain, cache_key(served.name, execution_id), served.name, None)
            except KeychainError as exc:
                cache_failed(
                    log, f"secret {served.name} (served for {name}) was not cached", exc, context
                )

        return served.value, store

    return await read_through(
        # Callers share a load only if it asks the same provider (read_through adds the client).
        ("secret", id(provider), key),
        keychain,
        key,
        cached=cached,
        produce=produce,
        log=log,
        context=context,
        uncached=f"secret {name} comes straight from the provider",
        unstored=f"secret {name} was not cached",
        unreadable=f"cached secret {name} is unreadable; fetching and rewriting it",
    )


def _version_id(name: str) -> str:
    """`7` of `.../versions/7`. Secret Manager answers a read by project id with the project's
    number (`projects/123/...`): the same version, not an alias, so cached as asked, as before."""
    return name.rpartition("/versions/")[2]
