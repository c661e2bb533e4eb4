"""Capture `timestamp` for any SQL source: poll a change-time column with watermark (timestamp, key)."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import sqlalchemy as sa

from cdc.changes import Batch, Change, Position, dumps
from cdc.errors import SourceError

from .base import SqlSource


class TimestampCapture(SqlSource):
    """Capture `timestamp`: poll an updated_at column with watermark (timestamp, key).

    Rows inside the overlap window are re-read every poll and de-duplicated by key and
    row hash, so a row committed late or sharing the watermark's timestamp is not missed.
    No transaction grouping and no before images: a change is an upsert or, with a
    soft-delete column, a delete. Hard deletes are not seen (reconcile finds them).
    Position: {table: {"ts": watermark, "seen": {key: row hash}}}.
    """

    def __init__(self, engine: sa.Engine, pair: str, options: Any):
        super().__init__(engine, pair)
        self.options = options

    def bind_stamp(self, stamp: Any, column: sa.Column) -> Any:
        """The watermark as this database compares it with the column (default: as stored)."""
        return stamp

    def prepare(self) -> list[str]:
        for table in self.keys:
            if self.options.column not in self.describe(table).column_names:
                raise SourceError(f"source table {table} has no timestamp column {self.options.column!r}")
        return []

    def unprepare(self) -> list[str]:
        return []

    def diagnose(self) -> list[tuple[str, str]]:
        self.prepare()
        return [("ok", f"{table}: timestamp column {self.options.column} present") for table in self.keys] + [
            ("info", "timestamp capture does not see hard deletes; use a soft-delete column or reconcile")]

    def current_position(self) -> Position:
        """The newest timestamp per table, with the rows inside its overlap window marked as seen
        (the snapshot carries them, so they are not applied again)."""
        self.prepare()
        marks = {}
        with self.engine.connect() as conn:
            for table in self.keys:
                plain = sa.table(table, sa.column(self.options.column))
                newest = _text(conn.execute(sa.select(sa.func.max(plain.c[0]))).scalar())
                marks[table] = self._poll(table, {"ts": newest, "seen": {}}, float("inf"))[1]
        return marks

    def read(self, after: Position, max_changes: int) -> Batch:
        position = dict(after or {})
        changes: list[Change] = []
        for table in self.keys:
            found, position[table] = self._poll(table, position.get(table) or {"ts": None, "seen": {}},
                                                max_changes - len(changes))
            changes += found
            if len(changes) >= max_changes:
                break
        return Batch(changes, position)

    def _poll(self, table: str, mark: dict, limit: int) -> tuple[list[Change], dict]:
        """Up to ``limit`` changed rows from the overlap window on, and the new mark."""
        column, key, info = self.options.column, self.keys[table], self.describe(table)
        plain = sa.table(table, *[sa.column(c) for c in info.column_names])
        query = sa.select(*plain.c).order_by(plain.c[column], *[plain.c[k] for k in key])
        if mark["ts"] is not None:
            start = _minus(mark["ts"], self.options.overlap_seconds)
            query = query.where(plain.c[column] >= self.bind_stamp(start, info.columns[info.column_names.index(column)]))
        seen, changes, newest = dict(mark["seen"]), [], mark["ts"]
        readers = [(n, self.reader(c)) for n, c in zip(info.column_names, info.columns)]
        with self.engine.connect() as conn:
            for raw in conn.execute(query):
                row = {n: read(v) for (n, read), v in zip(readers, raw)}
                row_key = tuple(row[k] for k in key)
                tag = dumps(list(row_key))
                digest = hashlib.blake2b(dumps(row).encode(), digest_size=8).hexdigest()
                if seen.get(tag, (None,))[0] == digest:
                    continue
                if len(changes) >= limit:
                    break
                stamp = _text(raw._mapping[column])
                seen[tag] = (digest, stamp)
                newest = stamp if newest is None or stamp > newest else newest
                changes.append(self._change(table, row_key, row, stamp))
        if newest is not None:
            cutoff = _minus(newest, self.options.overlap_seconds)
            seen = {tag: entry for tag, entry in seen.items() if entry[1] >= cutoff}
        return changes, {"ts": newest, "seen": seen}

    def _change(self, table: str, key: tuple, row: dict, stamp: Any) -> Change:
        deleted = self.options.soft_delete and row.get(self.options.soft_delete)
        op = "delete" if deleted else "update"
        return Change(op, table, key, row if deleted else None, None if deleted else row, None, stamp)

    def pending(self, after: Position) -> int | None:
        return None

    def acknowledge(self, position: Position) -> None:
        """Nothing to release: polling holds nothing at the source."""


def _text(stamp: Any) -> Any:
    """Timestamps travel in the checkpoint as ISO text; numbers stay numbers."""
    return stamp.isoformat() if isinstance(stamp, (dt.date, dt.datetime)) else stamp


def _minus(stamp: Any, seconds: float) -> Any:
    """``stamp`` minus the overlap, in the same representation (number or ISO text)."""
    if isinstance(stamp, (int, float)):
        return stamp - seconds
    text = str(stamp)
    moment = dt.datetime.fromisoformat(text) - dt.timedelta(seconds=seconds)
    return moment.isoformat(sep="T" if "T" in text else " ")
