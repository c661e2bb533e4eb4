"""Change, Batch and Position: the one change model every adapter speaks."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, NamedTuple

import orjson

Op = Literal["insert", "update", "delete"]
OPS: tuple[str, ...] = ("insert", "update", "delete")

#: A source position: opaque to the core, JSON-serialisable, totally ordered within
#: one source (changelog id, LSN, binlog file+pos, timestamp watermark).
Position = Any

Row = dict[str, Any]


class Change(NamedTuple):
    """One committed row change at the source.

    ``key`` is a tuple in primary-key order; ``before``/``after`` hold Python values
    (Decimal for numerics, never float). ``before`` is None for inserts and where the
    capture mode cannot see it; ``after`` is None for deletes. Immutable, and a NamedTuple
    rather than a frozen dataclass because a batch makes hundreds of thousands of them
    (a frozen dataclass costs four times as much to build).
    """

    op: Op
    table: str
    key: tuple
    before: Row | None
    after: Row | None
    committed_at: dt.datetime | None = None
    position: Position = None
    txid: Any = None

    @property
    def image(self) -> Row:
        """The newest row image this change carries."""
        return self.after if self.after is not None else (self.before or {})


@dataclass(slots=True)
class Batch:
    """Changes that end on a source transaction boundary, and the position after them.

    Applying a batch and storing ``position`` as the checkpoint in one target
    transaction is what makes the effect exactly-once.
    """

    changes: list[Change] = field(default_factory=list)
    position: Position = None
    #: False for a part of a larger read that does not end on a transaction boundary (no position).
    complete: bool = True

    def __len__(self) -> int:
        return len(self.changes)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one target transaction committed: changes applied, changes parked as dead letters (held
    ones included), updates skipped (no mapped column changed), and conflicts met (whatever the policy)."""

    applied: int
    parked: int
    skipped: int = 0
    conflicts: int = 0
    #: Changes applied per source operation (insert, update, delete).
    by_op: dict[str, int] = field(default_factory=dict)
    #: The source commit time of the last change the transaction covered (None when unknown).
    committed_at: Any = None


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # Numbers travel as strings so no JSON reader turns them into floats.
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, dt.timedelta):  # MySQL's TIME, as the driver reads it: its text ('10:00:00.500000')
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> str:
    """Encode a row, key or position as JSON text (Decimal as string, bytes as base64)."""
    return orjson.dumps(value, default=_default).decode()


def loads(text: str | bytes | None) -> Any:
    """Decode JSON text written by :func:`dumps` (numbers come back as strings)."""
    return None if text is None else orjson.loads(text)
