"""SQL Server capture `trigger` (through ODBC): one statement trigger per table logs each changed row's
images into a changelog, cut into epochs that a read seals and takes whole (see MssqlTriggerSource)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from decimal import Decimal
from typing import Any, Callable, Generator

import sqlalchemy as sa

from cdc.changes import Position
from cdc.errors import SchemaError

from .._changelog import ChangelogCapture, trigger_fault
from . import sql, types
from .source import UTC, MssqlSource

logger = logging.getLogger(__name__)

#: Seconds a read keeps asking to seal the epoch without queueing (LOCK_TIMEOUT 0) before it waits in
#: line (at most SEAL_WAIT_MS); the least, and the most after waits in line that timed out.
SEAL_PATIENCE = 0.25
SEAL_PATIENCE_MAX = 30.0
SEAL_WAIT_MS = 1000
#: A transaction open longer than this holds capture back noticeably: doctor says so.
OLD_TRANSACTION_SECONDS = 300


def _lock_refused(exc: sa.exc.DBAPIError) -> bool:
    """SQL Server's lock request timeout (1222) or deadlock victim (1205)."""
    text = str(exc.orig)
    return "(1222)" in text or "(1205)" in text


class MssqlTriggerSource(ChangelogCapture, MssqlSource):
    """Capture `trigger` on SQL Server: one AFTER INSERT, UPDATE, DELETE trigger per table logs every row a
    statement changed (FOR JSON images) into the changelog, with the *epoch* of ``_cdc_epoch`` it read
    under a shared lock that its transaction holds to the end. A read seals the epoch by raising it,
    which takes the row's exclusive lock and so waits until every transaction stamped with the old epoch
    has ended; epochs up to the sealed one are final and are read whole (the MySQL adapter's design,
    see adapters/mysql/trigger.py). The seal asks with LOCK_TIMEOUT 0 first, never making a writer
    queue behind it, then waits in line at most a second, as the deadlock victim if it comes to that
    (DEADLOCK_PRIORITY LOW): the application's transactions are never the ones chosen.

    Position: the last epoch applied (an int); the audit's ``source_txid`` is the epoch."""

    changelog = sql.CHANGELOG
    changelog_mark = sql.CHANGELOG_MARK
    create_state = sql.CREATE_STATE
    drop_state = sql.DROP_STATE
    register_sql = sql.REGISTER
    acknowledge_sql = sql.ACKNOWLEDGE
    triggers_noun = "trigger"
    _patience = SEAL_PATIENCE

    def __init__(self, engine: sa.Engine, pair: str, source_zone: str = "UTC"):
        MssqlSource.__init__(self, engine, pair, source_zone)

    def _session(self) -> sa.Connection:
        """Install, uninstall and acknowledge commit step by step (the purge in batches)."""
        return self.engine.connect()

    def _commit(self, conn: sa.Connection) -> None:
        conn.commit()

    # -- install -----------------------------------------------------------------------
    def _columns(self, conn: sa.Connection, table: str) -> list[tuple[str, str, str]]:
        """The table's columns with their system and own type names; SchemaError for a column an AFTER
        trigger cannot read."""
        self.describe(table)  # SchemaError if it is missing
        columns = [(str(name), str(base).lower(), str(own).lower())
                   for name, base, own in conn.exec_driver_sql(sql.COLUMNS, (table,))]
        unreadable = [f"{name} ({base})" for name, base, _ in columns if base in sql.UNREADABLE_TYPES]
        if unreadable:
            raise SchemaError(f"pair {self.pair}: table {table} has {', '.join(unreadable)}, which a SQL Server "
                              "trigger cannot read: change the column to NVARCHAR(MAX), VARCHAR(MAX) or VARBINARY(MAX), "
                              "or capture the table with change_tracking or rowversion")
        return columns

    def drop_triggers(self, table: str) -> list[str]:
        return [sql.drop_trigger(table)]

    def install_triggers(self, conn: sa.Connection, tables: list[str]) -> None:
        attached = {name: table for name, table, _, _ in conn.exec_driver_sql(sql.TRIGGERS)}
        for table in tables:
            name = sql.trigger_name(table)
            if attached.get(name, table).casefold() != table.casefold():  # on a table renamed away
                conn.exec_driver_sql(f"DROP TRIGGER {sql.quote(name)}")
            conn.exec_driver_sql(sql.create_trigger(table, self.keys[table], self._columns(conn, table)))
            conn.exec_driver_sql(sql.enable_trigger(table))

    def trigger_faults(self, conn: sa.Connection, tables: list[str]) -> dict[str, str]:
        """A table's trigger must exist, be attached to it, be enabled, and log the columns it has now."""
        found = {name: (table, disabled, text) for name, table, disabled, text in conn.exec_driver_sql(sql.TRIGGERS)}
        attached = {name: table for name, (table, _, _) in found.items()}
        faults = {}
        for table in tables:
            name = sql.trigger_name(table)
            why = trigger_fault(table, [name], attached)
            if why is None and found[name][1]:
                why = ("its trigger is disabled (DISABLE TRIGGER): changes made while it was off were not logged; "
                       "after `cdc install`, `cdc reconcile CONFIG --repair` brings them over")
            elif why is None and sql.logged_digest(found[name][2]) != sql.columns_digest(self._columns(conn, table)):
                why = "its trigger logs other columns than the table has now (a column was added, dropped or changed)"
            if why:
                faults[table] = why
        return faults

    # -- the read horizon: sealed epochs -------------------------------------------------
    def current_position(self) -> Position:
        """Seal the current epoch: everything up to it has ended and can be read whole."""
        while True:
            sealed = self._seal(force=True)
            if sealed is not None:
                return sealed
            logger.warning("pair %s: an open transaction keeps the capture epoch from sealing; waiting for it "
                           "to end (`cdc doctor` names long transactions)", self.pair)

    def _seal(self, force: bool) -> int | None:
        """The highest sealed epoch; seals the current one when changes were logged in it (or ``force``).
        None when a transaction still open kept it from sealing in time."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            current = conn.exec_driver_sql(sql.CURRENT_EPOCH).scalar()
            logged = conn.exec_driver_sql(sql.LOGGED_SINCE, (current,)).first()
            conn.rollback()
            if not force and logged is None:
                return current - 1  # nothing logged since the last seal: no need to wait for anyone
            conn.exec_driver_sql("SET DEADLOCK_PRIORITY LOW")
            deadline = time.monotonic() + self._patience
            try:
                while True:
                    in_line = time.monotonic() >= deadline
                    conn.exec_driver_sql(f"SET LOCK_TIMEOUT {SEAL_WAIT_MS if in_line else 0}")
                    try:
                        sealed = conn.exec_driver_sql(sql.SEAL).scalar()
                        conn.commit()
                    except sa.exc.DBAPIError as exc:
                        conn.rollback()
                        if not _lock_refused(exc):
                            raise
                        if in_line:  # a long transaction: ask longer before queueing again
                            self._patience = min(SEAL_PATIENCE_MAX, self._patience * 4)
                            return None
                        time.sleep(0.02)
                        continue
                    if in_line:
                        self._patience = max(SEAL_PATIENCE, self._patience / 2)
                    return sealed
            finally:
                if not conn.invalidated:  # the pooled connection's session as it was
                    conn.exec_driver_sql("SET LOCK_TIMEOUT -1")
                    conn.exec_driver_sql("SET DEADLOCK_PRIORITY NORMAL")
                    conn.commit()

    def changelog_rows(self, after: Position, max_changes: int) -> Generator[Any, None, Position]:
        """Every sealed epoch after ``after``, whole; ``max_changes`` is only the part size."""
        low = after or 0
        high = self._seal(force=False)
        if high is None or high <= low:
            return low
        with self.engine.connect() as conn:
            yield from conn.exec_driver_sql(sql.read_changelog(len(self.keys)), (low, high, *self.keys))
        return high

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """SourceError when the checkpoint's epoch was never sealed here (a changelog made again starts
        at 1), or is before the epochs every pair has acknowledged, which the changelog no longer holds."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            current = conn.exec_driver_sql(sql.CURRENT_EPOCH).scalar()
        self._position_ahead(position, current - 1, "the last epoch the source's changelog sealed")
        self._position_behind(position or 0, self._purged_through(),
                              "the epochs every pair has acknowledged, purged from the changelog")

    def format_position(self, position: Position) -> str:
        return f"epoch {position}"

    def count_pending(self, conn: sa.Connection, after: Position) -> int:
        return conn.exec_driver_sql(sql.PENDING, (after or 0,)).scalar()

    def purge(self, conn: sa.Connection) -> None:
        """In batches of 5,000 rows, each committed: a writer waits on none for long."""
        purgeable = conn.exec_driver_sql(sql.PURGEABLE).scalar() or 0
        while True:
            done = conn.exec_driver_sql(sql.PURGE, (purgeable,)).rowcount
            conn.commit()
            if done < 5000:
                return

    # -- doctor -------------------------------------------------------------------------
    def horizon_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """A transaction open for long keeps the epoch from sealing: doctor names it (warn)."""
        try:
            oldest = conn.exec_driver_sql(sql.OLDEST_TRANSACTION).first()
        except sa.exc.DBAPIError:
            conn.rollback()
            return [("info", "open transactions are not visible to this login (GRANT VIEW SERVER STATE to see "
                             "one that holds capture back)")]
        if oldest is not None and oldest[2] > OLD_TRANSACTION_SECONDS:
            return [("warn", f"transaction {oldest[0]} (session {oldest[1]}) has run for {oldest[2]:,}s: "
                             "changes logged after it started are applied only once it ends")]
        return [("ok", "no long-running transaction holds capture back")]

    def database_findings(self) -> list[tuple[str, str]]:
        """The login may read each table; and TRUNCATE TABLE fires no trigger."""
        return MssqlSource.diagnose(self) + [
            ("info", "TRUNCATE TABLE fires no trigger: rows it removes stay in the target until `cdc reconcile "
                     "CONFIG --repair` (a captured table that must never be truncated can be referenced by a "
                     "foreign key, which makes SQL Server refuse TRUNCATE)")]

    # -- images ---------------------------------------------------------------------------
    def image_readers(self, table: str) -> dict[str, Callable[[Any], Any]]:
        """A logged JSON value read as pyodbc would give the column, then as the change model's value."""
        info = self.describe(table)
        with self.engine.connect() as conn:
            kinds = {name: base for name, base, _ in self._columns(conn, table)}
        readers = {}
        for name, column in zip(info.column_names, info.columns):
            logged, model = types.logged_value(kinds.get(name, "")), self.reader(column)
            readers[name] = (lambda v, t=logged, m=model: None if v is None else m(t(v)))
        return readers

    def parse_image(self, text: str) -> dict:
        return json.loads(text, parse_float=Decimal)

    def committed_at(self, row: Any) -> dt.datetime:
        return row.changed_at.replace(tzinfo=UTC)
