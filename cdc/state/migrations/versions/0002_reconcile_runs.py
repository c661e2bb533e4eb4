"""cdc_reconcile_runs: one row per `cdc reconcile` run, with its counts and its report.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cdc_reconcile_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("pair", sa.String(200), nullable=False),
        sa.Column("started_at", Stamp, nullable=False), sa.Column("finished_at", Stamp),
        sa.Column("equal", sa.Boolean, nullable=False), sa.Column("tables", sa.Integer, nullable=False),
        sa.Column("missing", sa.BigInteger, nullable=False), sa.Column("extra", sa.BigInteger, nullable=False),
        sa.Column("different", sa.BigInteger, nullable=False), sa.Column("repaired", sa.BigInteger),
        sa.Column("report", sa.Text, nullable=False),
    )
    op.create_index("ix_cdc_reconcile_runs_pair", "cdc_reconcile_runs", ["pair", "started_at"])


def downgrade() -> None:
    op.drop_table("cdc_reconcile_runs")
