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
import logging
import json
import time
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator

import pymysql.converters
import sqlalchemy as sa

from cdc.changes import Batch, Change, Position, dumps, loads

from .._changelog import kept_note, trigger_fault
from .source import MySQLSource
from .sql import error_code, quote

logger = logging.getLogger(__name__)
CHANGELOG = "_cdc_changelog"
EPOCH = "_cdc_epoch"
CONSUMERS = "_cdc_consumers"
OPS = {"insert": "INSERT", "update": "UPDATE", "delete": "DELETE"}
#: Seconds a read keeps asking to seal without queueing before it waits (up to 1 s) in line; the
#: least, and the most after waits in line that timed out (see above).
SEAL_PATIENCE = 0.25
SEAL_PATIENCE_MAX = 30.0
#: A transaction open longer than this holds capture back noticeably: doctor says so.
OLD_TRANSACTION_SECONDS = 300

CREATE_STATE = [
    f"""CREATE TABLE IF NOT EXISTS {CHANGELOG} (
        id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
        epoch BIGINT NOT NULL,
        tbl VARCHAR(64) NOT NULL,
        op VARCHAR(6) NOT NULL,
        `before` LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
        `after` LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
        changed_at DATETIME(6) NOT NULL,
        KEY {CHANGELOG}_epoch (epoch, id)) ENGINE=InnoDB""",
    f"CREATE TABLE IF NOT EXISTS {EPOCH} (k TINYINT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB",
    f"INSERT IGNORE INTO {EPOCH} (k, n) VALUES (1, 1)",
    f"""CREATE TABLE IF NOT EXISTS {CONSUMERS} (pair VARCHAR(200) PRIMARY KEY, tables TEXT NOT NULL,
        acked BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB""",
]
DROP_STATE = [f"DROP TABLE IF EXISTS {t}" for t in (CHANGELOG, EPOCH, CONSUMERS)]
COLUMNS = ("SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
           "AND TABLE_NAME = %(table)s ORDER BY ORDINAL_POSITION")
TRIGGERS = ("SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE '\\_cdc\\_%%'")
OLDEST_TRANSACTION = ("SELECT trx_id, trx_mysql_thread_id, TIMESTAMPDIFF(SECOND, trx_started, NOW()) "
                      "FROM information_schema.INNODB_TRX ORDER BY trx_started LIMIT 1")

_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_TEXT = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}  # and MariaDB's JSON


def trigger_name(table: str, op: str) -> str:
    return f"_cdc_{op[0]}_{table}"[:64]


def _logged(image: str, name: str, data_type: str) -> str:
    """The SQL logging one column of NEW/OLD as JSON text, independent of the writer's session
    (its time_zone and character set): TIMESTAMP as epoch seconds, binary as hex, text as utf8mb4."""
    value = f"{image}.{quote(name)}"
    if data_type == "timestamp":
        return f"CAST(UNIX_TIMESTAMP({value}) AS CHAR)"
    if data_type in _BINARY:
        return f"HEX({value})"
    if data_type == "bit":
        return f"CAST({value} + 0 AS CHAR)"
    if data_type in _TEXT or data_type == "json":
        return f"CAST({value} AS CHAR CHARACTER SET utf8mb4)"  # JSON too: as its text, never nested
    return f"CAST({value} AS CHAR)"  # numbers exact as text, dates/times ISO-like


def trigger_body(table: str, op: str, columns: list[tuple[str, str]]) -> str:
    def image(which: str) -> str:
        pairs = ", ".join(f"'{name}', {_logged(which, name, kind)}" for name, kind in columns)
        return f"JSON_OBJECT({pairs})"

    before = "NULL" if op == "insert" else image("OLD")
    after = "NULL" if op == "delete" else image("NEW")
    return (f"BEGIN DECLARE cdc_epoch BIGINT; "
            f"SELECT n INTO cdc_epoch FROM {EPOCH} WHERE k = 1 LOCK IN SHARE MODE; "
            f"INSERT INTO {CHANGELOG} (epoch, tbl, op, `before`, `after`, changed_at) VALUES "
            f"(cdc_epoch, '{table}', '{op}', {before}, {after}, UTC_TIMESTAMP(6)); END")


