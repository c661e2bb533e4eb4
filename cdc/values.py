"""Exact values: check that a value fits its target column, never round or truncate."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from functools import cache, partial
from typing import Any, Callable

import sqlalchemy as sa

from ._transforms import TransformError, fit_scale, to_decimal


def fit(value: Any, column: sa.Column) -> Any:
    """``value`` converted to the Python type of ``column``; TransformError if it does not fit."""
    return fitter(column)(value)


@cache
def fitter(column: sa.Column) -> Callable[[Any], Any]:
    """The fit check of one column, compiled once (it runs for every value of every row)."""
    kind = column.type
    check: Callable[[Any], Any] | None = None
    if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float):
        check = partial(_fit_numeric, kind=kind)
    elif isinstance(kind, sa.Boolean):
        check = _fit_boolean
    elif isinstance(kind, sa.Integer):
        check = partial(_fit_integer, bounds=_integer_bounds(kind))
    elif isinstance(kind, sa.String):
        check = partial(_fit_text, kind=kind)
    elif isinstance(kind, sa.DateTime):
        digits = second_digits(kind)
        check = _fit_datetime if digits >= 6 else partial(_fit_datetime, digits=digits)
    elif isinstance(kind, sa.Date):
        check = _fit_date
    elif isinstance(kind, sa.Time) and second_digits(kind) < 6:
        check = partial(_fit_time, digits=second_digits(kind))
    nullable = column.nullable or column.primary_key

    def fit_one(value: Any) -> Any:
        if value is None:
            if not nullable:
                raise TransformError("NULL in a NOT NULL column")
            return None
        return value if check is None else check(value)

    return fit_one


def _fit_numeric(value: Any, kind: sa.Numeric) -> Decimal:
    value = to_decimal(value)
    if not value.is_finite():
        raise TransformError(f"{value} is not a finite number")
    if kind.scale is not None:
        value = fit_scale(value, kind.scale)
    if kind.precision is not None:
        integer_digits = max(value.adjusted() + 1, 0)
        if integer_digits > kind.precision - (kind.scale or 0):
            raise TransformError(f"{value} does not fit NUMERIC({kind.precision},{kind.scale or 0})")
    return value


def _integer_bounds(kind: sa.Integer) -> tuple[int, int]:
    """The range checked here: 64-bit, or the exact range of an unsigned column. Narrower signed
    columns are left to the database, which refuses (never wraps) what does not fit: SQLite's
    INTEGER, reflected like PostgreSQL's 32-bit one, holds 64 bits."""
    if getattr(kind, "unsigned", False):
        name = type(kind).__name__.upper()
        bits = {"TINYINT": 8, "SMALLINT": 16, "MEDIUMINT": 24, "INTEGER": 32, "INT": 32}.get(name, 64)
        return 0, (1 << bits) - 1
    return -(1 << 63), (1 << 63) - 1


def _fit_integer(value: Any, bounds: tuple[int, int] = (-(1 << 63), (1 << 63) - 1)) -> int:
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int):
        number = to_decimal(value)
        if number != number.to_integral_value():
            raise TransformError(f"{value} is not a whole number; refusing to round")
        value = int(number)
    if not bounds[0] <= value <= bounds[1]:
        raise TransformError(f"{value} is out of the column's range {bounds[0]}..{bounds[1]}; refusing to wrap")
    return value


def _fit_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    raise TransformError(f"{value!r} is not a boolean; use the mapping's boolean transform for 0/1 columns")


def _fit_text(value: Any, kind: sa.String) -> str:
    if not isinstance(value, str):
        value = value.isoformat() if isinstance(value, (dt.date, dt.time)) else str(value)
    if kind.length is not None and len(value) > kind.length:
        raise TransformError(f"text of {len(value)} characters does not fit {kind.length}; refusing to truncate")
    return value


def second_digits(kind: sa.types.TypeEngine) -> int:
    """The fractional second digits a timestamp column keeps: PostgreSQL's ``timestamp(p)`` p (6
    unstated); MySQL/MariaDB's ``DATETIME(fsp)`` fsp, 0 unstated (a bare DATETIME keeps none)."""
    if hasattr(kind, "fsp"):  # MySQL's DATETIME/TIMESTAMP/TIME types
        return kind.fsp or 0
    precision = getattr(kind, "precision", None)
    return 6 if precision is None else precision


def _fit_datetime(value: Any, digits: int = 6) -> dt.datetime:
    if isinstance(value, dt.datetime):
        if digits < 6 and value.microsecond % 10 ** (6 - digits):
            raise TransformError(f"{value} has more than {digits} fractional second digits, which the column would "
                                 "round; refusing to round (declare it with more, e.g. DATETIME(6) or timestamp(6))")
        return value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise TransformError(f"{value!r} is not a timestamp") from None


def _fit_time(value: Any, digits: int) -> Any:
    """A time of day (or MySQL's TIME as a duration) with no more fractional second digits than the
    column keeps: it would round them (PostgreSQL's time(0) makes 23:59:59.7 the 24:00:00 it then
    cannot read back)."""
    seen = value
    if isinstance(value, str):  # a time as text (SQLite's TIME): its fraction counts the same
        try:
            seen = dt.time.fromisoformat(value.strip())
        except ValueError:
            return value  # not a time of day: the database says what it makes of it
    micro = seen.microsecond if isinstance(seen, dt.time) else seen.microseconds if isinstance(
        seen, dt.timedelta) else 0
    if micro % 10 ** (6 - digits):
        raise TransformError(f"{value} has more than {digits} fractional second digits, which the column would "
                             "round; refusing to round (declare it with more, e.g. TIME(6) or time(6))")
    return value


def _fit_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        if value.time() != dt.time():
            raise TransformError(f"{value} has a time of day; a DATE column would lose it")
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise TransformError(f"{value!r} is not a date") from None


def always_fits(source: sa.types.TypeEngine, target: sa.types.TypeEngine) -> bool:
    """Whether every value a ``source`` column can hold fits a ``target`` column as it is, so the
    per-value fit check can be skipped (NOT NULL is still checked). Conservative: unknown pairs
    of types are checked."""
    if isinstance(source, sa.Numeric) and not isinstance(source, sa.Float):
        if not isinstance(target, sa.Numeric) or isinstance(target, sa.Float):
            return False
        if target.precision is None:
            return target.scale is None or (source.scale is not None and source.scale <= target.scale)
        if source.precision is None or source.scale is None or target.scale is None:
            return False
        return source.scale <= target.scale and \
            source.precision - source.scale <= target.precision - target.scale
    if isinstance(source, sa.Boolean) or isinstance(target, sa.Boolean):
        return False
    if isinstance(source, sa.Integer):
        if not isinstance(target, sa.Integer) or getattr(source, "unsigned", False):
            return False
        if isinstance(target, sa.BigInteger):
            return True
        if isinstance(source, sa.BigInteger):
            return False
        return isinstance(source, sa.SmallInteger) or not isinstance(target, sa.SmallInteger)
    if isinstance(source, sa.String):
        if not isinstance(target, sa.String) or isinstance(source, sa.Enum) or type(source).__name__ == "SET":
            return False  # a SET's value is several members: longer than its reflected length
        return target.length is None or (source.length is not None and source.length <= target.length)
    if isinstance(source, sa.DateTime):
        return isinstance(target, sa.DateTime) and second_digits(source) <= second_digits(target)
    if isinstance(source, sa.Date):
        return isinstance(target, sa.Date) and not isinstance(target, sa.DateTime)
    return False
