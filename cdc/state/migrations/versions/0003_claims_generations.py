"""Claims with fencing tokens, capture generations, per-table stream set, pair outcomes; long text on MySQL.

- cdc_checkpoints gains ``generation`` (the identity of the capture installation the position
  belongs to), ``fence`` (the claim token of the process that wrote it) and ``tables`` (JSON list of
  the source tables whose snapshot is complete and which the pair streams) and ``source_committed_at``
  (source commit time of the last change applied: the lag `cdc status` shows).
- cdc_leases becomes the per-pair claim: a token that grows with every claim, the holder (host, pid,
  since, heartbeat) and how its last run ended (state running|stopped|failed, error, error time).
- On MySQL/MariaDB the columns that hold rows or errors become LONGTEXT (TEXT holds 64 KiB), so a
  dead letter can hold any change the source can produce.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Stamp = sa.DateTime(timezone=True)
_LONG = [("cdc_audit_log", "before"), ("cdc_audit_log", "after"), ("cdc_dead_letters", "change"),
         ("cdc_dead_letters", "error"), ("cdc_conflicts", "change"), ("cdc_conflicts", "target_row"),
         ("cdc_reconcile_runs", "report")]


def upgrade() -> None:
    with op.batch_alter_table("cdc_checkpoints") as table:
        table.add_column(sa.Column("generation", sa.String(100)))
        table.add_column(sa.Column("fence", sa.BigInteger))
        table.add_column(sa.Column("tables", sa.Text))
        table.add_column(sa.Column("source_committed_at", Stamp))
    with op.batch_alter_table("cdc_leases") as table:
        table.add_column(sa.Column("token", sa.BigInteger, nullable=False, server_default="0"))
        table.add_column(sa.Column("host", sa.String(200)))
        table.add_column(sa.Column("pid", sa.Integer))
        table.add_column(sa.Column("since", Stamp))
        table.add_column(sa.Column("heartbeat_at", Stamp))
        table.add_column(sa.Column("state", sa.String(16), nullable=False, server_default="stopped"))
        table.add_column(sa.Column("error", sa.Text))
        table.add_column(sa.Column("error_at", Stamp))
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        for table, column in _LONG:
            nullable = (table, column) not in {("cdc_dead_letters", "change"), ("cdc_dead_letters", "error"),
                                               ("cdc_conflicts", "change"), ("cdc_reconcile_runs", "report")}
            op.alter_column(table, column, type_=mysql.LONGTEXT(), existing_nullable=nullable)


def downgrade() -> None:
    with op.batch_alter_table("cdc_leases") as table:
        for column in ("error_at", "error", "state", "heartbeat_at", "since", "pid", "host", "token"):
            table.drop_column(column)
    with op.batch_alter_table("cdc_checkpoints") as table:
        for column in ("source_committed_at", "tables", "fence", "generation"):
            table.drop_column(column)
