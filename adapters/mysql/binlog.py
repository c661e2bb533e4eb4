"""MySQL/MariaDB as a source: capture `binlog` (mysql-replication) and `timestamp`.

Position: {"file": binlog file, "pos": the position after the last applied transaction's
commit event}. One replica connection, kept open across reads (_live_binlog.py), reads from
there and groups row events by transaction (commit = XID event, or a COMMIT query for
non-transactional tables).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import struct
import time
import zlib
from typing import Any, Iterable, Iterator

import sqlalchemy as sa
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import NONE_SOURCE
from pymysqlreplication.event import (GtidEvent, HeartbeatLogEvent, MariadbGtidEvent, QueryEvent, RotateEvent,
                                      XidEvent)
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from cdc.changes import Batch, Change, Position
from cdc.errors import SchemaError, SourceError

from .._timestamp import TimestampCapture
from .._sql import SqlSource
from . import rows, sql, statements, types
from ._live_binlog import _INHERITED, HEARTBEAT_SECONDS, LiveBinlog, binlog_order

logger = logging.getLogger(__name__)
UTC = dt.timezone.utc
#: What binlog capture needs, variable -> value (binlog_row_metadata: column names in the log).
REQUIRED = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL"}
#: What mysql-replication's None means when it is not NULL: a zero date (kept as the text the
#: driver gives, which date columns refuse by name) or an empty SET.
NOT_NULL = {NONE_SOURCE.OUT_OF_DATETIME_RANGE: "0000-00-00 00:00:00",
            NONE_SOURCE.OUT_OF_DATETIME2_RANGE: "0000-00-00 00:00:00", NONE_SOURCE.OUT_OF_DATE_RANGE: "0000-00-00",
            NONE_SOURCE.EMPTY_SET: ""}


class MySQLSource(SqlSource):
    """What every MySQL/MariaDB capture mode shares: JSON columns, zones, session settings."""

    def __init__(self, engine: sa.Engine, pair: str, source_zone: str = "UTC"):
        super().__init__(engine, pair)
        self.source_zone = source_zone

    def reflected(self, table: sa.Table) -> None:
        with self.engine.connect() as conn:
            sql.mark_json_columns(conn, table)

    #: DATE/DATETIME/TIMESTAMP columns may hold '0000-00-00' (sql_mode allowing): always fit-checked.
    zero_dates = True
    #: Snapshot chunks can go to a PostgreSQL target as COPY text made by the server (copy_out).
    copy_target, copy_format = "postgresql", "text"

    def copy_compatible(self, table: str, target_types: dict[str, str | None]) -> bool:
        """Whether every column can go as COPY text into these target types (format_type) with
        the values the row path would write, and the key is integers (chunks ordered alike on
        both sides: no text collation involved)."""
        with self.engine.connect() as conn:
            facts = {r[0]: tuple(r[1:]) for r in conn.exec_driver_sql(sql.COPY_COLUMNS, {"table": table})}
        if any(facts.get(k, ("",))[0] not in sql.INTEGERS for k in self.keys.get(table, ())):
            return False
        expressions = self._copy_expressions(facts, target_types)
        return expressions is not None

    def _copy_expressions(self, facts: dict, target_types: dict[str, str | None]) -> list[str] | None:
        found = []
        for name, target_type in target_types.items():
            if name not in facts or target_type is None:
                return None
            expression = sql.copy_text_expression(name, facts[name], target_type, self.source_zone == "UTC")
            if expression is None:
                return None
            found.append(expression)
        return found

    def copy_out(self, table: str, columns: list[str], key: tuple[str, ...], after_key: tuple | None, limit: int,
                 write, target_types: dict[str, str | None] | None = None) -> None:
        """One keyed chunk as PostgreSQL COPY text, each line made by the server: PyMySQL decodes one
        string per row instead of a value per column."""
        cache = self.__dict__.setdefault("_copy_sql", {})
        if table not in cache:
            with self.engine.connect() as conn:
                facts = {r[0]: tuple(r[1:]) for r in conn.exec_driver_sql(sql.COPY_COLUMNS, {"table": table})}
            cache[table] = self._copy_expressions(facts, target_types or {})
        query = sql.copy_text_query(table, cache[table], key, after_key is not None, limit)
        with self.reading() as conn:
            rows = conn.execution_options(stream_results=True).exec_driver_sql(
                query, tuple(after_key) if after_key is not None else ())
            lines: list[str] = []
            for (line,) in rows:
                lines.append(line)
                if len(lines) >= 2000:
                    write("\n".join(lines) + "\n")
                    lines = []
            if lines:
                write("\n".join(lines) + "\n")

    def cascade_findings(self, level: str) -> list[tuple[str, str]]:
        """One finding at ``level`` per foreign key of a captured table whose ON DELETE/ON UPDATE
        CASCADE or SET NULL/DEFAULT changes its rows: InnoDB makes those changes itself, writing no
        row events to the binlog and firing no triggers, so neither binlog nor trigger capture sees them."""
        with self.engine.connect() as conn:
            found = conn.exec_driver_sql(sql.CASCADING_FOREIGN_KEYS).all()
        captured = {t.lower(): t for t in self.keys}
        return [(level, f"{captured[child.lower()]}: foreign key {name} (to {parent}) has "
                        f"{' and '.join(_cascading_rules(on_delete, on_update))}: the child rows the database changes "
                        "by it are not captured (InnoDB writes no binlog row events and fires no triggers for them), "
                        "so the target keeps them as they were. Make the foreign key RESTRICT or NO ACTION and delete "
                        "or update the child rows explicitly, or run `cdc reconcile CONFIG --table "
                        f"{captured[child.lower()]} --repair` after each cascade")
                for child, name, parent, on_delete, on_update in found if child.lower() in captured]

    def reader(self, column: sa.Column):
        """For values the driver read: its DATETIME/TIMESTAMP are already aware (sql.engine)."""
        if isinstance(column.type, sa.DateTime):
            return types.same
        return types.reader(column, self.source_zone)

    def log_reader(self, column: sa.Column):
        """For values decoded from the binlog or a changelog: naive DATETIME/TIMESTAMP get their zone."""
        return types.reader(column, self.source_zone)


def _cascading_rules(on_delete: str, on_update: str) -> list[str]:
    return [f"ON {event} {rule}" for event, rule in (("DELETE", on_delete), ("UPDATE", on_update))
            if rule in sql.CASCADING_RULES]


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
            found = dict(conn.exec_driver_sql(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', 'binlog_row_image', "
                "'binlog_row_metadata')").all())
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
            grants = " ".join(r[0] for r in conn.exec_driver_sql("SHOW GRANTS"))
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
            row = conn.exec_driver_sql("SHOW MASTER STATUS").first()
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
            conn.exec_driver_sql("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            status = dict(conn.exec_driver_sql("SHOW STATUS LIKE 'binlog_snapshot_%%'").all())
            if status.get("binlog_snapshot_file"):
                position = {"file": status["binlog_snapshot_file"], "pos": int(status["binlog_snapshot_position"])}
            else:
                conn.rollback()
                conn.exec_driver_sql("FLUSH TABLES WITH READ LOCK")
                try:
                    conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                    row = conn.exec_driver_sql("SHOW MASTER STATUS").first()
                finally:
                    conn.exec_driver_sql("UNLOCK TABLES")
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
            files = [r[0] for r in conn.exec_driver_sql("SHOW BINARY LOGS")]
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
            found = dict(conn.exec_driver_sql(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('server_uuid', 'server_id')").all())
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
            found = conn.exec_driver_sql("SELECT BINLOG_GTID_POS(%(file)s, %(pos)s)",
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
                row = conn.exec_driver_sql(f"SHOW BINLOG EVENTS IN %(file)s FROM {int(position['pos'])} LIMIT 1",
                                           {"file": position["file"]}).first()
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
            live = self._live = LiveBinlog(self._binlog_reader, lambda: _Transactions(self, max_changes), after,
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


class _Transactions:
    """Groups row events into transactions, in parts of at most ``size`` changes; ``done`` once
    ``size`` changes have been read in whole transactions."""

    def __init__(self, source: BinlogSource, size: int):
        self.source, self.size = source, size
        self.pending: list[Change] = []
        self.total, self.partial, self.done = 0, False, False
        self.gtid: str | None = None
        self.xa: str | None = None  # the XA id when the transaction being read is an XA one
        self.moved: dict | None = None  # the end of the last transactions that had none of our rows

    def feed(self, event: Any, reader: BinLogStreamReader) -> Iterator[Batch]:
        if isinstance(event, (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)):
            yield from self._rows(event, reader)
        elif isinstance(event, XidEvent) or (isinstance(event, QueryEvent) and _query(event) == "COMMIT"):
            yield from self._commit(reader)
        elif isinstance(event, (MariadbGtidEvent, GtidEvent)):
            self.gtid, self.xa = str(event.gtid), _mariadb_xa(event)
        elif isinstance(event, QueryEvent):
            self._query(event)

    def _rows(self, event: Any, reader: BinLogStreamReader) -> Iterator[Batch]:
        if self.xa is not None:
            self._refuse_xa(event.table)
        committed = dt.datetime.fromtimestamp(event.timestamp, UTC)
        position = {"file": reader.log_file, "pos": reader.log_pos}
        op = _OPS[type(event)]
        for before, after in _images(event, op):
            self.pending.append(self.source.change(event.table, op, before, after, committed, position, self.gtid))
            if len(self.pending) >= self.size:
                part, self.pending = self.pending, []
                self.total += len(part)
                self.partial = True
                yield Batch(part, None, complete=False)

    def _commit(self, reader: BinLogStreamReader) -> Iterator[Batch]:
        position = {"file": reader.log_file, "pos": reader.log_pos}
        if self.gtid is not None:  # lets check_position tell this binlog from one reset and rewritten
            position["gtid"] = self.gtid
        part, self.pending, self.gtid = self.pending, [], None
        if not part and not self.partial:
            self.moved = position
            return
        self.total += len(part)
        self.partial, self.moved = False, None
        yield Batch(part, position)
        self.done = self.total >= self.size

    def _query(self, event: QueryEvent) -> None:
        text = _query(event)
        if text.startswith(("XA START", "XA BEGIN")):  # MySQL logs it; MariaDB flags the GTID event
            self.xa = statements.xa_id(_text(event)) or f"(GTID {self.gtid})"
            return
        if text.startswith(("ALTER TABLE", "DROP TABLE", "RENAME TABLE", "TRUNCATE")):
            # Drop the cached reflection: the next row event is checked against the new shape.
            self.source.__dict__.pop("_info", None)
            self.source.__dict__.pop("_table_readers", None)
        schema = event.schema.decode(errors="replace") if isinstance(event.schema, bytes) else str(event.schema or "")
        database = (self.source.engine.url.database or "").lower()
        if schema.lower() != database and not self._may_name_ours(text):
            return
        found = statements.effect(_text(event), schema)
        if found is None:
            return
        touched = self._captured(found.tables)
        if touched:
            self._refuse(found.action, touched[0], _text(event))
        if found.action in DML:  # through a view, or a table whose triggers write captured tables
            ours = [n.table for n in found.tables if n.database.lower() == database]
            reaching = self._may_reach_captured(ours)
            if reaching:
                self._refuse(found.action, reaching[0], _text(event), indirect=True)

    def _may_name_ours(self, text: str) -> bool:
        """Whether the (upper-cased) statement has a captured table's or the database's name in it at
        all: most statements in a busy binlog are other databases', and need no reading."""
        names = [*self.source.keys, self.source.engine.url.database or ""]
        return any(n and (n.upper() in text or n.replace("`", "``").upper() in text) for n in names)

    def _may_reach_captured(self, tables: list[str]) -> list[str]:
        """The ones of ``tables`` (of the pair's database, not captured) that are views or have
        triggers: a write to them may change captured tables, which no row event then shows. Read
        from the schema as it is now (statement-logged writes are rare: this runs only for them)."""
        if not tables:
            return []
        with self.source.engine.connect() as conn:
            found = conn.execute(sa.text(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                "AND TABLE_TYPE = 'VIEW' AND TABLE_NAME IN :names UNION SELECT EVENT_OBJECT_TABLE FROM "
                "information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE IN :names"
            ).bindparams(sa.bindparam("names", expanding=True)), {"names": tables}).scalars().all()
        lowered = {f.lower() for f in found}
        return [t for t in tables if t.lower() in lowered]

    def _captured(self, names: list[statements.Name]) -> list[str]:
        """The pair's tables among ``names`` (a database's "*": all of them), in the pair's spelling."""
        database = (self.source.engine.url.database or "").lower()
        ours = {t.lower(): t for t in self.source.keys}
        return [t for n in names if n.database.lower() == database
                for t in (list(ours.values()) if n.table == "*" else [ours.get(n.table.lower())]) if t]

    def _refuse(self, action: str, table: str, text: str, indirect: bool = False) -> None:
        """Stop on a statement that changed a captured table's rows without row events (``indirect``:
        a statement-logged write in the pair's database to a table it does not capture, which as a view
        or through triggers may change captured tables: nothing tells which rows)."""
        pair, shown = self.source.pair, " ".join(text.split())[:120]
        again = ("copy the tables again with `cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed "
                 "by `cdc reconcile CONFIG --repair`)")
        what = f"{table}, a view or a table with triggers in the pair's database (it may change captured tables)" \
            if indirect else f"captured table {table}"
        if action in DML:
            raise SourceError(
                f"pair {pair}: {action} of {what} was written to the binlog as a statement "
                f"({shown}), not as rows (a session with binlog_format STATEMENT or MIXED), so binlog capture cannot "
                f"apply it: the pair stops before it. Keep binlog_format=ROW in every session that writes captured "
                f"tables, then {again}")
        raise SourceError(
            f"pair {pair}: {action} at the source of captured table {table} ({shown}) is not replicated by binlog "
            f"capture (its rows change without row events): the pair stops before it. Once the table is as it "
            f"should be, {again}")

    def _refuse_xa(self, table: str) -> None:
        raise SourceError(
            f"pair {self.source.pair}: XA transaction {self.xa} (GTID {self.gtid}) changes captured table {table}: "
            "binlog capture does not support XA transactions (their rows are logged at XA PREPARE, before the "
            "transaction commits or rolls back); the pair stops before applying any of it. Use ordinary "
            "transactions for captured tables; once this one has ended (XA COMMIT or XA ROLLBACK; `XA RECOVER` "
            "lists those still prepared), copy the tables again with `cdc run --resnapshot CONFIG` (rows deleted "
            "meanwhile are then removed by `cdc reconcile CONFIG --repair`)")


