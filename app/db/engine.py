"""The process's one engine, the embedded PostgreSQL for local runs, and per-request transactions."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.errors import DatabaseUnavailable
from app.settings import Settings

log = logging.getLogger(__name__)

# SQLSTATE classes that mean "the server is not there for us": 08 connection
# exceptions, 57P admin shutdown / crash shutdown / cannot connect now.
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P")


def async_url(url: str) -> str:
    """Accept postgresql:// (and postgres://) URLs as operators write them; we drive asyncpg."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+asyncpg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}; use postgresql://")
    return parsed.render_as_string(hide_password=False)


def start_embedded_postgres(settings: Settings) -> str:
    """Local mode: a PostgreSQL of our own in the data directory (the pgserver package)."""
    try:
        with warnings.catch_warnings():
            # platformdirs complains about XDG_RUNTIME_DIR, which pgserver does not need.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:  # the container image ships without the [local] extra
        raise RuntimeError(
            "KEYCHAIN_DATABASE_URL is not set and the embedded PostgreSQL (pip extra 'local') "
            "is not installed"
        ) from exc
    pgdata = (settings.data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    # pgserver stops PostgreSQL when the last process using it exits; keep a reference.
    _embedded_servers.append(server)
    log.info("using the embedded PostgreSQL in %s", pgdata)
    return server.get_uri()


_embedded_servers: list[Any] = []


def database_url(settings: Settings) -> str:
    return async_url(settings.database_url or start_embedded_postgres(settings))


def make_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    return create_async_engine(
        url or database_url(settings),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=5,
        pool_recycle=1800,
        # Statement parameters hold ciphertext and keys; keep them out of error messages.
        hide_parameters=True,
        connect_args={
            "timeout": 5,
            "command_timeout": 30,
            "server_settings": {"application_name": "keychain"},
        },
    )


def is_unavailable(exc: BaseException) -> bool:
    """True when an error means "no database right now" rather than "bad statement"."""
    if isinstance(exc, (OSError, asyncio.TimeoutError, PoolTimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if sqlstate and sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES):
            return True
        return isinstance(exc.orig, OSError) or isinstance(exc.orig.__cause__, OSError)
    return False


class Database:
    """Hands out one transaction per unit of work: commit on success, roll back on error."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.begin() as conn:
                yield conn
        except Exception as exc:
            if is_unavailable(exc):
                raise DatabaseUnavailable("the database is unreachable; retry shortly") from exc
            raise

    async def ping(self) -> None:
        async with self.transaction() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        await self.engine.dispose()
