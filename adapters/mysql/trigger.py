"""MySQL/MariaDB capture `trigger`: row triggers log every change with the *epoch* it belongs to.

Neither MySQL nor MariaDB tells a trigger its transaction's id reliably (information_schema's
INNODB_TRX is a cache refreshed at most every 100 ms), and an AUTO_INCREMENT id is handed out
before the transaction commits, so "every id above the checkpoint" can skip a transaction that
commits late. The changelog is therefore cut into epochs:

* a capture trigger reads the current epoch from ``_cdc_epoch`` with a SHARE lock, which its
  transaction holds until it ends: every change of one transaction carries the same epoch;
* a read *seals* the epoch by incrementing it, which takes the row's exclusive lock and so waits
  until every transaction stamped with the old epoch has committed or rolled back. After the seal,
  epochs up to the old value are final. The seal first asks with NOWAIT (never making a writer
  queue behind it); only after some patience of failed asks does it wait, at most
  ``innodb_lock_wait_timeout = 1`` second, during which new writers queue behind it. The
  patience adapts: under many short transactions some writer nearly always holds the epoch, and
  a wait in line ends in milliseconds, so it stays short (SEAL_PATIENCE, changes are applied
  within a fraction of a second); a wait in line that times out (a long transaction is open, and
  writers were held up behind the seal) makes it four times longer, up to SEAL_PATIENCE_MAX.

Position: the last epoch applied (an int). A read takes every sealed epoch after it, whole, in
epoch and id order; for two changes of one row the second waited for the first's transaction to
end before it was logged, so id order within an epoch is that row's commit order. The audit's
``source_txid`` is the epoch: transactions that ended in the same epoch are applied together, in
one target transaction; a source transaction is never split across two.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from decimal import Decimal
from typing import Any, Callable, Generator

import pymysql.converters
import sqlalchemy as sa

from cdc.changes import Position

from .._changelog import ChangelogCapture, trigger_fault
from . import sql
from .source import MySQLSource
from .sql import error_code

logger = logging.getLogger(__name__)
#: Seconds a read keeps asking to seal without queueing before it waits (up to 1 s) in line; the
#: least, and the most after waits in line that timed out (see above).
SEAL_PATIENCE = 0.25
SEAL_PATIENCE_MAX = 30.0
#: A transaction open longer than this holds capture back noticeably: doctor says so.
OLD_TRANSACTION_SECONDS = 300


def _text_reader(data_type: str) -> Callable[[str], Any]:
    """How a logged text becomes the value PyMySQL would have given for the column."""
    if data_type in ("tinyint", "smallint", "mediumint", "int", "bigint", "year", "bit"):
        return int
    if data_type == "decimal":
        return Decimal
    if data_type in ("float", "double"):
        return float
    if data_type == "datetime":
        return pymysql.converters.convert_datetime  # a zero date stays text, as PyMySQL leaves it
    if data_type == "date":
        return pymysql.converters.convert_date
    if data_type == "time":
        return pymysql.converters.convert_timedelta
    if data_type == "timestamp":
        return _from_epoch
    if data_type in sql.LOGGED_BINARY:
        return bytes.fromhex
    return str


def _from_epoch(text: str) -> Any:
    seconds = Decimal(text)
    if not seconds:
        return "0000-00-00 00:00:00"  # the zero TIMESTAMP, as PyMySQL gives it
    micros = int(seconds * 1_000_000)
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)  # naive UTC, as the session reads it


class TriggerSource(ChangelogCapture, MySQLSource):
    """The shared changelog capture with MySQL/MariaDB's triggers and its horizon, the sealed epoch."""

    changelog = sql.CHANGELOG
    changelog_mark = sql.CHANGELOG_MARK
    create_state = sql.CREATE_STATE
    drop_state = sql.DROP_STATE
    register_sql = sql.REGISTER
    acknowledge_sql = sql.ACKNOWLEDGE
    _patience = SEAL_PATIENCE  # seconds of asking before a seal waits in line (see above)

    def _session(self) -> sa.Connection:
        """Install and acknowledge commit step by step (DDL commits implicitly in MySQL anyway)."""
        return self.engine.connect()

    def _commit(self, conn: sa.Connection) -> None:
        conn.commit()

    # -- install ---------------------------------------------------------------------
    def _columns(self, conn: sa.Connection, table: str) -> list[tuple[str, str]]:
        self.describe(table)  # SchemaError if it is missing
        return [(name, kind.lower()) for name, kind in conn.exec_driver_sql(sql.COLUMNS, {"table": table})]

    def drop_triggers(self, table: str) -> list[str]:
        return [sql.drop_trigger(table, op) for op in sql.OPS]

    def install_triggers(self, conn: sa.Connection, tables: list[str]) -> None:
        """MariaDB replaces a table's triggers atomically (no change slips between two triggers);
        MySQL drops and makes them under a table lock."""
        mariadb = conn.dialect.is_mariadb
        attached = {name: table for name, table, _ in conn.exec_driver_sql(sql.TRIGGERS)}
        for table in tables:
            columns = self._columns(conn, table)
            for op in sql.OPS:  # on a table renamed away (CREATE OR REPLACE would not find it on this one)
                if attached.get(sql.trigger_name(table, op), table).casefold() != table.casefold():
                    conn.exec_driver_sql(sql.drop_trigger(table, op, if_exists=False))
            if mariadb:
                for op in sql.OPS:
                    conn.exec_driver_sql(sql.create_trigger(table, op, columns, replace=True))
            else:
                self._remake_locked(conn, table, columns)

    def _remake_locked(self, conn: sa.Connection, table: str, columns: list[tuple[str, str]]) -> None:
        conn.exec_driver_sql(sql.lock_table(table))
        try:
            for op in sql.OPS:
                conn.exec_driver_sql(sql.drop_trigger(table, op))
                conn.exec_driver_sql(sql.create_trigger(table, op, columns, replace=False))
        finally:
            conn.exec_driver_sql(sql.UNLOCK_TABLES)

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """SourceError when the checkpoint's epoch was never sealed here: every position a read
        returns is below the epoch that writers stamp now (a changelog made again starts at 1); or
        when it is before the epochs every pair has acknowledged, which the changelog no longer holds."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            current = conn.exec_driver_sql(sql.CURRENT_EPOCH).scalar()
        self._position_ahead(position, current - 1, "the last epoch the source's changelog sealed")
        self._position_behind(position or 0, self._purged_through(),
                              "the epochs every pair has acknowledged, purged from the changelog")

    def trigger_faults(self, conn: sa.Connection, tables: list[str]) -> dict[str, str]:
        """A table's three triggers must exist and be attached to it: renamed away, a table takes
        them along, and they go on logging changes under the old name."""
        attached = {name: table for name, table, _ in conn.exec_driver_sql(sql.TRIGGERS)}
        faults = {table: trigger_fault(table, [sql.trigger_name(table, op) for op in sql.OPS], attached)
                  for table in tables}
        return {table: why for table, why in faults.items() if why}

    def table_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """Per table: its three triggers log the columns it has now (ok), else which do not (fail)."""
        bodies = {(table, name): body for name, table, body in conn.exec_driver_sql(sql.TRIGGERS)}
        found = []
        for table in self.keys:
            columns = self._columns(conn, table)
            stale = [op for op in sql.OPS if " ".join(bodies.get((table, sql.trigger_name(table, op)), "").split())
                     != " ".join(sql.as_stored(sql.trigger_body(table, op, columns)).split())]
            found.append(("fail", f"{table}: capture trigger(s) for {', '.join(stale)} missing or made for "
                                  "other columns (table altered?): run `cdc install CONFIG` again")
                         if stale else ("ok", f"{table}: capture triggers installed, matching its columns"))
        return found

    def horizon_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """A transaction open for long keeps the epoch from sealing: doctor names it (warn)."""
        oldest = conn.exec_driver_sql(sql.OLDEST_TRANSACTION).first()
        if oldest is not None and oldest[2] > OLD_TRANSACTION_SECONDS:
            return [("warn", f"transaction {oldest[0]} (connection {oldest[1]}) has run for {oldest[2]:,}s: "
                             "changes logged after it started are applied only once it ends")]
        return [("ok", "no long-running transaction holds capture back")]

    def database_findings(self) -> list[tuple[str, str]]:
        return self.cascade_findings("fail")

    def warnings(self) -> list[tuple[str, str]]:
        """Captured tables whose rows a cascading foreign key changes unseen (warn: shown, status stays 0)."""
        return self.cascade_findings("warn")

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
        """The highest sealed epoch; seals the current one when it has committed changes (or
        ``force``). None when a transaction still open kept it from sealing in time."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            current = conn.exec_driver_sql(sql.CURRENT_EPOCH).scalar()
            conn.rollback()
            if not force and conn.exec_driver_sql(sql.LOGGED_SINCE, {"e": current}).first() is None:
                return current - 1  # nothing logged since the last seal: no need to wait for anyone
            conn.rollback()
            deadline = time.monotonic() + self._patience
            while True:
                in_line = time.monotonic() >= deadline
                try:
                    if not in_line:
                        conn.exec_driver_sql(sql.LOCK_EPOCH_NOWAIT)
                    else:  # in line now, briefly: writers that come meanwhile wait behind us
                        conn.exec_driver_sql(sql.SHORT_LOCK_WAIT)
                        conn.exec_driver_sql(sql.LOCK_EPOCH)
                    sealed = conn.exec_driver_sql(sql.CURRENT_EPOCH).scalar()
                    conn.exec_driver_sql(sql.NEXT_EPOCH)
                    conn.commit()
                    if in_line:
                        self._patience = max(SEAL_PATIENCE, self._patience / 2)
                    return sealed
                except sa.exc.OperationalError as exc:
                    conn.rollback()
                    if error_code(exc) not in (1205, 1213, 3572):  # lock wait timeout/deadlock/NOWAIT refused
                        raise
                    if in_line:
                        if error_code(exc) == 1205:  # a long transaction: ask longer before queueing
                            self._patience = min(SEAL_PATIENCE_MAX, self._patience * 4)
                        return None
                    time.sleep(0.02)
                finally:
                    if time.monotonic() >= deadline:
                        conn.exec_driver_sql(sql.DEFAULT_LOCK_WAIT)

    def changelog_rows(self, after: Position, max_changes: int) -> Generator[Any, None, Position]:
        """Every sealed epoch after ``after``, whole; ``max_changes`` is only the part size."""
        low = after or 0
        high = self._seal(force=False)
        if high is None or high <= low:
            return low
        params = {"low": low, "high": high, **{f"t{i}": t for i, t in enumerate(self.keys)}}
        with self.engine.connect() as conn:
            yield from conn.execution_options(stream_results=True, yield_per=5000).exec_driver_sql(
                sql.read_rows(len(self.keys)), params)
        return high

    def format_position(self, position: Position) -> str:
        return f"epoch {position}"

    def count_pending(self, conn: sa.Connection, after: Position) -> int:
        return conn.exec_driver_sql(sql.PENDING, {"low": after or 0}).scalar()

    def purge(self, conn: sa.Connection) -> None:
        """Row by primary key: a range delete would wait on the first row past the range if a
        writer still holds it."""
        purgeable = conn.exec_driver_sql(sql.PURGEABLE).scalar() or 0
        while True:
            ids = [r[0] for r in conn.exec_driver_sql(sql.PURGE_IDS, {"e": purgeable})]
            conn.rollback()
            if not ids:
                return
            conn.exec_driver_sql(sql.purge(ids))
            conn.commit()

    # -- images -----------------------------------------------------------------------
    def image_readers(self, table: str) -> dict[str, Callable[[Any], Any]]:
        """A logged text read as PyMySQL would, then as the change model's value; NULL stays None."""
        info = self.describe(table)
        with self.engine.connect() as conn:
            kinds = dict(self._columns(conn, table))
        readers = {}
        for name, column in zip(info.column_names, info.columns):
            text, model = _text_reader(kinds.get(name, "")), self.log_reader(column)
            readers[name] = (lambda v, t=text, m=model: None if v is None else m(t(v)))
        return readers

    def parse_image(self, text: str) -> dict:
        return json.loads(text)

    def committed_at(self, row: Any) -> dt.datetime:
        return row.changed_at.replace(tzinfo=dt.timezone.utc)
