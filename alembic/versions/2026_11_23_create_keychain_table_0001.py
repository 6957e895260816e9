"""Create the keychain table.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa

from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def schema() -> str:
    """The configured schema (KEYCHAIN_SCHEMA), known only once env.py runs."""
    return context.config.attributes["keychain_schema"]


def upgrade() -> None:
    op.create_table(
        "keychain",
        sa.Column("cache_key", sa.Text(), nullable=False),
        sa.Column("credential_name", sa.Text(), nullable=False),
        sa.Column("credential_type", sa.Text(), nullable=False),
        sa.Column("cache_type", sa.Text(), nullable=False),
        sa.Column("scope_type", sa.Text(), nullable=False),
        sa.Column("execution_id", sa.BigInteger(), nullable=True),
        sa.Column("parent_execution_id", sa.BigInteger(), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "accessed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("access_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint(
            "cache_type IN ('secret', 'token', 'config')", name=op.f("keychain_cache_type_check")
        ),
        sa.CheckConstraint(
            "scope_type IN ('execution', 'global', 'session')",
            name=op.f("keychain_scope_type_check"),
        ),
        sa.CheckConstraint(
            "scope_type <> 'execution' OR execution_id IS NOT NULL",
            name=op.f("keychain_execution_scope_has_id_check"),
        ),
        sa.PrimaryKeyConstraint("cache_key", name=op.f("keychain_pkey")),
        schema=schema(),
    )
    for column in ("expires_at", "execution_id", "parent_execution_id"):
        op.create_index(op.f(f"ix_keychain_{column}"), "keychain", [column], schema=schema())


def downgrade() -> None:
    # The schema itself is shared with the workflow platform, so only our table goes.
    op.drop_table("keychain", schema=schema())
