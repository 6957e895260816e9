"""Contract: every entry names its writer.

Rows written before 0002 are attributed to 'unknown'. The default keeps a pod of the previous
release (which does not send written_by) able to write while the new release rolls out.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UNKNOWN_WRITER = "unknown"


def schema() -> str:
    """The configured schema (KEYCHAIN_SCHEMA), known only once env.py runs."""
    return context.config.attributes["keychain_schema"]


def upgrade() -> None:
    table = f'"{schema()}".keychain'
    op.execute(f"UPDATE {table} SET written_by = '{UNKNOWN_WRITER}' WHERE written_by IS NULL")
    op.execute(f"ALTER TABLE {table} ALTER COLUMN written_by SET DEFAULT '{UNKNOWN_WRITER}'")
    op.execute(f"ALTER TABLE {table} ALTER COLUMN written_by SET NOT NULL")


def downgrade() -> None:
    table = f'"{schema()}".keychain'
    op.execute(f"ALTER TABLE {table} ALTER COLUMN written_by DROP NOT NULL")
    op.execute(f"ALTER TABLE {table} ALTER COLUMN written_by DROP DEFAULT")
