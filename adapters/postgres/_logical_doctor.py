"""What `cdc doctor` finds about a PostgreSQL source's fitness for capture `logical`, with the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from . import sql

if TYPE_CHECKING:
    from .logical import LogicalSource

Finding = tuple[str, str]
_IDENTITIES = {"d": "DEFAULT (primary key)", "f": "FULL", "i": "USING INDEX", "n": "NOTHING"}


def findings(source: LogicalSource) -> list[Finding]:
    """(level, text) findings: wal_level, replication slots, walsenders, the REPLICATION attribute,
    each table's replica identity and privileges, and the pair's slot."""
    found: list[Finding] = []
    with source.engine.connect() as conn:
        level = conn.exec_driver_sql(sql.WAL_LEVEL).scalar()
        found.append(("ok", "wal_level = logical") if level == "logical" else
                     ("fail", f"wal_level = {level}: set it with ALTER SYSTEM SET wal_level = logical; "
                              "and restart PostgreSQL"))
        mine = conn.exec_driver_sql(sql.SLOT, {"slot": source.slot}).first()
        found += _slots(conn, mine) + _walsenders(conn, mine)
        role = conn.exec_driver_sql(sql.MAY_REPLICATE).scalar()
        found.append(("ok", "the user may read replication slots") if role else
                     ("fail", "the user lacks REPLICATION: ALTER ROLE <user> REPLICATION (or, on managed "
                              "servers, grant the provider's replication role)"))
        for table in source.keys:
            found += _table(source, conn, table)
        found += _slot(source, conn, mine)
    return found


def _slots(conn: sa.Connection, mine: Any) -> list[Finding]:
    used, limit = conn.exec_driver_sql(sql.SLOTS_IN_USE).one()
    if mine is None and used >= limit:
        return [("fail", f"all {limit} replication slots are in use: raise max_replication_slots "
                         "and restart, or drop an unused slot")]
    return [("ok", f"replication slots: {used} of {limit} in use")]


def _walsenders(conn: sa.Connection, mine: Any) -> list[Finding]:
    senders, sending = conn.exec_driver_sql(sql.WAL_SENDERS_IN_USE).one()
    if mine is not None and mine.active:
        sending -= 1  # this pair's own run
    if sending < senders:
        return [("ok", f"walsenders: {sending} of max_wal_senders {senders} in use (a run needs one)")]
    return [("fail", f"all {senders} walsenders are in use (max_wal_senders): `cdc run` streams the slot "
                     "over a replication connection of its own; raise max_wal_senders and restart")]


def _table(source: LogicalSource, conn: sa.Connection, table: str) -> list[Finding]:
    info = source.describe(table)
    identity = conn.exec_driver_sql(sql.REPLICA_IDENTITY, {"table": table}).scalar()
    named = _IDENTITIES.get(identity, identity)
    found = []
    if not info.primary_key and identity != "f":
        found.append(("fail", f"{table}: no primary key and REPLICA IDENTITY {named}: "
                              f"ALTER TABLE {table} REPLICA IDENTITY FULL (and name its key in a mapping)"))
    else:
        found.append(("ok", f"{table}: REPLICA IDENTITY {named}"))
    if identity != "f":
        found.append(("info", f"{table}: updates carry no before image under REPLICA IDENTITY {named}, so (with "
                              "detect_conflicts on) conflicts are found by a hash of each row written (kept in "
                              "cdc_row_hashes; the copy goes row by row) and an update of unmapped columns only is "
                              f"written anyway: ALTER TABLE {table} REPLICA IDENTITY FULL compares before images "
                              "instead, at less cost"))
    toastable = conn.exec_driver_sql(sql.TOASTABLE_COLUMNS, {"table": table}).scalar()
    if toastable and identity != "f":
        found.append(("info", f"{table}: {toastable} column(s) may be TOASTed; an update that leaves them "
                              "unchanged does not send them, so cdc-sync reads them from the table "
                              f"(REPLICA IDENTITY FULL would send them instead)"))
    if not conn.exec_driver_sql(sql.MAY_SELECT, {"table": table}).scalar():
        found.append(("fail", f"{table}: no SELECT privilege: GRANT SELECT ON {table} TO <user>"))
    return found


def _slot(source: LogicalSource, conn: sa.Connection, slot: Any) -> list[Finding]:
    if slot is None:
        return [("warn", f"replication slot {source.slot} does not exist yet: run `cdc install CONFIG`")]
    current = int(conn.exec_driver_sql(sql.CURRENT_LSN).scalar())
    lag = current - int(slot.restart)
    level = "fail" if slot.wal_status == "lost" else ("warn" if lag > 1 << 30 else "ok")
    return [(level, f"slot {source.slot}: holds {lag / 1048576:,.1f} MiB of WAL, status {slot.wal_status}, "
                    f"{'active' if slot.active else 'not active'}")]
