"""State tables: checkpoints, audit log, dead letters, conflicts, leases.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Stamp = sa.DateTime(timezone=True)


def _name(): return sa.String(200)


def upgrade() -> None:
    op.create_table(
        "cdc_checkpoints",
        sa.Column("pair", _name(), primary_key=True),
        sa.Column("position", sa.Text), sa.Column("snapshot", sa.Text),
        sa.Column("changes_applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", Stamp, nullable=False),
    )
    op.create_table(
        "cdc_audit_log",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("pair", _name(), nullable=False),
        sa.Column("source_table", _name(), nullable=False), sa.Column("target_table", _name(), nullable=False),
        sa.Column("op", sa.String(16), nullable=False), sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("key", sa.Text, nullable=False), sa.Column("before", sa.Text), sa.Column("after", sa.Text),
        sa.Column("source_position", sa.Text), sa.Column("source_txid", sa.String(100)),
        sa.Column("committed_at", Stamp), sa.Column("applied_at", Stamp, nullable=False),
    )
    op.create_index("ix_cdc_audit_log_pair_table", "cdc_audit_log", ["pair", "target_table", "applied_at"])
    op.create_table(
        "cdc_dead_letters",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("pair", _name(), nullable=False),
        sa.Column("source_table", _name(), nullable=False), sa.Column("target_table", _name(), nullable=False),
        sa.Column("op", sa.String(16), nullable=False), sa.Column("key", sa.Text, nullable=False),
        sa.Column("change", sa.Text, nullable=False), sa.Column("error", sa.Text, nullable=False),
        sa.Column("column_name", _name()), sa.Column("source_position", sa.Text),
        sa.Column("status", sa.String(16), nullable=False, server_default="parked"),
        sa.Column("created_at", Stamp, nullable=False), sa.Column("resolved_at", Stamp),
    )
    op.create_table(
        "cdc_conflicts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("pair", _name(), nullable=False), sa.Column("target_table", _name(), nullable=False),
        sa.Column("key", sa.Text, nullable=False), sa.Column("change", sa.Text, nullable=False),
        sa.Column("target_row", sa.Text), sa.Column("policy", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),
        sa.Column("created_at", Stamp, nullable=False), sa.Column("resolved_at", Stamp),
    )
    op.create_table(
        "cdc_leases",
        sa.Column("pair", _name(), primary_key=True),
        sa.Column("owner", _name(), nullable=False),
        sa.Column("expires_at", Stamp, nullable=False),
    )


def downgrade() -> None:
    for table in ("cdc_leases", "cdc_conflicts", "cdc_dead_letters", "cdc_audit_log", "cdc_checkpoints"):
        op.drop_table(table)
