"""Canonical texts, digests and buckets: the same whether Python or a database computes them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

import sqlalchemy as sa

from .._transforms import EXACT

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


def prefixed(kind: sa.types.TypeEngine) -> bool:
    """Whether a column's canonical text needs its length in front: text may hold the separator;
    numbers, booleans, dates, timestamps, hex and UUIDs never do (and never hold a backslash)."""
    return not isinstance(kind, (sa.Numeric, sa.Integer, sa.Boolean, sa.Date, sa.DateTime, sa.LargeBinary,
                                 sa.Uuid))


def joined(parts: list[str | None], flags: list[bool]) -> str:
    return "|".join("\\N" if p is None else f"{len(p)}:{p}" if flag else p for p, flag in zip(parts, flags))


def md5_bucket(key_text: str, buckets: int) -> int:
    return int(hashlib.md5(key_text.encode()).hexdigest()[:8], 16) % buckets


def is_integer(kind: sa.types.TypeEngine) -> bool:
    return isinstance(kind, sa.Integer) and not isinstance(kind, sa.Boolean)


def md5_digest(row_text: str) -> int:
    return int(hashlib.md5(row_text.encode()).hexdigest()[:15], 16)


def exact_sum(numbers: Any) -> Decimal:
    """A sum of decimals that never rounds (the default context keeps 28 digits)."""
    total = Decimal(0)
    for number in numbers:
        total = EXACT_HALF_UP.add(total, Decimal(number))
    return total
