"""The one table, as SQLAlchemy Core. Alembic migrations create it; the app never does."""

from __future__ import annotations

from typing import get_args

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


ENDED_EXECUTION_TABLE = "keychain_ended_execution"
FILL_LEASE_TABLE = "keychain_fill_lease"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def build_metadata(schema: str) -> tuple[MetaData, Table]:
    """The schema name is a setting, so the table is built per schema rather than at import."""
    metadata = MetaData(schema=schema, naming_convention=NAMING_CONVENTION)
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
        Column(
            "accessed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
        ),
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
    Table(
        ENDED_EXECUTION_TABLE,
        metadata,
        # Cleaned-up executions: their execution tokens stop working at once.
        Column("execution_id", BigInteger, primary_key=True),
        Column("ended_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
        Index(None, "ended_at"),
    )
    Table(
        FILL_LEASE_TABLE,
        metadata,
        # A miss being fetched from its provider by one caller (the lease holder) while others
        # wait on the server; a write of the key, a release or the expiry ends it.
        Column("cache_key", Text, primary_key=True),
        Column("lease_id", Text, nullable=False),
        Column("holder", Text, nullable=False),
        Column("granted_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
        Column("expires_at", DateTime(timezone=True), nullable=False),
    )
    return metadata, keychain


def ended_executions(keychain: Table) -> Table:
    """The ended-executions table that sits beside `keychain` in its metadata."""
    return keychain.metadata.tables[f"{keychain.schema}.{ENDED_EXECUTION_TABLE}"]


def fill_leases(keychain: Table) -> Table:
    """The fill-lease table that sits beside `keychain` in its metadata."""
    return keychain.metadata.tables[f"{keychain.schema}.{FILL_LEASE_TABLE}"]
