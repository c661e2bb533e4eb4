"""How a report writes one value: escaped onto one line, localised for people, or raw for CSV."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from ..changes import dumps, loads

OSLO = ZoneInfo("Europe/Oslo")


#: What a text or HTML report escapes in a value: C0/C1 controls and DEL, Unicode line and paragraph
#: separators, direction marks, embeddings, overrides and isolates, and the backslash itself (so
#: every escape reads back one way).
_UNPRINTABLE = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069\\\\]")
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with every character that could break or redraw a report line escaped (see above)."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def number(value: Any, locale: str = "en") -> str:
    """A number for people: ``1 234 567,89`` in Norwegian (``nb``), ``1,234,567.89`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, float)):
        return printable(str(value))
    text = f"{value:,}" if not isinstance(value, Decimal) else f"{value:,f}"
    if locale == "nb":
        return text.replace(",", "\u00a0").replace(".", ",")
    return text


def zone(locale: str) -> dt.tzinfo:
    """The zone times are shown in: Europe/Oslo for ``nb``, else UTC."""
    return OSLO if locale == "nb" else dt.timezone.utc


def moment(value: dt.datetime | None, locale: str = "en") -> str:
    """A point in time for people, with its zone: ``2026-11-25 15:37:01 CET`` (nb), ``... UTC``."""
    if value is None:
        return ""
    aware = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return aware.astimezone(zone(locale)).strftime("%Y-%m-%d %H:%M:%S %Z")


def shown(value: Any, locale: str = "en") -> str:
    """A value as a report shows it: amounts (decimals) localised, integers (account numbers, ids)
    as they are, text exactly as stored, instants in the locale's zone, NULL as NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, (Decimal, float)):
        return number(value, locale)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(zone(locale))
        return value.isoformat(sep=" ")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    return printable(str(value))


def raw(value: Any) -> str:
    """A value for CSV: exactly as stored (a decimal with all its digits and no separators, an
    instant in ISO form with its offset, bytes as 0x-hex), NULL as NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else str(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    return str(value)


def key_text(key: tuple, locale: str = "en") -> str:
    """A key as people write it: numbers without thousands separators."""
    return ", ".join(str(k) if isinstance(k, (int, Decimal)) and not isinstance(k, bool) else shown(k, locale)
                     for k in key)


def plain(data: Any) -> Any:
    """Data as JSON has it (decimals as text, bytes as base64): what a reader of the file sees."""
    return loads(dumps(data))
