"""Row and key texts, digests and buckets, built from the values' canonical texts (cdc.canonical)."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from ..canonical import EXACT_HALF_UP, canonical

__all__ = ["EXACT_HALF_UP", "canonical", "exact_sum", "is_integer", "joined", "md5_bucket", "md5_digest", "prefixed"]


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
