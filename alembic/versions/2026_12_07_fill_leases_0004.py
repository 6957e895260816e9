"""Fill leases: which caller is fetching a missing entry from its provider, until when.

Expand only: a new table the previous release never touches.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

import sqlalchemy as sa

from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def schema() -> str:
    """The configured schema (KEYCHAIN_SCHEMA), known only once env.py runs."""
    return context.config.attributes["keychain_schema"]


def upgrade() -> None:
    op.create_table(
        "keychain_fill_lease",
        sa.Column("cache_key", sa.Text(), nullable=False),
        sa.Column("lease_id", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column(
            "granted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("cache_key", name=op.f("keychain_fill_lease_pkey")),
        schema=schema(),
    )


def downgrade() -> None:
    op.drop_table("keychain_fill_lease", schema=schema())
