"""Databases reached through ODBC as sources.

PostgreSQL, MySQL/MariaDB and SQLite keep their own adapter's SQL (one dialect layer per database): a
source here is that adapter's class for the capture mode with ``OdbcReads`` in front, which reads and
binds values as pyodbc gives and takes them. SQL Server, which only ODBC reaches, has its classes here:
capture `timestamp`, `rowversion`, `change_tracking` and `trigger`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import sqlalchemy as sa

from cdc.changes import Batch, Change, Position
from cdc.errors import SourceError

from .._sql import SqlSource
from .._timestamp import TimestampCapture
from . import sql, types

UTC = dt.timezone.utc


class OdbcReads:
    """Values read and bound through pyodbc, per dialect (see types.py); put before a dialect's class."""

    dialect = ""
    source_zone = "UTC"

    def reader(self, column: sa.Column) -> Callable[[Any], Any]:
        return types.reader(self.dialect, column, self.source_zone)

    def log_reader(self, column: sa.Column) -> Callable[[Any], Any]:
        return types.reader(self.dialect, column, self.source_zone)

    def selected(self, info: Any, plain: sa.TableClause) -> list[sa.ColumnElement]:
        return types.selected(self.dialect, info, plain)

    def bind_stamp(self, measure: float, column: sa.Column) -> Any:
        """The dialect's bound stamp, as pyodbc must be given it (UTC wall clock; MySQL as text)."""
        return types.writer(self.dialect, column)(super().bind_stamp(measure, column))

    def _instant(self, table: str, unit: str, value: Any, key: tuple = ()) -> float | None:
        """A stamp of a column that holds instants (timestamptz, MySQL TIMESTAMP) comes from pyodbc without
        its zone, in the session's UTC: read as UTC, never as wall-clock time in source_timezone."""
        if unit == "time" and isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return super()._instant(table, unit, value, key)


def sqlite_timestamp_source() -> type:
    """Capture `timestamp` on SQLite through its ODBC driver (see the class below)."""
    from ..sqlite import sql as sqlite_sql
    from ..sqlite.source import SqliteSource

    class SqliteOdbcTimestampSource(OdbcReads, TimestampCapture, SqliteSource):
        """SQLite keeps date/times as text, which compares as text ('T' sorts after ' ', '+02:00' after
        '+01:00' though earlier). SQLite's own adapter reads each stamp with a Python function registered
        on the connection; through ODBC none can be, so the instant is SQLite's julianday() of the text
        (offsets applied, a stamp without one as UTC; millisecond resolution, the overlap and the row
        hashes take care of equal instants), and a stamp it cannot read stops the pair by key. Zone-less
        stamps in another source_timezone cannot be read so: refused, with the way out."""

        dialect = "sqlite"
        parses_text_stamps = True

        def __init__(self, engine: sa.Engine, pair: str, options: Any, source_zone: str = "UTC"):
            if source_zone != "UTC":
                raise SourceError(f"pair {pair}: SQLite through ODBC reads date/times without an offset as UTC; "
                                  f"source_timezone {source_zone} needs SQLite's own adapter: write the connection "
                                  "as sqlite:///path/to/file.db")
            TimestampCapture.__init__(self, engine, pair, options, source_zone)

        def wall_clock(self, column: sa.Column) -> bool:
            return False  # every stamp an instant (julianday applies the offsets)

        def instant_expression(self, column: sa.ColumnElement, info: sa.Column) -> sa.ColumnElement:
            if self.options.unit:
                return column
            days = sa.func.julianday(column) - sqlite_sql.UNIX_EPOCH_JULIAN_DAY
            return sa.case((sa.func.typeof(column) == "text", days * 86400.0), else_=sa.null())

    return SqliteOdbcTimestampSource