_OPS = {WriteRowsEvent: "insert", UpdateRowsEvent: "update", DeleteRowsEvent: "delete"}
#: Events that may follow the end of a transaction: the next one's start, or a file's end.
_TRANSACTION_STARTS = {"Gtid", "Anonymous_Gtid", "Query", "Rotate", "Stop", "Binlog_checkpoint", "Gtid_list",
                       "Previous_gtids", "Format_desc"}


def _binlog_number(name: str) -> int:
    """The sequence number of a binlog file (binlog.000042 -> 42)."""
    suffix = name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def _images(event: Any, op: str) -> Iterator[tuple[dict | None, dict | None]]:
    """(before, after) of each row: the fast decoder where it handles every column type, else
    mysql-replication's own decoding (whose None for a zero date or an empty SET is undone)."""
    decoder = rows.decoder_for(event.table_map[event.table_id])
    if decoder is not None and event.event_type not in _PARTIAL:
        yield from rows.decode(event, decoder)
        return
    for row in event.rows:
        if op == "update":
            yield (_not_null(row["before_values"], row.get("before_none_sources")),
                   _not_null(row["after_values"], row.get("after_none_sources")))
        else:
            image = _not_null(row["values"], row.get("none_sources"))
            yield (None, image) if op == "insert" else (image, None)


