"""The tables, as SQLAlchemy Core, defined once. Alembic migrations create them; the app never does.

They carry no schema: the schema is a setting (KEYCHAIN_SCHEMA), and each engine maps the
tables into it with SQLAlchemy's schema_translate_map (`in_schema`). Compiled statements stay
cached across schemas; the schema name is put into the SQL at execution.
"""

from __future__ import annotations

from typing import Any, get_args

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from app.keychain.schemas import CacheType, ScopeType

# Postgres-style constraint names, so migrations can refer to them by a stable name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
    "pk": "%(table_name)s_pkey",
}

# The API's enumerations are the one source; migrations keep their own frozen copies.
CACHE_TYPES: tuple[str, ...] = get_args(CacheType)
SCOPE_TYPES: tuple[str, ...] = get_args(ScopeType)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


metadata = MetaData(naming_convention=NAMING_CONVENTION)
keychain = Table(
    "keychain",
    metadata,
    Column("cache_key", Text, primary_key=True),
    Column("credential_name", Text, nullable=False),
    Column("credential_type", Text, nullable=False),
    Column("cache_type", Text, nullable=False),
    Column("scope_type", Text, nullable=False),
    Column("execution_id", BigInteger),
    Column("parent_execution_id", BigInteger),
    Column("data", LargeBinary, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("ttl_seconds", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("accessed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("access_count", Integer, nullable=False, server_default=text("0")),
    # The principal whose token wrote the entry: replacing a live global entry written by
    # someone else needs a write grant.
    Column("written_by", Text, nullable=False, server_default=text("'unknown'")),
    # Random per write and bound into the ciphertext's associated data, so an older
    # ciphertext of the same key cannot be replayed onto the row. NULL: sealed before 0002.
    Column("write_id", LargeBinary),
    CheckConstraint(_in("cache_type", CACHE_TYPES), name="cache_type"),
    CheckConstraint(_in("scope_type", SCOPE_TYPES), name="scope_type"),
    CheckConstraint(
        "scope_type <> 'execution' OR execution_id IS NOT NULL", name="execution_scope_has_id"
    ),
    Index(None, "expires_at"),
    Index(None, "execution_id"),
    Index(None, "parent_execution_id"),
    # Purges and Secret Manager events match names exactly and by prefix (LIKE 'p%').
    Index(None, "credential_name", postgresql_ops={"credential_name": "text_pattern_ops"}),
)
ended_executions = Table(
    "keychain_ended_execution",
    metadata,
    # Cleaned-up executions: their execution tokens stop working at once.
    Column("execution_id", BigInteger, primary_key=True),
    Column("ended_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Index(None, "ended_at"),
)
fill_leases = Table(
    "keychain_fill_lease",
    metadata,
    # A miss being fetched from its provider by one caller (the lease holder) while others
    # wait on the server; a write of the key, a release or the expiry ends it.
    Column("cache_key", Text, primary_key=True),
    Column("lease_id", Text, nullable=False),
    Column("holder", Text, nullable=False),
    Column("granted_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)


def in_schema(schema: str) -> dict[str, Any]:
    """Execution options that put the tables in `schema`; every engine of the app is made with them."""
    return {"schema_translate_map": {None: schema}}


def schema_of(engine: AsyncEngine) -> str:
    """The schema `engine` puts the tables in (what `in_schema` gave it)."""
    schema: str = engine.get_execution_options()["schema_translate_map"][None]
    return schema
