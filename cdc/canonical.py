"""The canonical text of a value: the one rule fingerprints use, whether Python or a database computes them."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, Callable

import sqlalchemy as sa

from ._transforms import EXACT

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


#: Numbers are made canonical exactly at any size (DECIMAL(65,30), a REAL of 1e308 as NUMERIC: far more
#: digits than Python's default 28), rounding a tie away from zero as PostgreSQL's round() and
#: MySQL's CAST do.
EXACT_HALF_UP = Context(prec=EXACT.prec, rounding=ROUND_HALF_UP)
#: PostgreSQL's money as psycopg reads it, in the C and English locales' form: -$1,234.56.
_MONEY_TEXT = re.compile(r"(-?)\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")


def canonical(value: Any, column: sa.Column) -> str | None:
    """The canonical text of a value (already fitted to ``column``'s type, where it fits)."""
    if value is None:
        return None
    kind = column.type
    if isinstance(value, bool) or isinstance(kind, sa.Boolean):
        return "1" if value else "0"
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        delta = aware - EPOCH
        return str((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str) and getattr(kind, "__visit_name__", "") == "MONEY":
        # A money column read as text ($1,234.56, psycopg) and as a number (psqlODBC, written values):
        # one amount, one text, or every row written would look changed by someone else.
        found = _MONEY_TEXT.fullmatch(value.strip())
        if found:
            value = Decimal(found.group(1) + found.group(2).replace(",", ""))
    if isinstance(value, Decimal) or (isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float)
                                      and isinstance(value, int)):
        return _number_text(Decimal(value), kind)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (dict, list)) or isinstance(kind, sa.JSON):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    if isinstance(kind, sa.CHAR) and isinstance(value, str):
        return value.rstrip(" ")  # fixed width: the padding is not data
    return str(value)


def _number_text(number: Decimal, kind: sa.types.TypeEngine) -> str:
    """A number with the column's scale, or without trailing zeros where the column has none;
    NaN and the infinities as PostgreSQL writes them."""
    if not number.is_finite():
        return str(number)
    scale = getattr(kind, "scale", None)
    if scale is not None and isinstance(kind, sa.Numeric) and not isinstance(kind, (sa.Integer, sa.Float)):
        number = number.quantize(Decimal(1).scaleb(-scale), context=EXACT_HALF_UP)
    elif number == number.to_integral_value():
        number = number.quantize(Decimal(1), context=EXACT_HALF_UP)
    else:
        number = number.normalize(EXACT_HALF_UP)
    if number == 0:
        number = abs(number)
    return format(number, "f")


def texter(column: sa.Column, fit: Callable[[Any], Any]) -> Callable[[Any], str | None]:
    """The canonical text of a value as ``column`` holds it, ``fit`` first (the column's fit check,
    see values.fitter; a value it refuses is taken as it is), compiled once per column: row hashes
    take it for every value of every row a change touches. The common values of the common
    columns (an int in an integer column, a text in a text column, a Decimal in a NUMERIC(p,s), a
    datetime) go straight to the text ``canonical`` gives them, which the fit cannot change; every
    other value takes the whole way."""
    kind = column.type

    def slow(value: Any) -> str | None:
        try:
            value = fit(value)
        except (TypeError, ValueError):  # TransformError is a ValueError
            pass
        return canonical(value, column)

    if isinstance(kind, sa.Boolean) or isinstance(kind, sa.JSON):
        return slow
    if isinstance(kind, sa.Integer) and not isinstance(kind, sa.Numeric):
        return lambda value: str(value) if type(value) is int else slow(value)
    if isinstance(kind, sa.String):
        if isinstance(kind, sa.CHAR):
            return lambda value: value.rstrip(" ") if type(value) is str else slow(value)
        return lambda value: value if type(value) is str else slow(value)
    if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float) and getattr(kind, "scale", None) is not None:
        # Fitted or refused, a finite Decimal's text is itself at the column's scale (rounded half up).
        quantum = Decimal(1).scaleb(-kind.scale)

        def number(value: Any) -> str | None:
            if type(value) is not Decimal or not value.is_finite():
                return slow(value)
            fitted = value.quantize(quantum, context=EXACT_HALF_UP)
            return format(abs(fitted) if not fitted else fitted, "f")
        return number
    if isinstance(kind, sa.DateTime):
        def instant(value: Any) -> str | None:  # the fit takes a datetime as it is
            if type(value) is not dt.datetime:
                return slow(value)
            delta = (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)) - EPOCH
            return str((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)
        return instant
    return slow
