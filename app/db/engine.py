"""The process's one engine, the embedded PostgreSQL for local runs, and per-request transactions."""

from __future__ import annotations

import asyncio
import logging
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.db.tables import in_schema
from app.errors import ConfigurationError, DatabaseNotMigrated, DatabaseUnavailable
from app.settings import Settings

log = logging.getLogger(__name__)

# SQLSTATEs that mean "the database cannot serve us now", not "bad statement": 08 connection
# exceptions, 28 authentication, 3D000 no such database, 53 out of resources (too many
# connections), 57P shut down / cannot connect now.
_UNREACHABLE_SQLSTATE_PREFIXES = ("08", "28", "3D000", "53", "57P")
# Undefined table or schema: the database answers but was never migrated.
_NOT_MIGRATED_SQLSTATES = ("42P01", "3F000")
UNREACHABLE = "the database is unreachable; retry shortly"
NOT_MIGRATED = "the keychain table does not exist; run `keychain migrate`"
POOL_EXHAUSTED = (
    "every database connection of this server is busy (KEYCHAIN_DB_POOL_SIZE, "
    "KEYCHAIN_DB_POOL_TIMEOUT_SECONDS); retry shortly"
)
# asyncpg spells libpq's sslmode as ssl (same values: disable ... verify-full).
_LIBPQ_TO_ASYNCPG = {"sslmode": "ssl"}


def async_url(url: str) -> str:
    """Accept postgresql:// (and postgres://) URLs as operators write them; we drive asyncpg."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+asyncpg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}; use postgresql://"
        )
    query = {_LIBPQ_TO_ASYNCPG.get(name, name): value for name, value in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=False)


def embedded_pgdata(settings: Settings) -> Path:
    return (settings.data_dir / "postgres").resolve()


def embedded_database_exists(settings: Settings) -> bool:
    # initdb writes PG_VERSION; a directory without it is not a database (yet).
    return (embedded_pgdata(settings) / "PG_VERSION").is_file()


def start_embedded_postgres(settings: Settings) -> str:
    """Local mode: a PostgreSQL of our own in the data directory (the pgserver package)."""
    try:
        with warnings.catch_warnings():
            # platformdirs complains about XDG_RUNTIME_DIR, which pgserver does not need.
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server
    except ImportError as exc:  # the container image ships without the [local] extra
        raise RuntimeError(
            "KEYCHAIN_DATABASE_URL is not set and the embedded PostgreSQL (pip extra 'local') "
            "is not installed"
        ) from exc
    pgdata = embedded_pgdata(settings)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    # pgserver stops PostgreSQL when the last process using it exits; keep a reference.
    _embedded_servers.append(server)
    log.info("using the embedded PostgreSQL in %s", pgdata)
    return server.get_uri()


_embedded_servers: list[Any] = []


def database_url(settings: Settings) -> str:
    return async_url(settings.database_url or start_embedded_postgres(settings))


def direct_database_url(settings: Settings) -> str:
    """PostgreSQL itself, for what a transaction-pooling PgBouncer cannot carry: LISTEN, and a
    migration's session-long advisory lock."""
    check_pooler_settings(settings)
    if settings.direct_database_url:
        return async_url(settings.direct_database_url)
    return database_url(settings)


def check_pooler_settings(settings: Settings) -> None:
    if settings.database_transaction_pooler and not settings.direct_database_url:
        raise ConfigurationError(
            "KEYCHAIN_DATABASE_TRANSACTION_POOLER=true needs KEYCHAIN_DIRECT_DATABASE_URL: LISTEN and "
            "migrations need a session of their own, which a transaction pooler does not keep"
        )


def _pooler_connect_args() -> dict[str, Any]:
    # A transaction pooler hands each transaction whichever server connection is free, so a
    # statement prepared in one transaction may be missing, or another's, in the next: asyncpg
    # and SQLAlchemy cache none, and every statement SQLAlchemy prepares gets a name of its own.
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": lambda: f"__keychain_{uuid.uuid4().hex}__",
    }


