"""PostgreSQL text output -> change-model values, by type OID (pgoutput sends values as text).

The decoding session runs with TimeZone UTC, DateStyle ISO and extra_float_digits 3 (see sql.py),
so timestamps parse without guessing and floats keep every digit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, Callable

import orjson


def _bytea(text: str) -> bytes:
    return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()


def _timestamp(text: str) -> Any:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return text  # 'infinity' and BC dates stay text; the target's fit check decides


def _date(text: str) -> Any:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return text


_BY_OID: dict[int, Callable[[str], Any]] = {
    16: lambda t: t == "t",                    # bool
    17: _bytea,                                # bytea
    20: int, 21: int, 23: int, 26: int,        # int8, int2, int4, oid
    700: float, 701: float,                    # float4, float8
    1700: Decimal,                             # numeric: exact, never float
    1082: _date,                               # date
    1114: _timestamp, 1184: _timestamp,        # timestamp, timestamptz (aware: session zone is UTC)
    1083: dt.time.fromisoformat,               # time
    2950: uuid.UUID,                           # uuid
    114: orjson.loads, 3802: orjson.loads,     # json, jsonb
}


def _text(value: str) -> str:
    return value


def parser(type_oid: int) -> Callable[[str], Any]:
    """The text-to-Python conversion for a type OID (text for types we do not know)."""
    return _BY_OID.get(type_oid, _text)
