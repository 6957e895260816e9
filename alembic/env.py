"""Run migrations online, on the asyncpg engine, one transaction per migration.

The URL and schema come from Keychain's settings unless the caller (tests, `keychain migrate`)
put them in config.attributes. An advisory lock serialises concurrent migrators (several pods,
a Helm hook retried), and lock/statement timeouts keep a migration from queueing behind a
long transaction while blocking every reader of the table.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from alembic import context
from app.db.engine import direct_database_url
from app.db.tables import metadata
from app.settings import load_settings

VERSION_TABLE = "keychain_alembic_version"
MIGRATION_LOCK_ID = 0x6B6579636861696E  # "keychain"

config = context.config


def _schema_and_url() -> tuple[str, str]:
    attributes = config.attributes
    if "keychain_schema" not in attributes or "url" not in attributes:
        settings = load_settings()
        attributes.setdefault("keychain_schema", settings.db_schema)
        attributes.setdefault("url", direct_database_url(settings))
    return attributes["keychain_schema"], attributes["url"]


def _ours(name: str | None, type_: str, parent_names: object) -> bool:
    """Autogenerate compares Keychain's own tables only: the schema (noetl by default) may be
    the workflow platform's too, and its tables are not ours to drop."""
    return type_ != "table" or name in metadata.tables or name == VERSION_TABLE


def _run(connection: Connection, schema: str) -> None:
    # Wait for another migrator first (unbounded), then bound each migration's own waits.
    connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    connection.execute(text("SET lock_timeout = '5s'"))
    connection.execute(text("SET statement_timeout = '60s'"))
    try:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        # The tables carry no schema (the app maps it per engine), and Alembic's autogenerate
        # does not apply schema_translate_map: make the configured schema the default one
        # instead, for PostgreSQL and for the reflection that compares (Alembic's cookbook,
        # "schema-level multi tenancy"). The version table, unqualified, is found there too.
        connection.execute(text(f'SET search_path TO "{schema}"'))
        connection.commit()
        connection.dialect.default_schema_name = schema
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=VERSION_TABLE,
            include_schemas=False,
            include_name=_ours,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.commit()


async def _main() -> None:
    schema, url = _schema_and_url()
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run, schema)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
asyncio.run(_main())