class MssqlSource(OdbcReads, SqlSource):
    """What SQL Server's capture modes share: the server's UTC clock, doctor's checks of the login."""

    dialect = "mssql"

    def __init__(self, engine: sa.Engine, pair: str, source_zone: str = "UTC"):
        SqlSource.__init__(self, engine, pair)
        self.source_zone = source_zone

    def source_clock(self, conn: sa.Connection) -> dt.datetime:
        return conn.exec_driver_sql(f"SELECT {sql.MSSQL_CLOCK}").scalar().replace(tzinfo=UTC)

    def diagnose(self) -> list[tuple[str, str]]:
        """SQL Server's findings every capture mode shares: the login may read each table."""
        found = []
        with self.engine.connect() as conn:
            for table in self.keys:
                if conn.exec_driver_sql(sql.SELECT_PERMISSION, (table,)).scalar() != 1:
                    found.append(("fail", f"{table}: this login may not SELECT it: GRANT SELECT ON {table} TO <login>"))
        return found


class MssqlTimestampSource(TimestampCapture, MssqlSource):
    """Capture `timestamp` on SQL Server: a datetime2 column polled as wall-clock time in source_timezone,
    a datetimeoffset column as instants."""

    def __init__(self, engine: sa.Engine, pair: str, options: Any, source_zone: str = "UTC"):
        TimestampCapture.__init__(self, engine, pair, options, source_zone)

    def wall_clock(self, column: sa.Column) -> bool:
        return not isinstance(column.type, sa.dialects.mssql.DATETIMEOFFSET) and \
            isinstance(column.type, (sa.DateTime, sa.Date))


class RowversionSource(MssqlSource):
    """Capture `rowversion`: each table's rowversion column is a database-wide counter SQL Server raises
    at every insert and update, so rows are read in its order from the last one applied. No clock,
    no overlap. A read stops below MIN_ACTIVE_ROWVERSION(): a row an open transaction wrote (its
    rowversion already issued) is not passed by before it commits. Deletes are not seen (a
    soft-delete column is: ``timestamp.soft_delete``), as with capture `timestamp`.
    Position: {table: last rowversion applied, as an integer}."""

    def __init__(self, engine: sa.Engine, pair: str, options: Any, source_zone: str = "UTC"):
        super().__init__(engine, pair, source_zone)
        self.options = options

    def rowversion_column(self, table: str) -> str:
        """The table's rowversion column; SourceError naming the fix when it has none."""
        for column in self.describe(table).columns:
            if isinstance(column.type, (sa.dialects.mssql.TIMESTAMP, sa.dialects.mssql.ROWVERSION)):
                return str(column.name)
        raise SourceError(f"pair {self.pair}: table {table} has no rowversion column for capture rowversion; "
                          f"add one: ALTER TABLE {table} ADD row_version rowversion")

    def prepare(self, keep=()) -> list[str]:
        for table in self.keys:
            self.rowversion_column(table)
        return []

    def diagnose(self) -> list[tuple[str, str]]:
        found = super().diagnose()
        for table in self.keys:
            try:
                found.append(("ok", f"{table}: rowversion column {self.rowversion_column(table)}"))
            except SourceError as exc:
                found.append(("fail", str(exc)))
        found.append(("info", "capture rowversion does not see deletes: use a soft-delete column, or reconcile"))
        return found

    def unprepare(self) -> list[str]:
        return []

    def current_position(self) -> Position:
        with self.engine.connect() as conn:
            newest = conn.exec_driver_sql(sql.DBTS).scalar()
        return {table: int(newest) for table in self.keys}

    def join_stream(self, position: Position, tables: list[str]) -> Position:
        return {**(position or {}), **{t: v for t, v in self.current_position().items() if t in tables}}

    def read(self, after: Position, max_changes: int) -> Batch:
        position = dict(after or {})
        changes: list[Change] = []
        with self.engine.connect() as conn:
            low = conn.exec_driver_sql(sql.MIN_ACTIVE_ROWVERSION).scalar()
            for table in self.keys:
                found, position[table] = self._poll(conn, table, position.get(table, 0), int(low),
                                                    max_changes - len(changes))
                changes += found
        return Batch(changes, position)

    def _poll(self, conn: sa.Connection, table: str, mark: int, below: int, limit: int) -> tuple[list[Change], int]:
        if limit <= 0:
            return [], mark
        info, key = self.describe(table), self.keys[table]
        column = self.rowversion_column(table)
        names = [n for n in info.column_names if n != column]
        readers = [self.reader(info.columns[info.column_names.index(n)]) for n in names]
        rows = conn.exec_driver_sql(sql.rowversion_read(table, column, info.column_names, limit),
                                    (mark, below)).all()
        changes = []
        soft = getattr(self.options, "soft_delete", None) if self.options else None
        for version, *values in rows:
            row = {n: read(v) for n, read, v in zip(names, readers, values)}
            row_key = tuple(row[k] for k in key)
            deleted = bool(soft and row.get(soft))
            changes.append(Change("delete" if deleted else "update", table, row_key, row if deleted else None,
                                  None if deleted else row, None, {table: int(version)}))
            mark = int(version)
        return changes, mark

    def pending(self, after: Position) -> int | None:
        return None

    def acknowledge(self, position: Position) -> None:
        """Nothing to release: the rows are the log."""


