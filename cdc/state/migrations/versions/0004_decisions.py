"""Decisions: conflicts, holds and dead-letter kinds; the audit log says what was decided and why.

- cdc_audit_log gains ``decision`` (None or applied, conflict, skipped, parked, held, retried,
  discarded, resolved), ``policy`` (the conflict policy or rule that decided) and ``detail`` (why).
- cdc_dead_letters gains ``kind`` (error, balance, closed, held), ``blocked_by`` (what a held change
  waits behind: "dead letter 7", "conflict 3"), ``source_txid`` and ``note`` (a discard's reason,
  what resolved it).
- cdc_conflicts gains the source table and key (what later changes are held by), the source
  position, ``resolution`` (source or target) and ``note``.
- cdc_row_hashes: per pair, target table and key, a hash of the row this pair last wrote, for
  conflict detection where the capture gives no before image (capture timestamp).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Long = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("cdc_audit_log") as table:
        table.add_column(sa.Column("decision", sa.String(16)))
        table.add_column(sa.Column("policy", sa.String(64)))
        table.add_column(sa.Column("detail", Long))
    with op.batch_alter_table("cdc_dead_letters") as table:
        table.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="error"))
        table.add_column(sa.Column("blocked_by", sa.String(64)))
        table.add_column(sa.Column("source_txid", sa.String(100)))
        table.add_column(sa.Column("note", Long))
    with op.batch_alter_table("cdc_conflicts") as table:
        table.add_column(sa.Column("source_table", sa.String(200)))
        table.add_column(sa.Column("source_key", sa.Text))
        table.add_column(sa.Column("source_position", sa.Text))
        table.add_column(sa.Column("resolution", sa.String(16)))
        table.add_column(sa.Column("note", Long))
    op.create_index("ix_cdc_dead_letters_open", "cdc_dead_letters", ["pair", "status"])
    op.create_index("ix_cdc_conflicts_open", "cdc_conflicts", ["pair", "status"])
    op.create_table(
        "cdc_row_hashes",
        sa.Column("pair", sa.String(200), primary_key=True),
        sa.Column("target_table", sa.String(200), primary_key=True),
        sa.Column("key_digest", sa.String(64), primary_key=True),
        sa.Column("row_hash", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cdc_row_hashes")
    op.drop_index("ix_cdc_conflicts_open", "cdc_conflicts")
    op.drop_index("ix_cdc_dead_letters_open", "cdc_dead_letters")
    with op.batch_alter_table("cdc_conflicts") as table:
        for column in ("note", "resolution", "source_position", "source_key", "source_table"):
            table.drop_column(column)
    with op.batch_alter_table("cdc_dead_letters") as table:
        for column in ("note", "source_txid", "blocked_by", "kind"):
            table.drop_column(column)
    with op.batch_alter_table("cdc_audit_log") as table:
        for column in ("detail", "policy", "decision"):
            table.drop_column(column)
