"""MySQL/MariaDB values <-> change-model values.

DATETIME has no zone: its wall-clock value is read in the pair's ``source_timezone`` (default
UTC), stated, never guessed. TIMESTAMP is stored as UTC; sessions run with time_zone '+00:00',
so it is read as UTC. JSON documents are parsed (numbers as floats, as on every path). A zero date
('0000-00-00') has no Python value: it stays text, which a date column's fit check refuses by name
(the change is parked) unless the mapping maps it to NULL.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any, Callable
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from .._sql import same

UTC = dt.timezone.utc
#: The longest VARCHAR `cdc init` declares (characters of utf8mb4 in MySQL's 65,535-byte row); longer is LONGTEXT.
LONGEST_VARCHAR = 16_383


def is_timestamp(column: sa.Column) -> bool:
    return isinstance(column.type, mysql.TIMESTAMP)


def reader(column: sa.Column, source_zone: str = "UTC") -> Callable[[Any], Any]:
    """How a driver (PyMySQL) or binlog value of ``column`` becomes the change model's value."""
    kind = column.type
    if isinstance(kind, sa.DateTime):
        zone = UTC if is_timestamp(column) else ZoneInfo(source_zone)
        # A zero date stays the text '0000-00-00 00:00:00': a target's fit check refuses it by
        # name (the change is parked), or a mapping's `null_if` turns it into NULL.
        return lambda v: v.replace(tzinfo=zone) if isinstance(v, dt.datetime) and v.tzinfo is None else v
    if isinstance(kind, sa.JSON):
        return lambda v: v if v is None or not isinstance(v, (str, bytes)) else json.loads(v)
    if isinstance(kind, mysql.SET):
        # The driver gives "b,a" text, the binlog a set: both become the members sorted, comma-separated.
        return lambda v: v if v is None else ",".join(sorted(v if isinstance(v, (set, frozenset)) else
                                                              filter(None, str(v).split(","))))
    if isinstance(kind, (mysql.BIT,)):
        return _bits
    return same


def _bits(value: Any) -> Any:
    """A BIT value as an unsigned integer: the driver gives bytes, the binlog decoder a string of
    binary digits ('00000101')."""
    if isinstance(value, bytes):
        return int.from_bytes(value, "big")
    return int(value, 2) if isinstance(value, str) else value


def writer(column: sa.Column) -> Callable[[Any], Any]:
    """How a checked Python value is bound for ``column`` by PyMySQL (no SQLAlchemy type processing)."""
    kind = column.type
    if isinstance(kind, sa.DateTime):
        # MySQL DATETIME/TIMESTAMP take no offset: aware values are written as UTC wall-clock time
        # (the session's time_zone is '+00:00', so TIMESTAMP stores that very instant).
        return lambda v: v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, dt.datetime) and v.tzinfo else v
    if isinstance(kind, sa.JSON):
        return lambda v: None if v is None else v if isinstance(v, str) else _json_text(v)
    if isinstance(kind, sa.Boolean):
        return lambda v: None if v is None else int(bool(v))
    return _text_for_uuid


def _text_for_uuid(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


def _json_text(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)  # MySQL's own spacing


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)  # JSON documents carry numbers as floats on every path (README)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} into a JSON column")


#: Characters PyMySQL escapes with a backslash in a string literal (each becomes two bytes).
_ESCAPED = "\0\\\n\r\x1a\"'"
#: Bytes of a statement besides its values: the INSERT/UPDATE text with every column named (an
#: upper bound per row, and per column of it).
_ROW_OVERHEAD, _COLUMN_OVERHEAD = 256, 16


def statement_size(row: dict, exact: bool = False) -> int:
    """Bytes a row takes in a statement as PyMySQL sends it: values as escaped literals (text as
    UTF-8, bytes as hex), column names, the statement around them. ``exact`` False: a quick upper
    bound (no text is encoded), enough to tell that most rows are far from any limit."""
    size = _ROW_OVERHEAD + _COLUMN_OVERHEAD * len(row) + 3 * sum(map(len, row))
    if exact:
        return size + sum([_literal_size(value) for value in row.values()])
    size += 100 * len(row)
    for value in row.values():
        if isinstance(value, _SIZED):
            size += 4 * len(value) + 11  # at most 4 bytes a character (2 for ASCII escaped), 2 a byte
    return size


_SIZED = (str, bytes, bytearray, memoryview)


def _literal_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogateescape")) + sum(map(value.count, _ESCAPED)) + 2
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 2 * len(value) + 11  # _binary X'..'
    return len(str(value)) + 2  # a number, date or NULL
