"""Warming an execution: fetch what its steps will need, all at once, as it starts.

Each secret goes through fetch_secret and each `auth:` entry through resolve_auth, so every
missing one costs one provider call across the cluster (the server's fill leases), and the
steps that follow read it from the cache. A secret or entry that cannot be had is not the
execution's failure yet: it is logged and named in the answer, and the step that needs it
meets the same error in its own time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

import httpx

from workerlib.auth import resolve_auth
from workerlib.client import KeychainClient
from workerlib.errors import KeychainError
from workerlib.providers import SecretProvider
from workerlib.secrets import fetch_secret

log = logging.getLogger(__name__)


async def warm_execution(
    *,
    keychain: KeychainClient,
    secrets: Iterable[str] = (),
    auth: Mapping[str, Mapping[str, Any]] | None = None,
    execution_id: int | None = None,
    provider: SecretProvider | None = None,
    providers: Mapping[str, SecretProvider] | None = None,
    http_client: httpx.AsyncClient | None = None,
) -> dict[str, str]:
    """Fetch `secrets` (Secret Manager version paths) and every entry of an `auth:` map into the
    cache, concurrently. Returns what could not be warmed: secret or auth entry name -> the
    error's message (messages never hold a secret). Every KeychainError (a provider's, a bad auth
    entry's) lands there instead of being raised; WrongEventLoop is raised."""
    work: dict[str, Awaitable[object]] = {
        name: fetch_secret(name, keychain=keychain, execution_id=execution_id, provider=provider)
        for name in dict.fromkeys(secrets)
    }
    for name, spec in (auth or {}).items():
        # One entry at a time, so that one bad entry does not keep the others cold.
        work[f"auth:{name}"] = resolve_auth(
            {name: spec},
            keychain=keychain,
            execution_id=execution_id,
            providers=providers,
            http_client=http_client,
        )
    outcomes = await asyncio.gather(*work.values(), return_exceptions=True)
    failed: dict[str, str] = {}
    for name, outcome in zip(work, outcomes, strict=True):
        if isinstance(outcome, KeychainError):
            log.warning("not warmed: %s (%s)", name, outcome, extra={"execution_id": execution_id})
            failed[name] = str(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
    return failed
