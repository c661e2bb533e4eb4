"""Turns the pgoutput messages of a slot's stream into parts of transactions (capture `logical`)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from cdc.changes import Batch, Change
from cdc.errors import SourceError

from . import _pgoutput

if TYPE_CHECKING:
    from .logical import LogicalSource

PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_OPS = {"I": "insert", "U": "update", "D": "delete"}
_ROW_MESSAGES = frozenset(b"IUD")


class Decoder:
    """Turns pgoutput messages into parts of transactions; skips transactions the target has.

    A transaction whose commit record starts before ``after`` (the end of the last applied
    commit) is already applied. Changes carry their commit LSN; a complete part carries the
    commit's end LSN, which is what the checkpoint stores and the slot is confirmed to.
    Relations are known per stream, so one decoder lives as long as its stream.
    """

    def __init__(self, source: LogicalSource):
        self.source, self.conn = source, None
        self.relations: dict[int, tuple[_pgoutput.Relation, list]] = {}
        self.pending: list[Change] = []
        self.skip, self.inside, self.xid, self.committed, self.lsn = False, False, None, None, 0
        self.after, self.part_size, self.passed = 0, 1, False
        self._parsers = lambda oid: self.relations[oid][1]

    def begin(self, after: int, part_size: int) -> None:
        """A new read after ``after``; ``passed``: it went past a transaction of none of our rows."""
        self.after, self.part_size, self.passed = after, part_size, False

    def feed(self, data: bytes) -> Batch | None:
        if self.skip and data[0] in _ROW_MESSAGES:
            return None  # a row of a transaction the target already has: not even decoded
        message = _pgoutput.decode(data, self._parsers)
        if isinstance(message, _pgoutput.Relation):
            self.relations[message.oid] = (message, self.source._check_relation(message))
            return None
        kind = message.kind
        if kind in "IUD":
            relation = self.relations[message.relation][0]
            if self.skip or relation.name not in self.source.keys:
                return None  # applied already, or of a table the pair no longer copies
            self.pending.append(self._change(message, relation))
            if len(self.pending) >= self.part_size:
                part, self.pending = self.pending, []
                return Batch(part, None, complete=False)
        elif kind == "B":
            self.lsn, self.xid = message.fields["final_lsn"], message.fields["xid"]
            self.skip, self.inside = self.lsn < self.after, True
            self.committed = PG_EPOCH + dt.timedelta(microseconds=message.fields["commit_time"])
            self.pending = []
        elif kind == "C":
            self.inside = False
            if not self.skip:
                part, self.pending = self.pending, []
                if not part:  # only rows of tables the pair no longer copies
                    self.passed = True
                return Batch(part, message.fields["end_lsn"])
        elif kind == "T":
            names = [self.relations[oid][0].name for oid in message.fields["relations"] if oid in self.relations]
            raise SourceError(f"TRUNCATE of {', '.join(names) or 'a captured table'} at the source is not "
                              "replicated: the pair stops before it. Once the table is as it should be, copy the "
                              "tables again with `cdc run --resnapshot CONFIG` (rows deleted meanwhile are then "
                              "removed by `cdc reconcile CONFIG --repair`)")
        return None

    def _change(self, message: Any, relation: _pgoutput.Relation) -> Change:
        """The row message as a Change of the transaction being read; columns pgoutput did not send
        (unchanged TOAST values, generated columns) are filled in."""
        table, columns, keys = relation.name, relation.columns, self.source.keys[relation.name]
        new = None if message.new is None else dict(zip(columns, message.new))
        old = None if message.old is None else dict(zip(columns, message.old))
        if old is not None and message.old_is_key:
            old = {k: old[k] for k in keys}
        generated = [c for c in self.source._generated(table) if c not in columns]
        if new is not None and generated:  # not sent by pgoutput: read like an unchanged TOAST value
            new.update({c: _pgoutput.UNCHANGED for c in generated})
            if old is not None:
                old = {c: v for c, v in old.items() if c not in generated}
        if new is not None and (generated or _pgoutput.UNCHANGED in message.new):
            new = self._fill_unchanged(table, new, old)
        image = new if new is not None else old
        key = tuple([image[k] for k in keys])
        return Change(_OPS[message.kind], table, key, old, new, self.committed, self.lsn, self.xid)

    def _fill_unchanged(self, table: str, new: dict, old: dict | None) -> dict:
        """Values an update did not touch (TOAST): from the old image, else read from the table."""
        missing = [c for c, v in new.items() if v is _pgoutput.UNCHANGED and not (old and c in old
                                                                                  and old[c] is not _pgoutput.UNCHANGED)]
        filled = {c: (old[c] if v is _pgoutput.UNCHANGED else v) for c, v in new.items() if c not in missing}
        if missing:
            keys = self.source.keys[table]
            plain = sa.table(table, *[sa.column(c) for c in (*missing, *keys)])
            where = sa.and_(*[plain.c[k] == new[k] for k in keys])
            row = self.conn.execute(sa.select(*[plain.c[c] for c in missing]).where(where)).first()
            # Gone since: a later change in the slot deletes or rewrites it, so any value converges.
            filled.update({c: (row[i] if row is not None else None) for i, c in enumerate(missing)})
        return {c: filled[c] for c in new}
