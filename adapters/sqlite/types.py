"""SQLite values <-> change-model values; SQLite stores NUMERIC as 64-bit floats, so guard it."""

from __future__ import annotations

import datetime as dt
from functools import cache
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from cdc._transforms import TransformError, to_decimal

#: A NUMERIC-affinity column keeps a number exactly only to this many significant digits.
EXACT_DIGITS = 15


def _exact_numeric(column: sa.Column) -> bool:
    return isinstance(column.type, sa.Numeric) and not isinstance(column.type, sa.Float)


def from_db(value: Any, column: sa.Column) -> Any:
    """A stored SQLite value as a Python value of the column's declared kind."""
    if value is None:
        return None
    kind = column.type
    if _exact_numeric(column):
        number = to_decimal(value)
        scale = kind.scale
        if scale is not None and number.is_finite() and -number.as_tuple().exponent < scale:
            number = number.quantize(Decimal(1).scaleb(-scale))  # only pads zeros: 0.1 -> 0.10
        return number
    if isinstance(kind, sa.Boolean):
        return bool(value)
    if isinstance(kind, sa.DateTime) and isinstance(value, str):
        return _parse(dt.datetime.fromisoformat, value)
    if isinstance(kind, sa.Date) and isinstance(value, str):
        return _parse(dt.date.fromisoformat, value)
    return value


def from_log(value: Any, column: sa.Column) -> Any:
    """A value as the capture triggers logged it in JSON (blobs as hex, floats as text)."""
    if value is None:
        return None
    if isinstance(column.type, sa.LargeBinary) and isinstance(value, str):
        return bytes.fromhex(value)
    if isinstance(column.type, sa.Float) and isinstance(value, str):
        return float(value)
    return from_db(value, column)


def to_db(value: Any, column: sa.Column) -> Any:
    """A checked value as SQLite should store it; refuses what NUMERIC affinity would round."""
    if isinstance(value, Decimal):
        if _affinity(column) != "TEXT" and len(value.normalize().as_tuple().digits) > EXACT_DIGITS:
            raise TransformError(
                f"{value} has more than {EXACT_DIGITS} significant digits; SQLite would round it "
                "(declare the column TEXT to keep it exact)")
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    return value


@cache
def _affinity(column: sa.Column) -> str:
    """SQLite's type-affinity rule applied to the declared type name."""
    declared = str(column.type.compile(dialect=sa.dialects.sqlite.dialect())).upper()
    if "INT" in declared:
        return "INTEGER"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    return "REAL" if any(word in declared for word in ("REAL", "FLOA", "DOUB")) else "NUMERIC"


def _parse(parse, value: str) -> Any:
    try:
        return parse(value)
    except ValueError:
        return value  # kept as text rather than guessed; the target's fit check decides
