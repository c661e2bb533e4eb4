"""The named, safe value transforms a mapping may use; no user string is ever evaluated."""

from __future__ import annotations


import datetime as dt
from decimal import Context, Decimal, InvalidOperation
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import TransformError  # re-exported: the core's modules import it from here

Transform = Callable[[Any], Any]
#: Quantizing must never run out of digits: PostgreSQL numerics hold up to 131,072 of them.
EXACT = Context(prec=200_000)


def to_decimal(value: Any) -> Decimal:
    """An exact Decimal from int, str or Decimal; a float goes through its shortest repr."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TransformError(f"{value!r} is not a number")
    try:
        return Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise TransformError(f"{value!r} is not a number") from None


def fit_scale(value: Decimal, scale: int) -> Decimal:
    """``value`` with exactly ``scale`` decimals; more significant decimals is an error, never rounded."""
    quantum = Decimal(1).scaleb(-scale)
    try:
        fitted = value.quantize(quantum, context=EXACT)
    except InvalidOperation:
        raise TransformError(f"{value} does not fit {scale} decimals") from None
    if fitted != value:
        raise TransformError(f"{value} has more than {scale} decimals; refusing to round")
    return fitted


def _decimal(scale: Any) -> Transform:
    if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= 30:
        raise ValueError("decimal takes a scale between 0 and 30, e.g. {decimal: 2}")
    return lambda v: None if v is None else fit_scale(to_decimal(v), scale)


def _text(name: str, fn: Callable[[str], str]) -> Callable[[Any], Transform]:
    def build(arg: Any) -> Transform:
        if arg is not None:
            raise ValueError(f"{name} takes no argument")

        def apply(value: Any) -> Any:
            if value is None:
                return None
            if not isinstance(value, str):
                raise TransformError(f"{name} needs text, got {type(value).__name__}")
            return fn(value)

        return apply

    return build


def _constant(arg: Any) -> Transform:
    return lambda v: arg


def _value_map(arg: Any) -> Transform:
    if not isinstance(arg, dict) or not arg:
        raise ValueError("map takes a mapping of source value to target value, e.g. {map: {A: active}}")

    def apply(value: Any) -> Any:
        if value is None:
            return None
        for candidate in (value, str(value)):
            if candidate in arg:
                return arg[candidate]
        raise TransformError(f"{value!r} is not in the value map ({', '.join(map(str, arg))})")

    return apply


def _date_from_timestamp(arg: Any, source_zone: str = "UTC") -> Transform:
    try:
        zone = ZoneInfo(str(arg))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{arg!r} is not a time zone name such as Europe/Oslo") from None

    def apply(value: Any) -> Any:
        if value is None or (isinstance(value, dt.date) and not isinstance(value, dt.datetime)):
            return value
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value)
            except ValueError:
                raise TransformError(f"{value!r} is not a timestamp") from None
        if not isinstance(value, dt.datetime):
            raise TransformError(f"{value!r} is not a timestamp")
        if value.tzinfo is None:
            # A zone-less timestamp is in the pair's stated source_timezone, never guessed.
            value = value.replace(tzinfo=ZoneInfo(source_zone))
        return value.astimezone(zone).date()

    return apply


def _boolean(arg: Any) -> Transform:
    """0/1 (MySQL's tinyint(1)) as false/true; anything else is an error for that row."""
    if arg is not None:
        raise ValueError("boolean takes no argument")

    def apply(value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if value in (0, 1) and not isinstance(value, float):
            return bool(value)
        raise TransformError(f"{value!r} is not a boolean (0 or 1)")

    return apply


def _null_if(arg: Any) -> Transform:
    """NULL where the value (or its text) is one of ``arg``: e.g. MySQL's zero date."""
    values = set(map(str, arg if isinstance(arg, list) else [arg]))

    def apply(value: Any) -> Any:
        return None if value is not None and str(value) in values else value

    return apply


#: name -> factory(argument) -> transform
TRANSFORMS: dict[str, Callable[..., Transform]] = {
    "decimal": _decimal,
    "trim": _text("trim", str.strip),
    "upper": _text("upper", str.upper),
    "lower": _text("lower", str.lower),
    "constant": _constant,
    "map": _value_map,
    "null_if": _null_if,
    "boolean": _boolean,
    "date_from_timestamp": _date_from_timestamp,
}


#: The kinds of value a transform takes (a transform not listed takes any), so that `cdc check`
#: refuses `upper` on a number before the first row fails. Kinds: text, integer, number, boolean,
#: date, timestamp (see cdc/_typecheck.py for the column types behind them).
TAKES: dict[str, frozenset[str]] = {
    "trim": frozenset({"text"}), "upper": frozenset({"text"}), "lower": frozenset({"text"}),
    "decimal": frozenset({"integer", "number", "text"}),
    "date_from_timestamp": frozenset({"timestamp", "date", "text"}),
    "boolean": frozenset({"integer", "boolean"}),
}
_GIVES = {"trim": "text", "upper": "text", "lower": "text", "decimal": "number", "date_from_timestamp": "date",
          "boolean": "boolean"}


def value_kind(value: Any) -> str | None:
    """The kind of a Python value (None for NULL and kinds no check needs)."""
    for kind, name in ((bool, "boolean"), (int, "integer"), (Decimal, "number"), (float, "number"),
                       (dt.datetime, "timestamp"), (dt.date, "date"), (str, "text")):
        if isinstance(value, kind):
            return name
    return None


def gives(name: str, arg: Any, kind: str | None) -> str | None:
    """The kind of value transform ``name`` gives for a value of ``kind`` (None: cannot tell)."""
    if name in _GIVES:
        return _GIVES[name]
    if name == "constant":
        return value_kind(arg)
    if name == "map":
        kinds = {value_kind(v) for v in arg.values() if v is not None}
        return kinds.pop() if len(kinds) == 1 else None
    return kind  # null_if keeps the kind


def build(name: str, arg: Any, source_zone: str) -> Transform:
    """The transform called ``name``; ValueError with a user-facing text if unknown or misused."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r} (known: {', '.join(TRANSFORMS)})")
    if name == "date_from_timestamp":
        return _date_from_timestamp(arg, source_zone)
    return TRANSFORMS[name](arg)
