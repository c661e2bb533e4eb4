"""The canonical text of a value: the one rule fingerprints use, whether Python or a database computes them."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

import sqlalchemy as sa

from ._transforms import EXACT

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


#: Numbers are made canonical exactly at any size (DECIMAL(65,30), a REAL of 1e308 as NUMERIC: far more
#: digits than Python's default 28), rounding a tie away from zero as PostgreSQL's round() and
#: MySQL's CAST do.
EXACT_HALF_UP = Context(prec=EXACT.prec, rounding=ROUND_HALF_UP)


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