def cut(upto: int, versions: dict[str, list[int]], limit: int) -> int:
    """The version a Change Tracking read ends at: ``upto``, or lower where a table's read stopped at
    ``limit`` rows (``versions``: each table's versions read, in order), at the last version that table
    reached, which the caller then reads whole (every change up to the cut is in the read)."""
    return min([upto, *(found[-1] for found in versions.values() if len(found) >= limit)])


class ChangeTrackingSource(MssqlSource):
    """Capture `change_tracking`: SQL Server Change Tracking (`cdc install` enables it per table; the
    database must have it on, see doctor). CHANGETABLE(CHANGES t, v) gives each row changed since
    version v once, with its last operation; the row's current values are joined in. A version older
    than CHANGE_TRACKING_MIN_VALID_VERSION has been cleaned up: the pair stops, saying to re-snapshot.
    Position: {"version": the last version read completely}."""

    def prepare(self, keep=()) -> list[str]:
        made = []
        with self.engine.begin() as conn:
            tracked = {r[0] for r in conn.exec_driver_sql(sql.CT_TABLES)}
            for table in self.keys:
                if table not in tracked:
                    conn.exec_driver_sql(sql.enable_change_tracking(table))
                    made.append(f"change tracking on {table}")
        return made

    def unprepare(self) -> list[str]:
        return []

    def diagnose(self) -> list[tuple[str, str]]:
        """Change Tracking on for the database (with its retention) and for each table, and the login's
        VIEW CHANGE TRACKING permission on each."""
        found = super().diagnose()
        with self.engine.connect() as conn:
            database = conn.exec_driver_sql(sql.CT_DATABASE).first()
            if database is None:
                return found + [("fail", "Change Tracking is off for the source database: ALTER DATABASE <db> SET "
                                         "CHANGE_TRACKING = ON (CHANGE_RETENTION = 7 DAYS, AUTO_CLEANUP = ON)")]
            period, units, cleanup = database
            found.append(("ok", f"Change Tracking on, changes kept {period} {str(units).lower()}"
                                f"{'' if cleanup else ' (auto cleanup off: the change tables grow)'}; a pair stopped "
                                "longer than that must be copied again"))
            tracked = {r[0] for r in conn.exec_driver_sql(sql.CT_TABLES)}
            for table in self.keys:
                if table not in tracked:
                    found.append(("fail", f"{table}: not tracked: run `cdc install CONFIG` (ALTER TABLE {table} "
                                          "ENABLE CHANGE_TRACKING)"))
                elif conn.exec_driver_sql(sql.CT_PERMISSION, (table,)).scalar() != 1:
                    found.append(("fail", f"{table}: this login lacks VIEW CHANGE TRACKING: GRANT VIEW CHANGE "
                                          f"TRACKING ON {table} TO <login>"))
                else:
                    found.append(("ok", f"{table}: tracked, readable by this login"))
        return found

    def current_position(self) -> Position:
        with self.engine.connect() as conn:
            version = conn.exec_driver_sql(sql.CT_CURRENT).scalar()
        if version is None:
            raise SourceError(f"pair {self.pair}: Change Tracking is not enabled on the source database: "
                              "ALTER DATABASE <db> SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 7 DAYS, "
                              "AUTO_CLEANUP = ON), then `cdc install CONFIG`")
        return {"version": int(version)}

    def join_stream(self, position: Position, tables: list[str]) -> Position:
        return position

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        version = (position or {}).get("version")
        if version is None:
            return
        with self.engine.connect() as conn:
            for table in self.keys:
                oldest = conn.exec_driver_sql(sql.CT_MIN_VALID, (table,)).scalar()
                if oldest is None:
                    raise SourceError(f"pair {self.pair}: table {table} is not tracked by Change Tracking: run "
                                      "`cdc install CONFIG`")
                if int(version) < int(oldest):
                    raise SourceError(
                        f"pair {self.pair}: table {table}: the checkpoint's Change Tracking version {version} is "
                        f"older than the oldest the database still keeps ({oldest}): the changes in between "
                        "were cleaned up and would be skipped. Copy the tables again with `cdc run --resnapshot "
                        "CONFIG`, and raise CHANGE_RETENTION so it does not happen again")

    def read(self, after: Position, max_changes: int) -> Batch:
        """The changes after the position's version, about ``max_changes`` of them: each table's first
        ``max_changes`` in version order, cut at the lowest version any table had to stop at (see ``cut``);
        the rows of that very version read whole, so a read always moves on."""
        since = int((after or {})["version"])
        self.check_position(after)
        with self.engine.connect() as conn:
            upto = int(conn.exec_driver_sql(sql.CT_CURRENT).scalar())
            read = {table: self._rows(conn, table, since, upto, max_changes) for table in self.keys}
            upto = cut(upto, {table: [int(row[0]) for row in rows] for table, rows in read.items()}, max_changes)
            changes = []
            for table, rows in read.items():
                if len(rows) >= max_changes and int(rows[-1][0]) == upto:  # this version may go on past the limit
                    rows = self._rows(conn, table, since, upto, None)
                changes += [self._change(table, row) for row in rows if int(row[0]) <= upto]
        changes.sort(key=lambda c: c.position["version"])
        return Batch(changes, {"version": upto})

    def _rows(self, conn: sa.Connection, table: str, since: int, upto: int, limit: int | None) -> list:
        info = self.describe(table)
        return conn.exec_driver_sql(sql.ct_changes(table, self.keys[table], info.column_names, limit),
                                    (since, upto)).all()

    def _change(self, table: str, found: Any) -> Change:
        info, key = self.describe(table), self.keys[table]
        version, op, *rest = found
        row_key, values = tuple(rest[:len(key)]), rest[len(key):]
        if op == "D":  # a row changed again after ``upto`` is not in the read: a 'D' here is the row's last word
            return Change("delete", table, row_key, None, None, None, {"version": int(version)})
        readers = self.__dict__.setdefault("_readers", {})
        if table not in readers:
            readers[table] = [(str(c.name), self.reader(c)) for c in info.columns]
        row = {name: read(v) for (name, read), v in zip(readers[table], values)}
        # An upsert either way: a snapshot read after the version may already hold an inserted row.
        return Change("update", table, row_key, None, row, None, {"version": int(version)})

    def pending(self, after: Position) -> int | None:
        return None

    def acknowledge(self, position: Position) -> None:
        """Nothing to release: Change Tracking cleans up by its retention period."""
