"""SQLite values <-> change-model values; SQLite stores NUMERIC as 64-bit floats, so guard it."""

from __future__ import annotations

import datetime as dt
from functools import cache, partial
from decimal import Decimal
from typing import Any, Callable

import sqlalchemy as sa

from cdc._transforms import EXACT, to_decimal
from cdc.errors import TransformError

from .._sql import same as _identity

#: A NUMERIC-affinity column keeps a number exactly only to this many significant digits.
EXACT_DIGITS = 15


def _exact_numeric(column: sa.Column) -> bool:
    return isinstance(column.type, sa.Numeric) and not isinstance(column.type, sa.Float)




@cache
def reader(column: sa.Column) -> Callable[[Any], Any]:
    """How a stored SQLite value of this column becomes a Python value of its declared kind."""
    kind = column.type
    if _exact_numeric(column):
        return partial(_read_decimal, pad=None if kind.scale is None else Decimal(1).scaleb(-kind.scale))
    if isinstance(kind, sa.Boolean):
        return lambda v: None if v is None else bool(v)
    if isinstance(kind, sa.DateTime):
        return partial(_parse, dt.datetime.fromisoformat)
    if isinstance(kind, sa.Date):
        return partial(_parse, dt.date.fromisoformat)
    return _identity


@cache
def log_reader(column: sa.Column) -> Callable[[Any], Any]:
    """How a value the capture triggers logged in JSON (blobs as hex, floats as text) is read."""
    if isinstance(column.type, sa.LargeBinary):
        return lambda v: bytes.fromhex(v) if isinstance(v, str) else v
    if isinstance(column.type, sa.Float):
        return lambda v: float(v) if isinstance(v, str) else v
    return reader(column)


@cache
def writer(column: sa.Column) -> Callable[[Any], Any]:
    """How a checked value is bound for SQLite; refuses what NUMERIC affinity would round."""
    return partial(_write, exact_text=_affinity(column) == "TEXT")


def _read_decimal(value: Any, pad: Decimal | None) -> Decimal | None:
    """A stored number as an exact Decimal. A REAL holds 15 significant digits exactly (SQLite prints
    and logs it so: the capture triggers' JSON has 0.1 + 0.2 as 0.3); digits past them are the
    float's noise, so a copy reads it as a change logged by the triggers does."""
    if value is None:
        return None
    number = to_decimal(format(value, f".{EXACT_DIGITS}g") if isinstance(value, float) else value)
    if pad is not None and number.is_finite() and number.as_tuple().exponent > pad.as_tuple().exponent:
        number = number.quantize(pad, context=EXACT)  # only pads zeros: 0.1 -> 0.10
    return number


def _write(value: Any, exact_text: bool) -> Any:
    if isinstance(value, Decimal):
        if not exact_text and len(value.as_tuple().digits) > EXACT_DIGITS and \
                len(value.normalize().as_tuple().digits) > EXACT_DIGITS:
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


def _parse(parse, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return parse(value)
    except ValueError:
        return value  # kept as text rather than guessed; the target's fit check decides