def make_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    return create_async_engine(
        url or database_url(settings),
        # A hard cap: operators size max_connections as replicas x pool size.
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_recycle=1800,
        # A connection pooled before PostgreSQL restarted or failed over is dead, and nothing
        # may have used the pool since to find out: check each one as it is handed out (one
        # round trip per request that needs the database; hits from memory need none).
        pool_pre_ping=True,
        # Statement parameters hold ciphertext and keys; keep them out of error messages.
        hide_parameters=True,
        execution_options=in_schema(settings.db_schema),
        connect_args={
            "timeout": 5,
            "command_timeout": 30,
            "server_settings": {"application_name": "keychain"},
            **(_pooler_connect_args() if settings.database_transaction_pooler else {}),
        },
    )


def unavailable_reason(exc: BaseException) -> str | None:
    """Why the database cannot serve us, or None when the error is about the statement."""
    if isinstance(exc, PoolTimeoutError):
        return POOL_EXHAUSTED
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return UNREACHABLE
    if not isinstance(exc, DBAPIError):
        return None
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    if sqlstate in _NOT_MIGRATED_SQLSTATES:
        return NOT_MIGRATED
    if (
        exc.connection_invalidated
        or sqlstate.startswith(_UNREACHABLE_SQLSTATE_PREFIXES)
        or isinstance(exc.orig, OSError)
        or isinstance(getattr(exc.orig, "__cause__", None), OSError)
    ):
        return UNREACHABLE
    return None


def outage(exc: Exception) -> DatabaseUnavailable | None:
    """The outage (or missing migration) a database error means, or None for any other error.

    None rather than the error itself: `raise translated(exc) from exc` made such an error its
    own __cause__, and anything following causes (the CLI's error printer) never returned."""
    reason = unavailable_reason(exc)
    if reason is None:
        return None
    return DatabaseNotMigrated(reason) if reason == NOT_MIGRATED else DatabaseUnavailable(reason)


def raise_if_outage(exc: Exception) -> None:
    """Raise, from `exc`, the outage it means; return if it means none (the caller re-raises it)."""
    meaning = outage(exc)
    if meaning is not None:
        raise meaning from exc


class Database:
    """Hands out one transaction per unit of work: commit on success, roll back on error."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        # Spelled out rather than `async with engine.begin()`: an error from the body must
        # come out unchanged even when the rollback after it fails too (a dead connection);
        # Litestar turns a dependency that swaps the exception thrown into it into a 500.
        context = self.engine.begin()
        try:
            conn = await context.__aenter__()
        except Exception as exc:
            raise_if_outage(exc)
            raise
        try:
            yield conn
        except BaseException as body_error:
            try:
                await context.__aexit__(type(body_error), body_error, body_error.__traceback__)
            except Exception:
                log.warning("rollback failed after %s", type(body_error).__name__)
            raise
        try:
            await context.__aexit__(None, None, None)
        except Exception as exc:
            raise_if_outage(exc)
            raise

    async def dispose(self) -> None:
        await self.engine.dispose()


class LazyTransaction:
    """A request's unit of work, begun on its first statement: a request answered from
    memory never takes a connection from the pool. Repositories call execute() on it as
    they would on a connection."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._context: Any = None
        self._conn: AsyncConnection | None = None
        # A statement that failed dooms the transaction, even if the request recovered from
        # it (say, answered from memory because the database went away).
        self._failed: BaseException | None = None

    @property
    def engine(self) -> AsyncEngine:
        return self._database.engine

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        if self._conn is None:
            context = self._database.transaction()
            self._conn = await context.__aenter__()
            self._context = context  # only once entered: a failed begin has nothing to end
        try:
            return await self._conn.execute(statement, parameters)
        except BaseException as exc:
            self._failed = exc
            raise

    async def finish(self, error: BaseException | None) -> None:
        """Commit, or roll back on `error` or after a failed statement; nothing to do when no
        statement ran."""
        context, self._context, self._conn = self._context, None, None
        error = error or self._failed
        if context is None:
            return
        if error is None:
            await context.__aexit__(None, None, None)
        else:
            await context.__aexit__(type(error), error, error.__traceback__)

    async def commit(self) -> None:
        """As a connection's commit(): this unit of work ends here (rolled back if a statement
        failed), and the next statement begins another."""
        await self.finish(None)
