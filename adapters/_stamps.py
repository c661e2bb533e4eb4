"""How the change-time column of a polled source reads: its unit, and its stamps as instants."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from cdc.errors import ConfigError, SourceError

from ._sql import SqlSource

UTC = dt.timezone.utc
#: Units per second of an epoch change column (timestamp.unit).
EPOCH_UNITS = {"seconds": 1, "milliseconds": 1_000, "microseconds": 1_000_000}


class StampedSource(SqlSource):
    """A source whose rows carry a change time (``options.column``): what it holds and how its
    stamps compare, as instants (epoch seconds), wall-clock seconds, or a counter.

    The dialect hooks (source_clock, instant_expression, wall_clock, bind_stamp) say how a
    database keeps and compares its date/times; see TimestampCapture for the policy.
    """

    #: Text stamps are parsed into instants by the database (a registered function, see SQLite),
    #: so a stamp it cannot parse comes back as NULL next to a value that is not.
    parses_text_stamps = False

    def __init__(self, engine: sa.Engine, pair: str, options: Any, source_zone: str = "UTC"):
        super().__init__(engine, pair)
        self.options = options
        self.source_zone = source_zone
        self.zone = ZoneInfo(source_zone)

    # -- the dialect's hooks ---------------------------------------------------------
    def source_clock(self, conn: sa.Connection) -> dt.datetime:
        """The source database's current time, zone-aware (a dialect may read it its own way)."""
        value = conn.execute(sa.select(sa.func.now())).scalar()
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def instant_expression(self, column: sa.ColumnElement, info: sa.Column) -> sa.ColumnElement:
        """The SQL whose value Python reads as the row's instant and that orders and bounds the
        rows (default: the column itself, typed by the database)."""
        return column

    def wall_clock(self, column: sa.Column) -> bool:
        """Whether the column holds wall-clock time without a zone (read in source_timezone), which
        the database orders as wall-clock time: such stamps are compared as wall-clock time too."""
        return isinstance(column.type, (sa.DateTime, sa.Date)) and not getattr(column.type, "timezone", False)

    def bind_stamp(self, measure: float, column: sa.Column) -> Any:
        """The stored value of ``column`` at ``measure`` (epoch seconds; wall-clock seconds for a
        wall-clock column): an aware datetime for a column with a zone, else a naive one."""
        moment = dt.datetime.fromtimestamp(measure, UTC)
        return moment if getattr(column.type, "timezone", False) else moment.replace(tzinfo=None)

    # -- what the change column holds ------------------------------------------------
    def _unit(self, table: str) -> str:
        """``time`` (a date/time column, or ISO text SQLite parses), an epoch unit, or ``counter``;
        SourceError naming table and column when the column cannot be a change time as configured."""
        info = self.describe(table)
        column = self.options.column
        if column not in info.column_names:
            raise SourceError(f"source table {table} has no timestamp column {column!r}")
        kind = info.columns[info.column_names.index(column)].type
        numeric, timed = isinstance(kind, (sa.Integer, sa.Numeric)), isinstance(kind, (sa.DateTime, sa.Date))
        unit = self.options.unit
        if unit is not None:
            if not numeric and self.enforces_types:
                raise ConfigError(f"pair {self.pair}, source table {table}: timestamp column {column} is {kind}, not a number: "
                                  f"remove timestamp.unit ({unit}), which is for a numeric change column")
            return unit
        if numeric:
            raise ConfigError(f"pair {self.pair}, source table {table}: timestamp column {column} is a number ({kind}): say what it "
                              "counts with timestamp: {unit: seconds | milliseconds | microseconds} (epoch time) "
                              f"or {{unit: counter}} (a version number, no clock){self._unit_hint(table)}")
        if not timed and not self.parses_text_stamps:
            raise ConfigError(f"pair {self.pair}, source table {table}: timestamp column {column} is {kind}: use a date/time column, "
                              "or a number with timestamp.unit")
        return "wall" if timed and self.wall_clock(info.columns[info.column_names.index(column)]) else "time"

    def _unit_hint(self, table: str) -> str:
        plain = sa.table(table, sa.column(self.options.column))
        with self.engine.connect() as conn:
            newest = conn.execute(sa.select(sa.func.max(plain.c[0]))).scalar()
        if newest is None:
            return ""
        if not isinstance(newest, (int, float, Decimal)):
            return ""
        guess = next((u for u, per in EPOCH_UNITS.items() if 1e9 <= float(newest) / per < 1e10), None)
        return f"; its newest value {newest} looks like epoch {guess}" if guess else ""

    def _instant(self, table: str, unit: str, value: Any, key: tuple = ()) -> float | None:
        """A stamp as epoch seconds (a counter as itself); SourceError naming table, key and column
        when it is no time; None for NULL."""
        if value is None:
            return None
        number = isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)
        if unit == "counter" and number:
            return _number(value)
        if unit in EPOCH_UNITS and number:
            return float(value) / EPOCH_UNITS[unit]
        if unit in ("time", "wall"):
            moment = self._moment(value, unit == "wall")
            if moment is not None:
                return moment
        raise SourceError(
            f"source table {table}, key {list(key)}: timestamp column {self.options.column} holds {value!r}, which "
            + ("is no number" if unit != "time" else "cannot be read as a date/time (write ISO 8601, e.g. "
               "'2026-01-01 10:00:00' or '2026-01-01T10:00:00+01:00'; or set timestamp.unit for epoch numbers)")
            + ": the pair stops rather than skip the row; correct the value")

    def _moment(self, value: Any, wall: bool = False) -> float | None:
        """Epoch seconds of a date/time, ISO text or an instant the database computed (None if it is
        none); ``wall``: seconds of its wall-clock time in source_timezone, as if that were UTC."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)  # already an instant (SQLite's registered function)
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                return None
        if isinstance(value, dt.datetime):
            if wall:
                local = value.astimezone(self.zone).replace(tzinfo=None) if value.tzinfo else value
                return local.replace(tzinfo=UTC).timestamp()
            return (value if value.tzinfo else value.replace(tzinfo=self.zone)).timestamp()
        if isinstance(value, dt.date):
            return dt.datetime.combine(value, dt.time(), UTC if wall else self.zone).timestamp()
        return None

    def _now(self, unit: str, clock: dt.datetime) -> float:
        """The source's clock in the measure of ``unit``'s stamps (wall-clock seconds for "wall")."""
        return self._moment(clock, unit == "wall")

    def _row_instant(self, table: str, unit: str, instant: Any, stamp: Any, key: tuple) -> float:
        """A read row's instant; its stamp is not NULL, so a NULL instant (text the database could not
        read as a time) is the stamp's SourceError naming table, key and column."""
        return self._instant(table, unit, stamp if instant is None else instant, key)

    def _column(self, table: str) -> sa.Column:
        info = self.describe(table)
        return info.columns[info.column_names.index(self.options.column)]

    def _capped(self, unit: str, instant: float | None, clock: dt.datetime) -> float | None:
        """``instant``, or the source's clock when it is later (a counter has no clock)."""
        if instant is None or unit == "counter":
            return instant
        return min(instant, self._now(unit, clock))


def stamp_text(stamp: Any) -> Any:
    """A stamp as a change's position: ISO text; numbers stay numbers."""
    if isinstance(stamp, Decimal):
        return _number(stamp)
    return stamp.isoformat() if isinstance(stamp, (dt.date, dt.datetime)) else stamp


def _number(value: Any) -> int | float:
    """A counter as JSON carries it: a whole number stays whole (exact), others become floats."""
    if isinstance(value, str):
        value = Decimal(value)
    return int(value) if value == int(value) else float(value)