def _not_null(image: dict, none: dict | None) -> dict:
    if not none:
        return image
    return {c: NOT_NULL.get(none.get(c), v) if v is None else v for c, v in image.items()}


_PARTIAL = {39}  # MySQL 8's PARTIAL_UPDATE_ROWS_EVENT (binary JSON diffs): the library decodes those


#: Statements that change rows: logged as statements, their rows are not in the binlog.
DML = ("INSERT", "REPLACE", "UPDATE", "DELETE")


def _query(event: QueryEvent) -> str:
    return _text(event).upper()


def _text(event: QueryEvent) -> str:
    query = event.query
    return (query.decode(errors="replace") if isinstance(query, bytes) else str(query)).strip()


#: MariaDB's GTID event flags: the group is an XA transaction's prepared part; a commit id follows the flags.
_FL_PREPARED_XA, _FL_GROUP_COMMIT_ID = 64, 2


def _mariadb_xa(event: Any) -> str | None:
    """The XA id of a MariaDB GTID event that starts an XA transaction's prepared part (XA START ...
    XA PREPARE), else None. mysql-replication reads the flags only; the XID follows them in the
    event (commit id if flagged, then format id, gtrid length, bqual length, gtrid, bqual)."""
    if not isinstance(event, MariadbGtidEvent) or not event.flags & _FL_PREPARED_XA:
        return None
    try:
        if event.flags & _FL_GROUP_COMMIT_ID:
            event.packet.read(8)
        format_id, gtrid_length, bqual_length = struct.unpack("<IBB", event.packet.read(6))
        return statements.xa_text(format_id, event.packet.read(gtrid_length), event.packet.read(bqual_length))
    except (struct.error, ValueError):
        return f"(GTID {event.gtid})"


class TimestampSource(TimestampCapture, MySQLSource):
    """Capture `timestamp` on MySQL/MariaDB."""

    def __init__(self, engine: sa.Engine, pair: str, options: Any, source_zone: str = "UTC"):
        TimestampCapture.__init__(self, engine, pair, options, source_zone)

    def source_clock(self, conn: sa.Connection) -> dt.datetime:
        """The server's clock as epoch seconds: NOW() is a DATETIME, which the driver reads in source_timezone."""
        seconds = conn.exec_driver_sql("SELECT UNIX_TIMESTAMP(NOW(6))").scalar()
        return dt.datetime.fromtimestamp(float(seconds), UTC)

    def wall_clock(self, column: sa.Column) -> bool:
        """DATETIME and DATE hold wall-clock time; TIMESTAMP an instant (read as UTC)."""
        return not types.is_timestamp(column) and super().wall_clock(column)

    def bind_stamp(self, measure: float, column: sa.Column) -> Any:
        """Always naive: TIMESTAMP as UTC (every session runs with time_zone '+00:00', so the server
        compares it as that instant), DATETIME and DATE as wall-clock time."""
        return dt.datetime.fromtimestamp(measure, UTC).replace(tzinfo=None)
