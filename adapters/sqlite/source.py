"""SQLite as a source: reflection and value conversion both capture modes share; timestamp polling."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Callable

import sqlalchemy as sa

from .._timestamp import TimestampCapture
from ..base import TableInfo
from .._sql import SqlSource
from . import sql, types

logger = logging.getLogger(__name__)


class SqliteSource(SqlSource):
    """Shared by both capture modes: reflection, snapshots, SQLite value conversion."""

    enforces_types = False  # a column's declared type does not limit what it stores

    def reader(self, column: sa.Column) -> Callable[[Any], Any]:
        return types.reader(column)

    def database_findings(self) -> list[tuple[str, str]]:
        """A warning when the database keeps a rollback journal: then a reader (a snapshot, a
        reconcile, a paused cdc process) holds off the application's commits, which fail with
        'database is locked' once their busy timeout (none by default) runs out."""
        with self.engine.connect() as conn:
            mode = str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower()
        if mode == "wal":
            return [("ok", "journal_mode is wal: cdc's reads do not hold off the application's writes")]
        return [("warn", f"journal_mode is {mode}: while cdc reads the database (a copy, a reconcile) the "
                         "application's commits wait for it, and fail with 'database is locked' unless they set a "
                         "busy timeout; switch to WAL once: sqlite3 FILE 'PRAGMA journal_mode=WAL'")]

    def describe(self, table: str) -> TableInfo:
        info = super().describe(table)
        for column in info.columns:
            if type(column.type) in (sa.Integer, sa.INTEGER):
                # SQLite integers are 64-bit: another target must declare them BIGINT.
                column.type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
        return info


class TimestampSource(TimestampCapture, SqliteSource):
    """Capture `timestamp` on SQLite: the shared polling logic with SQLite's value conversion.

    SQLite keeps date/times as text, which compares as text: '2026-03-29 03:00:00+02:00' sorts after
    '2026-03-29 02:30:00+01:00' though it is earlier, and 'T' sorts after ' '. Every connection gets
    a function, ``cdc_instant(text)``, that reads an ISO 8601 date/time as epoch seconds (without a
    zone: in source_timezone) or gives NULL, so rows are ordered and bounded as instants and a value
    it cannot read stops the pair by key.
    """

    parses_text_stamps = True

    def __init__(self, engine: sa.Engine, pair: str, options: Any, source_zone: str = "UTC"):
        super().__init__(engine, pair, options, source_zone)
        sa.event.listen(engine, "connect", lambda dbapi_connection, record: dbapi_connection.create_function(
            sql.INSTANT_FUNCTION, 1, self._text_instant, deterministic=True))

    def diagnose(self) -> list[tuple[str, str]]:
        return super().diagnose() + self.database_findings()

    def wall_clock(self, column: sa.Column) -> bool:
        """Never: whatever the declared type, the stored text is compared as the instant it names."""
        return False

    def _text_instant(self, value: Any) -> float | None:
        return self._moment(value) if isinstance(value, str) else None

    def _window(self, table: str, unit: str, plain: Any, instant: sa.ColumnElement,
                start: float | None) -> sa.ColumnElement:
        """The shared window, after a test in C that lets through only rows that may be in it, so the
        registered function (Python) runs on those alone: julianday() reads the same ISO text, taking
        text without an offset as UTC (so the bound allows for source_timezone's offsets); a value it
        cannot read, or one that is not text, goes on to the function (and to an error)."""
        window = super()._window(table, unit, plain, instant, start)
        if unit != "time" or start is None:
            return window
        column = plain.c[self.options.column]
        year = dt.datetime.now(dt.timezone.utc).year
        west = min(0.0, *(dt.datetime(year, m, 1, tzinfo=self.zone).utcoffset().total_seconds() for m in (1, 7)))
        day = sa.func.julianday(column)
        maybe = sa.or_(sa.func.typeof(column) != "text", day.is_(None),
                       day >= (start + west - 1) / 86400 + sql.UNIX_EPOCH_JULIAN_DAY)  # 1 s for rounding
        return sa.and_(column.isnot(None), maybe, window)

    def instant_expression(self, column: sa.ColumnElement, info: sa.Column) -> sa.ColumnElement:
        """``cdc_instant(column)`` for ISO text; an epoch or counter column (timestamp.unit) as it is."""
        return column if self.options.unit else getattr(sa.func, sql.INSTANT_FUNCTION)(column)
