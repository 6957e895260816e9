"""Record who wrote each entry and which write sealed it; remember executions that ended.

Expand only: both new columns are nullable, so the previous release (which does not write them)
keeps working while pods roll. 0003 is the contract step for written_by.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa

from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def schema() -> str:
    """The configured schema (KEYCHAIN_SCHEMA), known only once env.py runs."""
    return context.config.attributes["keychain_schema"]


def upgrade() -> None:
    # Adding nullable columns without a default is a catalogue change: no table rewrite.
    op.add_column("keychain", sa.Column("written_by", sa.Text(), nullable=True), schema=schema())
    op.add_column(
        "keychain", sa.Column("write_id", sa.LargeBinary(), nullable=True), schema=schema()
    )
    op.create_table(
        "keychain_ended_execution",
        sa.Column("execution_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "ended_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("execution_id", name=op.f("keychain_ended_execution_pkey")),
        schema=schema(),
    )
    op.create_index(
        op.f("ix_keychain_ended_execution_ended_at"),
        "keychain_ended_execution",
        ["ended_at"],
        schema=schema(),
    )


def downgrade() -> None:
    op.drop_table("keychain_ended_execution", schema=schema())
    op.drop_column("keychain", "write_id", schema=schema())
    op.drop_column("keychain", "written_by", schema=schema())
