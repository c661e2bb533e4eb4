"""Read and write checkpoints, audit rows and dead letters inside the caller's transaction."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .. import registry
from ..changes import loads
from ._tables import audit_log, checkpoints, conflicts, dead_letters, reconcile_runs


@dataclass(frozen=True)
class Checkpoint:
    """Where a pair stands: stream position, unfinished snapshot (or None), totals.

    ``tables``: the source tables whose snapshot is complete and whose changes the pair streams
    (empty while the first snapshot runs), each with the mapping identity it was copied under
    (TableMapping.identity; None or partial when not recorded). ``tables_recorded`` is False for a
    checkpoint written before state version 0003, whose ``tables`` are inferred (see read_checkpoint).
    """

    position: Any
    snapshot: dict | None
    changes_applied: int
    updated_at: dt.datetime | None
    source_committed_at: dt.datetime | None = None  # source commit time of the last change applied
    #: The capture installation the position belongs to (None: written before generations existed).
    generation: str | None = None
    tables: dict[str, dict | None] = field(default_factory=dict)
    tables_recorded: bool = True


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def db_now(conn: sa.Connection) -> dt.datetime:
    """The database server's clock (aware UTC), for times that processes on different machines
    compare (claim heartbeats): a machine whose clock runs ahead must not see a live holder as
    expired. A database without a server (SQLite) has this machine's clock."""
    clock = server_clock(conn)
    if clock is None:
        return now()
    return aware(conn.execute(sa.select(clock)).scalar()).astimezone(dt.timezone.utc)


def server_clock(conn: sa.Connection) -> sa.ColumnElement | None:
    """The server's current UTC time as an SQL expression, as the target's adapter writes it
    (``capabilities.server_clock``), or None when the database has no server."""
    clock = registry.for_backend(conn.dialect.name).capabilities.server_clock
    return sa.literal_column(clock) if clock else None


def read_checkpoint(conn: sa.Connection, pair: str) -> Checkpoint | None:
    """The pair's checkpoint, or None before its first commit."""
    row = conn.execute(sa.select(checkpoints).where(checkpoints.c.pair == pair)).first()
    if row is None:
        return None
    position, snapshot = loads(row.position), loads(row.snapshot)
    known = (row.changes_applied, aware(row.updated_at), aware(row.source_committed_at), row.generation)
    if row.tables is not None:
        tables = loads(row.tables)
        if isinstance(tables, list):  # names only, as recorded before mapping identities
            tables = _with_last_targets(conn, pair, tables)
        return Checkpoint(position, snapshot, *known, tables)
    return Checkpoint(position, snapshot, *known, {} if snapshot is not None else _snapshotted_tables(conn, pair),
                      tables_recorded=False)


def other_writers(conn: sa.Connection, pair: str) -> dict[str, list[tuple[str, bool]]]:
    """Per target table, the other pairs whose checkpoints in this database stream or copy into
    it, each with whether its mapping marks the table shared (tables recorded by name only, or
    before identities named their target, are not known and not listed)."""
    found: dict[str, list[tuple[str, bool]]] = {}
    rows = conn.execute(sa.select(checkpoints.c.pair, checkpoints.c.tables, checkpoints.c.snapshot)
                        .where(checkpoints.c.pair != pair))
    for other, tables, snapshot in rows:
        streamed = loads(tables) if tables else {}
        copying = ((loads(snapshot) or {}).get("tables") or {}) if snapshot else {}
        identities = [*(streamed.values() if isinstance(streamed, dict) else ()),
                      *(p.get("mapping") for p in copying.values() if isinstance(p, dict))]
        for identity in identities:
            if isinstance(identity, dict) and identity.get("target"):
                found.setdefault(identity["target"], []).append((other, bool(identity.get("shared"))))
    return found


def _snapshotted_tables(conn: sa.Connection, pair: str) -> dict[str, dict | None]:
    """The streamed tables of a checkpoint written before 0003 recorded them: those with a snapshot
    audit row. A table not found (one empty at its snapshot, or a pruned audit log) is copied again,
    which costs time but loses nothing; assuming a table was copied could lose all its rows."""
    query = (sa.select(audit_log.c.source_table).distinct()
             .where(audit_log.c.pair == pair, audit_log.c.op == "snapshot"))
    return _with_last_targets(conn, pair, sorted(conn.execute(query).scalars()))


def _with_last_targets(conn: sa.Connection, pair: str, tables: list[str]) -> dict[str, dict | None]:
    """Streamed tables recorded by name only: each with the target table its newest audit row
    names (None when it has none), so a table whose target changed since is still copied again;
    the rest of its mapping identity is unknown and taken as unchanged."""
    newest = (sa.select(audit_log.c.source_table, sa.func.max(audit_log.c.id).label("id"))
              .where(audit_log.c.pair == pair).group_by(audit_log.c.source_table).subquery())
    query = sa.select(audit_log.c.source_table, audit_log.c.target_table).join(newest, audit_log.c.id == newest.c.id)
    targets = dict(conn.execute(query).all())
    return {t: {"target": targets[t]} if t in targets else None for t in tables}


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """A stored time as an aware UTC time (SQLite and MySQL give them back without a zone)."""
    return value.replace(tzinfo=dt.timezone.utc) if value is not None and value.tzinfo is None else value


def write_generation(conn: sa.Connection, pair: str, generation: str | None) -> None:
    """Record which capture installation the pair's checkpoint belongs to, once: a checkpoint that
    has one keeps it (only --resnapshot, which forgets the checkpoint, starts a new one), so a
    process that has lost the pair cannot overwrite it either."""
    conn.execute(checkpoints.update().where(checkpoints.c.pair == pair, checkpoints.c.generation.is_(None))
                 .values(generation=generation))


def write_audit(conn: sa.Connection, rows: list[dict]) -> None:
    """Append audit rows (dicts of the audit_log columns, JSON fields already encoded)."""
    if rows:
        conn.execute(audit_log.insert(), rows)


def write_dead_letters(conn: sa.Connection, rows: list[dict]) -> None:
    """Park rows the target rejected, in the same transaction as the batch and checkpoint."""
    if rows:
        conn.execute(dead_letters.insert(), rows)


def write_reconcile_run(conn: sa.Connection, row: dict) -> int:
    """Record one reconciliation (its counts and its report as JSON); the new row's id."""
    return conn.execute(reconcile_runs.insert().values(**row)).inserted_primary_key[0]


def open_counts(conn: sa.Connection, pair: str) -> tuple[int, int]:
    """(dead letters parked or held, conflicts open) of ``pair``."""
    letters = conn.execute(sa.select(sa.func.count()).select_from(dead_letters).where(
        dead_letters.c.pair == pair, dead_letters.c.status.in_(("parked", "held")))).scalar()
    open_ = conn.execute(sa.select(sa.func.count()).select_from(conflicts).where(
        conflicts.c.pair == pair, conflicts.c.status == "open")).scalar()
    return letters, open_
