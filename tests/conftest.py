"""A migrated real PostgreSQL, and one rolled-back transaction per test.

The server under test is KEYCHAIN_TEST_DATABASE_URL when set (CI points it at the machine's
PostgreSQL), else an embedded one (pgserver) in a temporary directory. Either way the suite
creates a database of its own, migrates it with Alembic once, and drops it at the end.
"""

from __future__ import annotations

import asyncio
import base64
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar import Litestar
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from app.asgi import create_app
from app.cli import migrate
from app.db.engine import Database, async_url, make_engine
from app.db.tables import in_schema
from app.settings import Settings, load_settings
from tests.local_server import free_port
from tests.pubsub import serving_jwks

TEST_KEY_ID = "test-k1"
TEST_KEY = base64.b64encode(bytes(range(32))).decode()
TEST_SIGNING_KEYS = "test-s1:" + base64.b64encode(bytes(range(32, 64))).decode()


class SavepointDatabase(Database):
    """Every unit of work is a savepoint inside the test's one outer transaction.

    The lock serialises requests on the single connection (asyncpg allows one statement
    at a time); commits become savepoint releases, rollbacks roll back to the savepoint.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        super().__init__(conn.engine)
        self.conn = conn
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self._lock, self.conn.begin_nested():
            yield self.conn

    async def dispose(self) -> None:
        """The test owns the connection."""


def _server_url() -> Iterator[str]:
    given = os.environ.get("KEYCHAIN_TEST_DATABASE_URL")
    if given:
        yield async_url(given)
        return
    import pgserver

    # Not under pytest's basetemp: a concurrent pytest run prunes old basetemps.
    pgdata = tempfile.mkdtemp(prefix="keychain-test-pg-")
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    yield async_url(server.get_uri())
    server.cleanup()


async def _admin(url: str, sql: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    yield from _server_url()


@pytest.fixture(scope="session")
def make_empty_database(postgres_server_url: str) -> Iterator[Callable[[], str]]:
    """Create throwaway databases on the test server; all are dropped at session end."""
    created: list[str] = []

    def make() -> str:
        name = f"keychain_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(postgres_server_url, f'CREATE DATABASE "{name}"'))
        created.append(name)
        return (
            make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
        )

    yield make
    for name in created:
        asyncio.run(_admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def test_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(
        {},
        database_url="postgresql://unused",  # tests hand the app their own Database
        data_dir=str(tmp_path_factory.mktemp("data")),
        encryption_keys=f"{TEST_KEY_ID}:{TEST_KEY}",
        token_signing_keys=TEST_SIGNING_KEYS,
        sweep_interval_seconds=0,
        allow_open_api=True,  # most tests call the API without a token
    )


@pytest.fixture(scope="session")
def database_url(make_empty_database: Callable[[], str], test_settings: Settings) -> str:
    """The suite's database, migrated once with the real Alembic migrations."""
    url = make_empty_database()
    migrate(load_settings({}, database_url=url, db_schema=test_settings.db_schema))
    return url


@pytest.fixture
def own_database(make_empty_database: Callable[[], str], test_settings: Settings) -> str:
    """A migrated database of the test's own, for what needs real commits (NOTIFY, several
    servers, restarts); dropped at the end of the session."""
    url = make_empty_database()
    migrate(load_settings({}, database_url=url, db_schema=test_settings.db_schema))
    return url


@dataclass
class CommittedDatabase:
    """A migrated database of the test's own, where writes really commit, and the real app on
    it: for what the rolled-back test transaction cannot show (other processes and
    connections see the rows, NOTIFY is delivered, the CLI reads what the app wrote)."""

    url: str
    settings: Settings
    database: Database

    def app(self, **overrides: object) -> Litestar:
        """create_app() on this database; keyword arguments override settings."""
        return create_app(msgspec_replace(self.settings, **overrides), database=self.database)

    def client(self, **overrides: object) -> httpx.AsyncClient:
        """An in-process client of `app(**overrides)`, to use as `async with`."""
        return asgi_client(self.app(**overrides))


@pytest_asyncio.fixture(loop_scope="session")
async def committed(own_database: str, test_settings: Settings) -> AsyncIterator[CommittedDatabase]:
    settings = msgspec_replace(test_settings, database_url=own_database, db_pool_size=10)
    database = Database(make_engine(settings))
    try:
        yield CommittedDatabase(own_database, settings, database)
    finally:
        await database.dispose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(database_url: str, test_settings: Settings) -> AsyncIterator[AsyncEngine]:
    """Maps the tables into the suite's schema, as the app's engines do: statements on the
    tables (app.db.tables) need no schema name."""
    engine = create_async_engine(
        database_url, pool_size=5, execution_options=in_schema(test_settings.db_schema)
    )
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One outer transaction per test, rolled back at teardown: tests never see each other."""
    async with engine.connect() as conn:
        outer = await conn.begin()
        try:
            yield conn
        finally:
            await outer.rollback()


@pytest.fixture
def database(connection: AsyncConnection) -> SavepointDatabase:
    return SavepointDatabase(connection)


@pytest.fixture
def make_app(test_settings: Settings, database: SavepointDatabase) -> Callable[..., Litestar]:
    """create_app() on the test transaction; keyword arguments override settings."""

    def make(**overrides: object) -> Litestar:
        settings = msgspec_replace(test_settings, **overrides)
        return create_app(settings, database=database)

    return make


def qualified_name(table: Table, schema: str) -> str:
    """`table` in `schema`, for SQL on a plain asyncpg connection, which no
    schema_translate_map reaches."""
    preparer = postgresql.dialect().identifier_preparer
    return f"{preparer.quote_schema(schema)}.{preparer.quote(table.name)}"


def msgspec_replace(settings: Settings, **overrides: object) -> Settings:
    return msgspec.structs.replace(settings, **overrides)


@pytest.fixture
def app(make_app: Callable[..., Litestar]) -> Litestar:
    return make_app()


@pytest_asyncio.fixture(loop_scope="session")
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the real app, in-process and on the fixtures' event loop.

    Litestar's AsyncTestClient runs the app through a blocking portal on another loop,
    which cannot share the test's asyncpg connection; ASGITransport runs it right here.
    The lifespan is not entered: with an injected Database and no sweeper it has nothing
    to do (tests/server/test_sweeper.py and test_own_engine.py cover it).
    """
    async with asgi_client(app) as client:
        yield client


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


BASE_URL = "http://keychain.test"


def asgi_client(app: Litestar, **transport_options: object) -> httpx.AsyncClient:
    """The real app in-process, on the test's event loop (see the `client` fixture)."""
    transport = httpx.ASGITransport(app=app, **transport_options)
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL)


@pytest_asyncio.fixture(loop_scope="session")
async def down_client(test_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with its own engine pointed at a port where no database listens."""
    settings = msgspec_replace(test_settings, db_pool_size=1)
    database = Database(
        make_engine(settings, f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    )
    async with asgi_client(create_app(settings, database=database)) as client:
        yield client
    await database.dispose()


@pytest.fixture(scope="session")
def signing_key() -> rsa.RSAPrivateKey:
    """The key Secret Manager events are pushed with (tests/pubsub.py signs with it)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def jwks_url(signing_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """KEYCHAIN_PUBSUB_JWKS_URL for the tests: `signing_key`'s public half, served over HTTP."""
    with serving_jwks(signing_key.public_key()) as url:
        yield url
