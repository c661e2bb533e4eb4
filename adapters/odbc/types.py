"""pyodbc values <-> change-model values, per dialect.

What pyodbc does on its own, and what is done here instead:
- it binds an aware datetime without its zone (2024-01-01 12:00+02:00 is written as 12:00): every
  aware value is bound as UTC wall-clock time, and each session runs in UTC (sql.SESSIONS);
- it reads a PostgreSQL timestamptz or MySQL TIMESTAMP naive (in the session's UTC): given UTC back;
- MariaDB's driver drops the fraction of a second of a bound datetime: datetimes go to MySQL/MariaDB
  as ISO text, which keeps the microseconds;
- it does not know SQL Server's datetimeoffset (SQL type -155): read with an output converter.
Numerics are Decimal both ways (never float); text is Unicode.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import struct
import uuid
from decimal import Decimal
from typing import Any, Callable

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import mssql, postgresql

from .._sql import same

UTC = dt.timezone.utc
#: ODBC's SQL type of SQL Server's datetimeoffset, which pyodbc reads only through a converter.
SQL_SS_TIMESTAMPOFFSET = -155


def reader(dialect: str, column: sa.Column, source_zone: str = "UTC") -> Callable[[Any], Any]:
    """How pyodbc's value of ``column`` becomes the change model's value."""
    kind = column.type
    if dialect == "mysql":
        from ..mysql import types as mysql_types  # MySQL's own readers: DATETIME in source_timezone, JSON, SET, BIT
        read = mysql_types.reader(column, source_zone)
        return _bytes_then(read) if isinstance(kind, sa.LargeBinary) else read
    if dialect == "sqlite":
        from ..sqlite import types as sqlite_types  # the stored text read as SQLite's adapter reads it
        return sqlite_types.reader(column)
    if isinstance(kind, sa.DateTime) and getattr(kind, "timezone", False):
        return _utc  # the session runs in UTC
    if isinstance(kind, sa.LargeBinary) or isinstance(kind, (mssql.TIMESTAMP, mssql.ROWVERSION)):
        return _bytes
    if isinstance(kind, (postgresql.JSON, postgresql.JSONB, sa.JSON)):
        return lambda v: v if v is None or not isinstance(v, (str, bytes)) else orjson.loads(v)
    if isinstance(kind, (sa.Uuid, postgresql.UUID)) and dialect == "postgresql":
        return lambda v: v if v is None or isinstance(v, uuid.UUID) else uuid.UUID(str(v))
    return same


def selected(dialect: str, info: Any, plain: sa.TableClause) -> list[sa.ColumnElement]:
    """What a read selects per column: PostgreSQL's money as numeric (psqlODBC hands money over as a
    double, which rounds an amount past 15 digits: 92233720368547758.07 became ...760.00)."""
    if dialect != "postgresql":
        return list(plain.c)
    return [sa.cast(plain.c[c.name], sa.Numeric).label(c.name) if isinstance(c.type, postgresql.MONEY)
            else plain.c[c.name] for c in info.columns]


def writer(dialect: str, column: sa.Column) -> Callable[[Any], Any]:
    """How a checked change-model value of ``column`` is bound through pyodbc."""
    kind = column.type
    if dialect == "sqlite":
        from ..sqlite import types as sqlite_types  # exact numerics as text, as SQLite's adapter writes them
        return sqlite_types.writer(column)
    if dialect == "mssql" and isinstance(kind, mssql.DATETIMEOFFSET):
        return _offset_text
    if isinstance(kind, (sa.DateTime, sa.Time, sa.Interval)) and dialect == "mysql":
        return _mysql_text
    if isinstance(kind, sa.JSON):
        return lambda v: None if v is None or isinstance(v, str) else orjson.dumps(v).decode()
    if isinstance(kind, sa.Boolean) and dialect == "mysql":
        return lambda v: None if v is None else int(bool(v))
    return _plain


def _plain(value: Any) -> Any:
    """Aware datetimes as UTC wall-clock time; times and UUIDs as text (pyodbc binds a time without its
    fraction of a second); the rest as it is."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _mysql_text(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.timedelta):  # a MySQL TIME, as PyMySQL and our reader give it
        sign, rest = ("-", -value) if value < dt.timedelta(0) else ("", value)
        hours, seconds = divmod(rest.days * 86400 + rest.seconds, 3600)
        return f"{sign}{hours:02d}:{seconds // 60:02d}:{seconds % 60:02d}.{rest.microseconds:06d}"
    return value


