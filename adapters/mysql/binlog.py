"""MySQL/MariaDB as a source: capture `binlog` (mysql-replication).

Position: {"file": binlog file, "pos": the position after the last applied transaction's
commit event}. One replica connection, kept open across reads (_live_binlog.py), reads from
there; _transactions.py groups row events by transaction (commit = XID event, or a COMMIT
query for non-transactional tables).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import time
import zlib
from typing import Any, Iterable, Iterator

import sqlalchemy as sa
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (GtidEvent, HeartbeatLogEvent, MariadbGtidEvent, QueryEvent, RotateEvent,
                                      XidEvent)
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from cdc.changes import Batch, Change, Position
from cdc.errors import SchemaError, SourceError

from . import sql, types
from ._live_binlog import _INHERITED, HEARTBEAT_SECONDS, LiveBinlog, binlog_order
from ._transactions import Transactions
from .source import MySQLSource

logger = logging.getLogger(__name__)
#: What binlog capture needs, variable -> value (binlog_row_metadata: column names in the log).
REQUIRED = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL"}


class BinlogSource(MySQLSource):
    """Reads committed transactions of the pair's tables from the binary log."""

    # -- install / doctor --------------------------------------------------------------
    def prepare(self, keep: Iterable[str] = ()) -> list[str]:
        failures = [text for level, text in self._settings() if level == "fail"]
        if failures:
            raise SourceError("; ".join(failures))
        return [f"binlog capture checked: {', '.join(f'{k}={v}' for k, v in REQUIRED.items())} "
                f"(nothing to install on the server)"]

    def unprepare(self) -> list[str]:
        return []

    def _settings(self) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            found = dict(conn.exec_driver_sql(sql.BINLOG_SETTINGS).all())
        findings = []
        for name, wanted in REQUIRED.items():
            have = found.get(name)
            if have is None and name == "binlog_row_metadata":
                findings.append(("fail", "binlog_row_metadata is unknown to this server (MariaDB >= 10.5 or MySQL "
                                         ">= 8.0 needed): the binlog does not carry column names"))
            elif (have or "").upper() != wanted:
                fix = "log_bin (e.g. log-bin=mysql-bin in [mysqld])" if name == "log_bin" else f"{name}={wanted}"
                findings.append(("fail", f"{name} = {have or 'unset'}: binlog capture needs {wanted}; set {fix} in "
                                         "the server's configuration and restart it"))
            else:
                findings.append(("ok", f"{name} = {have}"))
        return findings

    def diagnose(self) -> list[tuple[str, str]]:
        found = self._settings()
        with self.engine.connect() as conn:
            grants = " ".join(r[0] for r in conn.exec_driver_sql(sql.GRANTS))
        upper = grants.upper()
        for privilege in ("REPLICATION SLAVE", "REPLICATION CLIENT"):
            granted = "ALL PRIVILEGES ON *.*" in upper or privilege in upper or \
                (privilege == "REPLICATION CLIENT" and "BINLOG MONITOR" in upper) or \
                (privilege == "REPLICATION SLAVE" and "REPLICATION REPLICA" in upper)
            found.append(("ok", f"the user has {privilege}") if granted else
                         ("fail", f"the user lacks {privilege}: GRANT {privilege} ON *.* TO <user>"))
        for table in self.keys:
            info = self.describe(table)
            found.append(("ok", f"{table}: primary key ({', '.join(info.primary_key)})") if info.primary_key else
                         ("warn", f"{table}: no primary key; its mapping must name a key"))
        return found + self.cascade_findings("fail")

    def warnings(self) -> list[tuple[str, str]]:
        """Captured tables whose rows a cascading foreign key changes unseen (warn: shown, status stays 0)."""
        return self.cascade_findings("warn")

    # -- positions -----------------------------------------------------------------------
    def current_position(self) -> Position:
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(sql.MASTER_STATUS).first()
        if row is None:
            raise SourceError("the binary log is off (SHOW MASTER STATUS is empty): set log_bin and restart the server")
        return {"file": row[0], "pos": int(row[1])}

    def format_position(self, position: Position) -> str:
        return f"{position['file']}:{position['pos']}" if isinstance(position, dict) else str(position)

    def begin_snapshot(self) -> Position:
        """Open the snapshot's transaction and read the binlog position it is consistent with.

        MariaDB reports that position for a consistent-snapshot transaction
        (binlog_snapshot_file/position): no lock at all. MySQL needs FLUSH TABLES WITH READ LOCK
        held for the instant between START TRANSACTION and SHOW MASTER STATUS.
        """
        conn = self.engine.connect()
        try:
            conn.exec_driver_sql(sql.REPEATABLE_READ)
            conn.exec_driver_sql(sql.CONSISTENT_SNAPSHOT)
            status = dict(conn.exec_driver_sql(sql.SNAPSHOT_STATUS).all())
            if status.get("binlog_snapshot_file"):
                position = {"file": status["binlog_snapshot_file"], "pos": int(status["binlog_snapshot_position"])}
            else:
                conn.rollback()
                conn.exec_driver_sql(sql.READ_LOCK)
                try:
                    conn.exec_driver_sql(sql.CONSISTENT_SNAPSHOT)
                    row = conn.exec_driver_sql(sql.MASTER_STATUS).first()
                finally:
                    conn.exec_driver_sql(sql.UNLOCK_TABLES)
                position = {"file": row[0], "pos": int(row[1])}
        except BaseException:
            conn.close()
            raise
        self._held = conn
        return position

    def end_snapshot(self) -> None:
        held, self._held = getattr(self, "_held", None), None
        if held is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                held.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        """The snapshot's own transaction while one is held; else a fresh connection."""
        held = getattr(self, "_held", None)
        if held is not None:
            yield held
            return
        with self.engine.connect() as conn:
            yield conn

    def _check_file(self, position: dict) -> None:
        with self.engine.connect() as conn:
            files = [r[0] for r in conn.exec_driver_sql(sql.BINARY_LOGS)]
        if position["file"] not in files:
            raise SourceError(f"binlog file {position['file']} (the checkpoint of pair {self.pair}) is no longer on "
                              f"the server (purged; the oldest is {files[0] if files else 'none'}): changes since "
                              f"the checkpoint are lost to the log; re-copy the tables with "
                              f"`cdc run --resnapshot CONFIG`")

    # -- generation --------------------------------------------------------------------
    def generation(self) -> str | None:
        """The server the binlog belongs to: MySQL's server_uuid, MariaDB's server_id (a replica
        promoted in its place, whose binlog has other files and positions, has another). Nothing is
        installed on the server, so a RESET MASTER is caught by check_position instead."""
        with self.engine.connect() as conn:
            found = dict(conn.exec_driver_sql(sql.SERVER_IDENTITY).all())
        return found.get("server_uuid") or f"server_id {found.get('server_id')}"

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """SourceError unless the checkpoint is where a transaction ends in the server's binlog now:
        a file that is gone (purged) or not written yet, a position past the end of the binlog or
        inside an event or a transaction (the binlog was reset with RESET MASTER and written again)."""
        if not isinstance(position, dict):
            return
        self._position_ahead(position, self.current_position(), "the end of the server's binlog",
                             order=lambda p: (_binlog_number(p["file"]), int(p["pos"])))
        self._check_file(position)
        event = self._event_at(position)
        if event is not None and event not in _TRANSACTION_STARTS:
            self._not_this_binlog(position, f"a {event} event is there")
        found = self._gtid_at(position)
        if found is not None and position["gtid"] not in found.split(","):
            self._not_this_binlog(position, f"transaction {position['gtid']} ended there, now {found or 'none'}")

    def _not_this_binlog(self, position: dict, why: str) -> None:
        raise SourceError(
            f"pair {self.pair}: the checkpoint ({self.format_position(position)}) is not where it was in the "
            f"server's binlog ({why}): the binlog was reset (RESET MASTER) or the checkpoint was edited, and changes "
            "since are not where the checkpoint says. Copy the tables again with `cdc run --resnapshot CONFIG` "
            "(rows deleted meanwhile are then removed by `cdc reconcile CONFIG --repair`)")

    def _gtid_at(self, position: dict) -> str | None:
        """MariaDB's GTID state at the checkpoint (BINLOG_GTID_POS; '' for none), when the checkpoint
        names the MariaDB GTID of the transaction that ended there; else None (nothing to compare).

        BINLOG_GTID_POS gives NULL when it cannot read the binlog up to the position (an event larger
        than max_allowed_packet before it, among others): that is unknown, not a reset binlog, and
        the file, position and event checks stand alone."""
        if not re.fullmatch(r"\d+-\d+-\d+", str(position.get("gtid", ""))):
            return None
        with self.engine.connect() as conn:
            if not conn.dialect.is_mariadb:
                return None
            found = conn.exec_driver_sql(sql.GTID_STATE_AT,
                                         {"file": position["file"], "pos": int(position["pos"])}).scalar()
        if found is None:
            logger.debug("pair %s: BINLOG_GTID_POS cannot tell the GTID state at %s; not compared", self.pair,
                         self.format_position(position))
        return found

    def _event_at(self, position: dict) -> str | None:
        """The type of the binlog event that starts at ``position`` (None: the end of the binlog);
        'no event' when none starts there."""
        try:
            with self.engine.connect() as conn:
                row = conn.exec_driver_sql(sql.event_at(position["pos"]), {"file": position["file"]}).first()
        except sa.exc.OperationalError as exc:
            if sql.error_code(exc) != 1220:  # "Wrong offset or I/O error"
                raise
            return "no event"
        return None if row is None else str(row[2])

    # -- stream ----------------------------------------------------------------------
    def read(self, after: Position, max_changes: int) -> Batch:
        parts = list(self.stream(after, max_changes))
        complete = [part.position for part in parts if part.complete]
        return Batch([c for part in parts for c in part.changes], complete[-1] if complete else after)

    def stream(self, after: Position, max_changes: int) -> Iterator[Batch]:
        """Whole transactions from ``after`` that the binlog connection has read (see _live_binlog),
        in parts of at most ``max_changes`` changes; transactions with none of ours only move the
        position. A read from where the last one ended goes on on the same connection; from
        anywhere else (a retry, a restart) a new one is opened there."""
        live = self._live
        if live is not None and not live.continues(after, max_changes):
            live.close()
            live = self._live = None
        if live is None:
            self._check_file(after)
            live = self._live = LiveBinlog(self._binlog_reader, lambda: Transactions(self, max_changes), after,
                                           max_changes, self._forked)
        yield from live.read(self.current_position)

    def caught_up(self) -> bool:
        """Whether the binlog connection has read up to the binlog's end as the server says now (a
        run --once wading through other databases' transactions is not done yet)."""
        live = self._live
        reached = live.queue.reached if live is not None else None
        return reached is not None and binlog_order(reached) >= binlog_order(self.current_position())

    def idle(self, seconds: float, stop: Any) -> None:
        """Wait until the binlog connection has read a transaction to return, ``stop`` is set, or
        ``seconds`` have passed."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            live = self._live
            if live is None:
                stop.wait(min(0.2, deadline - time.monotonic()))
            elif live.queue.wait(live.ready, min(0.2, deadline - time.monotonic())):
                return

    def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.close()
        super().close()

    _live: LiveBinlog | None = None

    def _binlog_reader(self, start: dict, connect: Any) -> BinLogStreamReader:
        """A blocking reader from ``start`` (a heartbeat every HEARTBEAT_SECONDS of silence)."""
        return BinLogStreamReader(
            connection_settings={**self._connection_settings(), "read_timeout": 60}, server_id=self._server_id(),
            log_file=start["file"], log_pos=start["pos"], resume_stream=True, blocking=True,
            slave_heartbeat=HEARTBEAT_SECONDS, freeze_schema=True,
            only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent, RotateEvent,
                         MariadbGtidEvent, GtidEvent, HeartbeatLogEvent],
            only_schemas=[self.engine.url.database], only_tables=list(self.keys), enable_logging=False,
            pymysql_wrapper=connect)  # is_mariadb stays False: it would ignore file/position

    def _forked(self) -> None:
        """In the binlog reader process: connections of its own. The pooled ones are the parent's
        (shared sockets): kept referenced, never used or closed here."""
        _INHERITED.append(self.engine)
        self.engine = sql.engine(self.engine.url.render_as_string(hide_password=False), self.source_zone)

    def _connection_settings(self) -> dict:
        url = self.engine.url
        return {"host": url.host or "127.0.0.1", "port": url.port or 3306, "user": url.username or "",
                "passwd": url.password or "", "charset": "utf8mb4"}

    def _server_id(self) -> int:
        """The replica id this pair reads the binlog as: stable per pair, clear of small ids servers use."""
        return 100_000 + zlib.crc32(self.pair.encode()) % 4_000_000_000

    def pending(self, after: Position) -> str | None:
        if not isinstance(after, dict):
            return None
        now = self.current_position()
        if now["file"] == after["file"]:
            return f"{max(now['pos'] - after['pos'], 0):,} bytes of binlog behind"
        return f"binlog at {self.format_position(now)}, checkpoint at {self.format_position(after)}"

    def acknowledge(self, position: Position) -> None:
        """Nothing to release: the server purges binlogs by its own expiry (doctor warns when close)."""

    def change(self, table: str, op: str, before: dict | None, after: dict | None, committed: dt.datetime,
               position: dict, xid: Any) -> Change:
        """One row event's row as a Change, values read as the snapshot reads them."""
        names, converters = self._readers(table)
        images = []
        for image in (before, after):
            if image is not None:
                if image.keys() != names:
                    missing = [c for c in names if c not in image]
                    if missing:
                        raise SchemaError(f"source table {table}: column {missing[0]!r} was dropped or renamed while "
                                          f"pair {self.pair} ran; the pair stops (nothing after it was applied)")
                    image = {c: image[c] for c in names}  # a column added since: not ours to copy
                for name, read in converters:  # the decoded dicts are ours: converted in place
                    image[name] = read(image[name])
            images.append(image)
        before, after = images
        image = after if after is not None else before
        return Change(op, table, tuple([image[k] for k in self.keys[table]]), before, after, committed, position,
                      xid)

    def _readers(self, table: str) -> tuple[frozenset, list]:
        """The table's column names, and the readers of the columns whose values need converting."""
        cache = self.__dict__.setdefault("_table_readers", {})
        if table not in cache:
            info = self.describe(table)
            converters = [(name, self.log_reader(column)) for name, column in zip(info.column_names, info.columns)]
            cache[table] = (frozenset(info.column_names), [(n, r) for n, r in converters if r is not types.same])
        return cache[table]


#: Events that may follow the end of a transaction: the next one's start, or a file's end.
_TRANSACTION_STARTS = {"Gtid", "Anonymous_Gtid", "Query", "Rotate", "Stop", "Binlog_checkpoint", "Gtid_list",
                       "Previous_gtids", "Format_desc"}


def _binlog_number(name: str) -> int:
    """The sequence number of a binlog file (binlog.000042 -> 42)."""
    suffix = name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1
