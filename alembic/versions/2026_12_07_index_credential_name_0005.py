"""An index on credential_name: purges and Secret Manager events find entries by it.

A purge (DELETE /api/credentials/auth-cache?credential_name=) or a pushed event matches the
name exactly or by a secret's prefix (`projects/p/secrets/s/`); without an index each scans
the whole table. text_pattern_ops serves both = and LIKE 'prefix%' whatever the collation.

A plain CREATE INDEX: writes wait while it is built (about a second per million rows), reads
do not. CONCURRENTLY would spare the writes, but it waits for every open transaction, and a
second migrator waiting on env.py's advisory lock holds one: the two deadlock.
Expand only: the previous release never reads the index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "ix_keychain_credential_name"


def schema() -> str:
    """The configured schema (KEYCHAIN_SCHEMA), known only once env.py runs."""
    return context.config.attributes["keychain_schema"]


def upgrade() -> None:
    op.create_index(
        INDEX,
        "keychain",
        ["credential_name"],
        schema=schema(),
        postgresql_ops={"credential_name": "text_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="keychain", schema=schema())