def create_trigger(table: str, op: str, columns: list[tuple[str, str]], replace: bool) -> str:
    return (f"CREATE {'OR REPLACE ' if replace else ''}TRIGGER {quote(trigger_name(table, op))} "
            f"AFTER {OPS[op]} ON {quote(table)} FOR EACH ROW {trigger_body(table, op, columns)}")


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
    if data_type in _BINARY:
        return bytes.fromhex
    return str


def _from_epoch(text: str) -> Any:
    seconds = Decimal(text)
    if not seconds:
        return "0000-00-00 00:00:00"  # the zero TIMESTAMP, as PyMySQL gives it
    micros = int(seconds * 1_000_000)
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)  # naive UTC, as the session reads it


class TriggerSource(MySQLSource):
    """Reads the changelog the capture triggers fill, epoch by sealed epoch."""

    registers_tables = True
    changelog_mark = f"SELECT coalesce(max(id), 0) FROM {CHANGELOG}"
    _patience = SEAL_PATIENCE  # seconds of asking before a seal waits in line (see above)

    # -- install ---------------------------------------------------------------------
    def _columns(self, conn: sa.Connection, table: str) -> list[tuple[str, str]]:
        self.describe(table)  # SchemaError if it is missing
        return [(name, kind.lower()) for name, kind in conn.exec_driver_sql(COLUMNS, {"table": table})]

    def prepare(self, keep: Iterable[str] = ()) -> list[str]:
        removed = []
        with self.engine.connect() as conn:
            kept = self._kept(conn, keep)
            for table in self._no_longer_captured(conn, keep):
                for op in OPS:
                    conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {quote(trigger_name(table, op))}")
                removed.append(f"removed triggers on {table} (no longer in the pair)")
            for statement in CREATE_STATE:
                conn.exec_driver_sql(statement)
            conn.commit()
            mariadb = conn.dialect.is_mariadb
            attached = {name: table for name, table, _ in conn.exec_driver_sql(TRIGGERS)}
            for table in self.keys:
                columns = self._columns(conn, table)
                for op in OPS:  # on a table renamed away (CREATE OR REPLACE would not find it on this one)
                    if attached.get(trigger_name(table, op), table).casefold() != table.casefold():
                        conn.exec_driver_sql(f"DROP TRIGGER {quote(trigger_name(table, op))}")
                if mariadb:  # replaced atomically: no change slips between two triggers
                    for op in OPS:
                        conn.exec_driver_sql(create_trigger(table, op, columns, replace=True))
                else:
                    conn.exec_driver_sql(f"LOCK TABLES {quote(table)} WRITE")
                    try:
                        for op in OPS:
                            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {quote(trigger_name(table, op))}")
                            conn.exec_driver_sql(create_trigger(table, op, columns, replace=False))
                    finally:
                        conn.exec_driver_sql("UNLOCK TABLES")
            conn.exec_driver_sql(f"INSERT INTO {CONSUMERS} (pair, tables) VALUES (%(pair)s, %(tables)s) "
                                 "ON DUPLICATE KEY UPDATE tables = VALUES(tables)",
                                 {"pair": self.pair, "tables": dumps(sorted({*self.keys, *kept}))})
            self._register_generation(conn)
            conn.commit()
        return [f"changelog {CHANGELOG}"] + [f"triggers on {t}" for t in self.keys] + removed + \
            [kept_note(t) for t in kept]

    def generation(self) -> str | None:
        """The identity `cdc install` gave this pair's registration with the changelog."""
        return self._registered_generation()

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """SourceError when the checkpoint's epoch was never sealed here: every position a read
        returns is below the epoch that writers stamp now (a changelog made again starts at 1); or
        when it is before the epochs every pair has acknowledged, which the changelog no longer holds."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            current = conn.exec_driver_sql(f"SELECT n FROM {EPOCH} WHERE k = 1").scalar()
        self._position_ahead(position, current - 1, "the last epoch the source's changelog sealed")
        self._position_behind(position or 0, self._purged_through(),
                              "the epochs every pair has acknowledged, purged from the changelog")

    def trigger_faults(self, conn: sa.Connection, tables: list[str]) -> dict[str, str]:
        """A table's three triggers must exist and be attached to it: renamed away, a table takes
        them along, and they go on logging changes under the old name."""
        attached = {name: table for name, table, _ in conn.exec_driver_sql(TRIGGERS)}
        faults = {table: trigger_fault(table, [trigger_name(table, op) for op in OPS], attached) for table in tables}
        return {table: why for table, why in faults.items() if why}

    def unprepare(self) -> list[str]:
        removed = []
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(CONSUMERS):
                return []
            mine = set(self.keys) | self._registered(conn).get(self.pair, set())  # tables removed from it too
            conn.exec_driver_sql(f"DELETE FROM {CONSUMERS} WHERE pair = %(pair)s", {"pair": self.pair})
            conn.commit()
            still = {t for (tables,) in conn.exec_driver_sql(f"SELECT tables FROM {CONSUMERS}") for t in loads(tables)}
            for table in sorted(mine - still):
                for op in OPS:
                    conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {quote(trigger_name(table, op))}")
                removed.append(f"triggers on {table}")
            if not still:
                for statement in DROP_STATE:
                    conn.exec_driver_sql(statement)
                removed.append(f"changelog {CHANGELOG}")
            conn.commit()
        return removed

    def diagnose(self) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            shared = self._changelog_findings(conn, CHANGELOG)
            if shared[0][0] == "fail":
                return shared
            bodies = {(table, name): body for name, table, body in conn.exec_driver_sql(TRIGGERS)}
            found = []
            for table in self.keys:
                columns = self._columns(conn, table)
                stale = [op for op in OPS if " ".join(bodies.get((table, trigger_name(table, op)), "").split())
                         != " ".join(trigger_body(table, op, columns).split())]
                found.append(("fail", f"{table}: capture trigger(s) for {', '.join(stale)} missing or made for "
                                      "other columns (table altered?): run `cdc install CONFIG` again")
                             if stale else ("ok", f"{table}: capture triggers installed, matching its columns"))
            found += shared
            oldest = conn.exec_driver_sql(OLDEST_TRANSACTION).first()
        if oldest is not None and oldest[2] > OLD_TRANSACTION_SECONDS:
            found.append(("warn", f"transaction {oldest[0]} (connection {oldest[1]}) has run for {oldest[2]:,}s: "
                                  "changes logged after it started are applied only once it ends"))
        else:
            found.append(("ok", "no long-running transaction holds capture back"))
        return found + self.cascade_findings("fail")

    def warnings(self) -> list[tuple[str, str]]:
        """Captured tables whose rows a cascading foreign key changes unseen (warn: shown, status stays 0)."""
        return self.cascade_findings("warn")

    # -- epochs -----------------------------------------------------------------------
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
            current = conn.exec_driver_sql(f"SELECT n FROM {EPOCH} WHERE k = 1").scalar()
            conn.rollback()
            if not force and conn.exec_driver_sql(
                    f"SELECT 1 FROM {CHANGELOG} WHERE epoch >= %(e)s LIMIT 1", {"e": current}).first() is None:
                return current - 1  # nothing logged since the last seal: no need to wait for anyone
            conn.rollback()
            deadline = time.monotonic() + self._patience
            while True:
                in_line = time.monotonic() >= deadline
                try:
                    if not in_line:
                        conn.exec_driver_sql(f"SELECT n FROM {EPOCH} WHERE k = 1 FOR UPDATE NOWAIT")
                    else:  # in line now, briefly: writers that come meanwhile wait behind us
                        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
                        conn.exec_driver_sql(f"SELECT n FROM {EPOCH} WHERE k = 1 FOR UPDATE")
                    sealed = conn.exec_driver_sql(f"SELECT n FROM {EPOCH} WHERE k = 1").scalar()
                    conn.exec_driver_sql(f"UPDATE {EPOCH} SET n = n + 1 WHERE k = 1")
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
                        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = DEFAULT")

    # -- stream -----------------------------------------------------------------------
    def read(self, after: Position, max_changes: int) -> Batch:
        parts = list(self.stream(after, max_changes))
        return Batch([c for p in parts for c in p.changes], parts[-1].position)

    def stream(self, after: Position, max_changes: int) -> Iterator[Batch]:
        """Every sealed epoch after ``after``, whole; ``max_changes`` is only the part size."""
        low = after or 0
        high = self._seal(force=False)
        if high is None or high <= low:
            yield Batch([], low)
            return
        tables = ", ".join(f"%(t{i})s" for i in range(len(self.keys)))
        params = {"low": low, "high": high, **{f"t{i}": t for i, t in enumerate(self.keys)}}
        with self.engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=5000).exec_driver_sql(
                f"SELECT id, epoch, tbl, op, `before`, `after`, changed_at FROM {CHANGELOG} "
                f"WHERE epoch > %(low)s AND epoch <= %(high)s AND tbl IN ({tables}) ORDER BY epoch, id", params)
            part: list[Change] = []
            for row in rows:
                part.append(self._change(row))
                if len(part) >= max_changes:
                    yield Batch(part, None, complete=False)
                    part = []
        yield Batch(part, high)

    def _change(self, row: Any) -> Change:
        readers = self._text_readers(row.tbl)
        images = []
        for text in (row.before, row.after):
            if text is None:
                images.append(None)
                continue
            image = json.loads(text)
            for name, value in image.items():
                if value is not None and name in readers:
                    image[name] = readers[name](value)
            images.append(image)
        before, after = images
        image = after if after is not None else before
        key = tuple(image[k] for k in self.keys[row.tbl])
        committed = row.changed_at.replace(tzinfo=dt.timezone.utc)
        return Change(row.op, row.tbl, key, before, after, committed, row.id, row.epoch)

    def _text_readers(self, table: str) -> dict[str, Callable[[str], Any]]:
        cache = self.__dict__.setdefault("_log_readers", {})
        if table not in cache:
            info = self.describe(table)
            with self.engine.connect() as conn:
                kinds = dict(self._columns(conn, table))
            readers = {}
            for name, column in zip(info.column_names, info.columns):
                text, model = _text_reader(kinds.get(name, "")), self.log_reader(column)
                readers[name] = (lambda v, t=text, m=model: m(t(v)))
            cache[table] = readers
        return cache[table]

    def pending(self, after: Position) -> int | None:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(CHANGELOG):
                return None
            return conn.exec_driver_sql(f"SELECT count(*) FROM {CHANGELOG} WHERE epoch > %(low)s",
                                        {"low": after or 0}).scalar()

    def format_position(self, position: Position) -> str:
        return f"epoch {position}"

    def acknowledge(self, position: Position) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f"UPDATE {CONSUMERS} SET acked = GREATEST(acked, %(p)s) WHERE pair = %(pair)s",
                                 {"p": position or 0, "pair": self.pair})
            conn.commit()
            # Purge only what every pair reading this changelog has applied, row by primary key: a
            # range delete would wait on the first row past the range if a writer still holds it.
            purgeable = conn.exec_driver_sql(f"SELECT min(acked) FROM {CONSUMERS}").scalar() or 0
            while True:
                ids = [r[0] for r in conn.exec_driver_sql(
                    f"SELECT id FROM {CHANGELOG} WHERE epoch <= %(e)s ORDER BY epoch, id LIMIT 5000",
                    {"e": purgeable})]
                conn.rollback()
                if not ids:
                    return
                conn.exec_driver_sql(f"DELETE FROM {CHANGELOG} WHERE id IN ({', '.join(map(str, ids))})")
                conn.commit()
