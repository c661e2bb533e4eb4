"""A decoder for the messages of PostgreSQL's built-in `pgoutput` plugin (protocol version 1).

Values arrive as text (the type's output function) and are turned into Python values by
type OID in `types.py`. An unchanged TOASTed value ('u') is returned as UNCHANGED so the
caller can never write a placeholder over real data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable

_I64 = struct.Struct(">q").unpack_from
_I32 = struct.Struct(">i").unpack_from
_U32 = struct.Struct(">I").unpack_from
_I16 = struct.Struct(">h").unpack_from


class _Unchanged:
    """The marker of a TOASTed value the update did not touch."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()


@dataclass(frozen=True, slots=True)
class Relation:
    """A relation message: the table's identity and its columns as the publisher sees them."""

    oid: int
    schema: str
    name: str
    replica_identity: str
    columns: tuple[str, ...]
    type_oids: tuple[int, ...]
    key_flags: tuple[bool, ...]


@dataclass(slots=True)
class Message:
    """One decoded message; ``kind`` is its one-letter type."""

    kind: str
    relation: int = 0
    old: list | None = None
    new: list | None = None
    old_is_key: bool = False
    fields: dict[str, Any] = field(default_factory=dict)


def _string(data: bytes, at: int) -> tuple[str, int]:
    end = data.index(b"\0", at)
    return data[at:end].decode(), end + 1


def _tuple(data: bytes, at: int, parsers: list | None = None) -> tuple[list, int]:
    """The values of one tuple from ``at``, each through its column's parser (when given)."""
    count = (data[at] << 8) | data[at + 1]
    at += 2
    values: list = []
    append = values.append
    for i in range(count):
        kind = data[at]
        if kind == 0x74:  # 't': text
            length = _I32(data, at + 1)[0]
            at += 5
            text = data[at:at + length].decode()
            at += length
            append(parsers[i](text) if parsers is not None else text)
        elif kind == 0x6E:  # 'n': null
            append(None)
            at += 1
        elif kind == 0x75:  # 'u': unchanged toast
            append(UNCHANGED)
            at += 1
        else:
            raise ValueError(f"pgoutput: unknown tuple value kind {chr(kind)!r}")
    return values, at


def decode(data: bytes, parsers: Callable[[int], list] | None = None) -> Message | Relation:
    """One pgoutput message; row values go through ``parsers(relation oid)`` when given."""
    kind = chr(data[0])
    if kind == "B":
        return Message("B", fields={"final_lsn": _I64(data, 1)[0], "commit_time": _I64(data, 9)[0],
                                    "xid": _U32(data, 17)[0]})
    if kind == "C":
        return Message("C", fields={"commit_lsn": _I64(data, 2)[0], "end_lsn": _I64(data, 10)[0],
                                    "commit_time": _I64(data, 18)[0]})
    if kind == "R":
        return _relation(data)
    if kind in "IUD":
        relation = _I32(data, 1)[0]
        columns = parsers(relation) if parsers is not None else None
        if kind == "I":
            return Message("I", relation, new=_tuple(data, 6, columns)[0])
        if kind == "U":
            return _update(data, relation, columns)
        return Message("D", relation, old=_tuple(data, 6, columns)[0], old_is_key=data[5] == 0x4B)
    if kind == "T":
        (count,) = _I32(data, 1)
        return Message("T", fields={"relations": [_I32(data, 6 + 4 * i)[0] for i in range(count)]})
    return Message(kind)  # Origin, Type, Message: nothing to apply


def _relation(data: bytes) -> Relation:
    (oid,) = _I32(data, 1)
    schema, at = _string(data, 5)
    name, at = _string(data, at)
    identity = chr(data[at])
    (count,) = _I16(data, at + 1)
    at += 3
    columns, oids, keys = [], [], []
    for _ in range(count):
        flags = data[at]
        column, at = _string(data, at + 1)
        (type_oid,) = _I32(data, at)
        at += 8  # type oid, type modifier
        columns.append(column)
        oids.append(type_oid)
        keys.append(bool(flags & 1))
    return Relation(oid, schema, name, identity, tuple(columns), tuple(oids), tuple(keys))


def _update(data: bytes, relation: int, parsers: list | None) -> Message:
    at, old, old_is_key = 5, None, False
    marker = chr(data[at])
    if marker in "KO":
        old, at = _tuple(data, at + 1, parsers)
        old_is_key = marker == "K"
        marker = chr(data[at])
    if marker != "N":
        raise ValueError(f"pgoutput: update without a new tuple (marker {marker!r})")
    new, _ = _tuple(data, at + 1, parsers)
    return Message("U", relation, old=old, new=new, old_is_key=old_is_key)