def read_mysql_time(raw: bytes | None) -> dt.timedelta | None:
    """A MySQL TIME as its text ('-838:59:59', '23:59:59.999999') -> timedelta, as PyMySQL reads it."""
    if raw is None:
        return None
    text = raw.decode()
    sign = -1 if text.startswith("-") else 1
    hours, minutes, seconds = text.lstrip("-").split(":")
    whole, _, fraction = seconds.partition(".")
    return sign * dt.timedelta(hours=int(hours), minutes=int(minutes), seconds=int(whole),
                               microseconds=int(fraction.ljust(6, "0")[:6]) if fraction else 0)


def _offset_text(value: Any) -> Any:
    """An aware datetime as datetimeoffset text (its own offset kept); a naive one as UTC."""
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.isoformat(sep=" ")
    return value


def _utc(value: Any) -> Any:
    return value.replace(tzinfo=UTC) if isinstance(value, dt.datetime) and value.tzinfo is None else value


def _bytes(value: Any) -> Any:
    return bytes(value) if isinstance(value, (bytearray, memoryview)) else value


def _bytes_then(read: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return read if read is same else (lambda v: read(_bytes(v)))


def read_datetimeoffset(raw: bytes | None) -> dt.datetime | None:
    """SQL Server's datetimeoffset as the driver gives it (SQL_SS_TIMESTAMPOFFSET_STRUCT) -> aware datetime."""
    if raw is None:
        return None
    year, month, day, hour, minute, second, nanos, off_h, off_m = struct.unpack("<6hI2h", raw)
    zone = dt.timezone(dt.timedelta(hours=off_h, minutes=off_m))
    return dt.datetime(year, month, day, hour, minute, second, nanos // 1000, tzinfo=zone)


# -- SQL Server capture `trigger`: values as FOR JSON wrote them ----------------------------------------
_BEYOND_MICROSECONDS = re.compile(r"(\.\d{6})\d+")


def _iso(text: str) -> str:
    """FOR JSON's date/time text with at most six digits of a second (datetime2 has seven; pyodbc
    reads the column to the microsecond too)."""
    return _BEYOND_MICROSECONDS.sub(r"\1", text)


def _logged_time(text: str) -> dt.time:
    return dt.time.fromisoformat(_iso(text))


def _logged_datetime(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(_iso(text))


_LOGGED = {
    **dict.fromkeys(("bigint", "int", "smallint", "tinyint"), int),
    "bit": bool,
    **dict.fromkeys(("decimal", "numeric", "money", "smallmoney"), lambda v: Decimal(str(v))),
    **dict.fromkeys(("float", "real"), float),
    "date": dt.date.fromisoformat,
    "time": _logged_time,
    **dict.fromkeys(("datetime2", "datetime", "smalldatetime", "datetimeoffset"), _logged_datetime),
    **dict.fromkeys(("binary", "varbinary", "timestamp"), base64.b64decode),
}


def logged_value(base_type: str) -> Callable[[Any], Any]:
    """How a value of a column of SQL Server type ``base_type``, as FOR JSON logged it (numbers as JSON
    numbers, read here as Decimal; binaries as base64; date/times as ISO 8601 text), becomes the value
    pyodbc gives for that column (a datetimeoffset with its offset, see read_datetimeoffset)."""
    convert = _LOGGED.get(base_type, str)
    return lambda value: None if value is None else convert(value)
