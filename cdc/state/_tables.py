"""SQLAlchemy Core definitions of the state tables (the alembic migrations create them)."""

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()
# SQLite only auto-increments an INTEGER PRIMARY KEY.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Stamp = sa.DateTime(timezone=True)
#: Text that holds a whole row or error: TEXT on MySQL/MariaDB stops at 64 KiB.
Long = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

checkpoints = sa.Table(
    "cdc_checkpoints", metadata,
    sa.Column("pair", sa.String(200), primary_key=True),
    sa.Column("position", sa.Text),
    sa.Column("snapshot", sa.Text),
    sa.Column("changes_applied", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", Stamp, nullable=False),
    sa.Column("generation", sa.String(100)),  # identity of the capture installation the position is in
    sa.Column("fence", sa.BigInteger),  # claim token of the process that wrote it
    sa.Column("tables", sa.Text),  # JSON list of the source tables the pair streams (snapshot complete)
    sa.Column("source_committed_at", Stamp),  # source commit time of the last change applied (lag)
)

audit_log = sa.Table(
    "cdc_audit_log", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("pair", sa.String(200), nullable=False),
    sa.Column("source_table", sa.String(200), nullable=False),
    sa.Column("target_table", sa.String(200), nullable=False),
    sa.Column("op", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("before", Long),
    sa.Column("after", Long),
    sa.Column("source_position", sa.Text),
    sa.Column("source_txid", sa.String(100)),
    sa.Column("committed_at", Stamp),
    sa.Column("applied_at", Stamp, nullable=False),
    # None (applied) | applied | conflict | skipped | parked | held | retried | discarded | resolved
    sa.Column("decision", sa.String(16)),
    sa.Column("policy", sa.String(64)),  # the conflict policy or rule that decided
    sa.Column("detail", Long),  # why, in words
)

dead_letters = sa.Table(
    "cdc_dead_letters", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("pair", sa.String(200), nullable=False),
    sa.Column("source_table", sa.String(200), nullable=False),
    sa.Column("target_table", sa.String(200), nullable=False),
    sa.Column("op", sa.String(16), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("change", Long, nullable=False),
    sa.Column("error", Long, nullable=False),
    sa.Column("column_name", sa.String(200)),
    sa.Column("source_position", sa.Text),
    # parked | held (waits behind blocked_by) | retried | discarded | resolved
    sa.Column("status", sa.String(16), nullable=False, server_default="parked"),
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("resolved_at", Stamp),
    sa.Column("kind", sa.String(16), nullable=False, server_default="error"),  # error | balance | closed | held
    sa.Column("blocked_by", sa.String(64)),  # "dead letter 7", "conflict 3"
    sa.Column("source_txid", sa.String(100)),
    sa.Column("note", Long),  # a discard's reason; what resolved it
    sa.Index("ix_cdc_dead_letters_open", "pair", "status"),
)

conflicts = sa.Table(
    "cdc_conflicts", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("pair", sa.String(200), nullable=False),
    sa.Column("target_table", sa.String(200), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("change", Long, nullable=False),
    sa.Column("target_row", Long),
    sa.Column("policy", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="open"),  # open | resolved
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("resolved_at", Stamp),
    sa.Column("source_table", sa.String(200)),
    sa.Column("source_key", sa.Text),  # JSON: the source key later changes are held by
    sa.Column("source_position", sa.Text),
    sa.Column("resolution", sa.String(16)),  # source | target
    sa.Column("note", Long),
    sa.Index("ix_cdc_conflicts_open", "pair", "status"),
)

row_hashes = sa.Table(
    "cdc_row_hashes", metadata,
    sa.Column("pair", sa.String(200), primary_key=True),
    sa.Column("target_table", sa.String(200), primary_key=True),
    sa.Column("key_digest", sa.String(64), primary_key=True),  # SHA-256 of the target key as JSON
    sa.Column("row_hash", sa.String(64), nullable=False),  # SHA-256 of the row this pair last wrote
)

leases = sa.Table(
    "cdc_leases", metadata,
    sa.Column("pair", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("expires_at", Stamp, nullable=False),
    sa.Column("token", sa.BigInteger, nullable=False, server_default="0"),  # grows with every claim (fencing)
    sa.Column("host", sa.String(200)),
    sa.Column("pid", sa.Integer),
    sa.Column("since", Stamp),
    sa.Column("heartbeat_at", Stamp),
    sa.Column("state", sa.String(16), nullable=False, server_default="stopped"),  # running | stopped | failed
    sa.Column("error", sa.Text),
    sa.Column("error_at", Stamp),
)

reconcile_runs = sa.Table(
    "cdc_reconcile_runs", metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("pair", sa.String(200), nullable=False),
    sa.Column("started_at", Stamp, nullable=False),
    sa.Column("finished_at", Stamp),
    sa.Column("equal", sa.Boolean, nullable=False),
    sa.Column("tables", sa.Integer, nullable=False),
    sa.Column("missing", sa.BigInteger, nullable=False),
    sa.Column("extra", sa.BigInteger, nullable=False),
    sa.Column("different", sa.BigInteger, nullable=False),
    sa.Column("repaired", sa.BigInteger),
    sa.Column("report", Long, nullable=False),
)
