"""What one server process shares between requests, and the per-request dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.datastructures import State
from sqlalchemy.ext.asyncio import AsyncConnection

from app.auth import Principal, TokenTable
from app.crypto import KeyRing
from app.db.engine import Database, LazyTransaction
from app.events.oidc import PushVerifier
from app.keychain.repository import KeychainRepository
from app.keychain.service import EntryLimits, KeychainService, ProcessState
from app.metrics import KeychainMetrics
from app.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    keyring: KeyRing
    tokens: TokenTable
    limits: EntryLimits
    # The metrics (per app, not the process-global registry: each create_app() and each test
    # counts alone), the read audit, the memory tier and what else requests share.
    process: ProcessState
    # Checks Pub/Sub pushes' OIDC tokens; None while Secret Manager events are off.
    push_verifier: PushVerifier | None
    # Set by the lifespan (or injected by tests) before the first request.
    database: Database | None = None

    @property
    def db(self) -> Database:
        """The database, once the lifespan (or a test) has set it."""
        if self.database is None:
            raise RuntimeError("the database is used before the app's lifespan connected it")
        return self.database

    @property
    def metrics(self) -> KeychainMetrics:
        return self.process.metrics

    def keychain_service(self, conn: AsyncConnection | LazyTransaction) -> KeychainService:
        return KeychainService(KeychainRepository(conn), self.keyring, self.limits, self.process)


def runtime_of(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


async def provide_keychain_service(state: State) -> AsyncIterator[KeychainService]:
    """The service over the request's own transaction: committed before the response, rolled
    back on error, begun only if the request reads or writes the database. One dependency, not
    a transaction and a service on it: each dependency resolved costs a hit about 6 us."""
    runtime = runtime_of(state)
    transaction = LazyTransaction(runtime.db)
    try:
        yield runtime.keychain_service(transaction)
    except BaseException as error:
        await transaction.finish(error)
        raise
    await transaction.finish(None)


def caller_of(request: Request[Any, Any, Any]) -> Principal:
    """The principal RequireRole authenticated."""
    principal: Principal = request.scope["state"]["principal"]
    return principal
