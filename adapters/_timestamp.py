"""Capture `timestamp` for any SQL source: poll a change-time column with watermark (timestamp, key)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from cdc.changes import Batch, Change, Position, dumps
from cdc.errors import SourceError

from .base import SqlSource

logger = logging.getLogger(__name__)
#: Rows dated ahead of the source's clock that doctor lists by key.
LISTED_KEYS = 5


class TimestampCapture(SqlSource):
    """Capture `timestamp`: poll an updated_at column with watermark (timestamp, key).

    Rows inside the overlap window are re-read every poll and de-duplicated by key and
    row hash, so a row committed late or sharing the watermark's timestamp is not missed.
    No transaction grouping and no before images: a change is an upsert or, with a
    soft-delete column, a delete. Hard deletes are not seen (reconcile finds them).
    Position: {table: {"ts": watermark, "seen": {key: row hash}}}.

    The watermark never passes the source database's own clock: a row dated in the future
    (``updated_at = 2099-01-01``) is applied, counted and logged, and stays inside the window
    that every poll reads (applied again only when its content changes), instead of moving the
    watermark to 2099 and hiding every later change. Timestamps stored without a zone are in
    the pair's ``source_timezone``; a numeric change column (a version counter) has no clock.
    """

    def __init__(self, engine: sa.Engine, pair: str, options: Any, source_zone: str = "UTC"):
        super().__init__(engine, pair)
        self.options = options
        self.source_zone = source_zone

    def bind_stamp(self, stamp: Any, column: sa.Column) -> Any:
        """The watermark as this database compares it with the column (default: as stored)."""
        return stamp

    def source_clock(self, conn: sa.Connection) -> dt.datetime:
        """The source database's current time, zone-aware (a dialect may read it its own way)."""
        value = conn.execute(sa.select(sa.func.now())).scalar()
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)

    def prepare(self) -> list[str]:
        for table in self.keys:
            if self.options.column not in self.describe(table).column_names:
                raise SourceError(f"source table {table} has no timestamp column {self.options.column!r}")
        return []

    def unprepare(self) -> list[str]:
        return []

    def diagnose(self) -> list[tuple[str, str]]:
        self.prepare()
        found = []
        with self.engine.connect() as conn:
            clock = self.source_clock(conn)
            for table in self.keys:
                found.append(("ok", f"{table}: timestamp column {self.options.column} present"))
                found += self._future_findings(conn, table, clock)
        return found + [("info", "timestamp capture does not see hard deletes; use a soft-delete column or reconcile")]

    def _future_findings(self, conn: sa.Connection, table: str, clock: dt.datetime) -> list[tuple[str, str]]:
        """A warning naming the rows dated ahead of the source's clock (by more than the overlap)."""
        column, key, info = self.options.column, self.keys[table], self.describe(table)
        plain = sa.table(table, *[sa.column(c) for c in info.column_names])
        newest = _text(conn.execute(sa.select(sa.func.max(plain.c[column]))).scalar())
        limit = clock + dt.timedelta(seconds=self.options.overlap_seconds)
        if not self._after(newest, limit):
            return []
        bound = self.bind_stamp(self._written_like(limit, newest), info.columns[info.column_names.index(column)])
        ahead = plain.c[column] > bound
        count = conn.execute(sa.select(sa.func.count()).select_from(plain).where(ahead)).scalar()
        rows = conn.execute(sa.select(*[plain.c[k] for k in key], plain.c[column]).where(ahead)
                            .order_by(plain.c[column].desc()).limit(LISTED_KEYS)).all()
        listed = ", ".join(f"({', '.join(map(str, row[:-1]))}) {_text(row[-1])}" for row in rows)
        return [("warn", f"{table}: {count} row(s) with {column} ahead of the source's clock ({clock:%Y-%m-%d %H:%M:%S} "
                         f"UTC): {listed}{', ...' if count > len(rows) else ''}. They are applied, and read again on "
                         f"every poll until then; correct their {column}")]

    def check_position(self, position: Position) -> None:
        """SourceError when a table's watermark is later than the source's clock (by more than the
        overlap): written before the watermark was capped, or edited; changes were skipped."""
        if not isinstance(position, dict):
            return
        with self.engine.connect() as conn:
            clock = self.source_clock(conn)
        limit = clock + dt.timedelta(seconds=self.options.overlap_seconds)
        for table, mark in position.items():
            if isinstance(mark, dict) and self._after(mark.get("ts"), limit):
                raise SourceError(
                    f"pair {self.pair}: the checkpoint's watermark for {table} ({mark['ts']}) is later than the "
                    f"source's clock ({clock:%Y-%m-%d %H:%M:%S} UTC): rows changed since were skipped. Copy the "
                    "tables again with `cdc run --resnapshot CONFIG`")

    def current_position(self) -> Position:
        """The newest timestamp per table (at most the source's clock), with the rows inside its
        overlap window marked as seen (the snapshot carries them, so they are not applied again)."""
        self.prepare()
        return {table: self._mark_now(table) for table in self.keys}

    def join_stream(self, position: Position, tables: list[str]) -> Position:
        """``position`` with each of ``tables`` starting again at its newest timestamp now: the
        snapshot read after this carries their rows, so the rows before are not streamed again."""
        self.prepare()
        return {**(position or {}), **{table: self._mark_now(table) for table in tables}}

    def _mark_now(self, table: str) -> dict:
        """The table's newest timestamp, with the rows inside its overlap window marked as seen."""
        with self.engine.connect() as conn:
            clock = self.source_clock(conn)
            plain = sa.table(table, sa.column(self.options.column))
            newest = self._capped(_text(conn.execute(sa.select(sa.func.max(plain.c[0]))).scalar()), clock)
        return self._poll(table, {"ts": newest, "seen": {}}, float("inf"))[1]

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
        """Up to ``limit`` changed rows from the overlap window on, and the new mark (never past
        the source's clock, read before the rows)."""
        column, key, info = self.options.column, self.keys[table], self.describe(table)
        plain = sa.table(table, *[sa.column(c) for c in info.column_names])
        query = sa.select(*plain.c).order_by(plain.c[column], *[plain.c[k] for k in key])
        if mark["ts"] is not None:
            start = _minus(mark["ts"], self.options.overlap_seconds)
            query = query.where(plain.c[column] >= self.bind_stamp(start, info.columns[info.column_names.index(column)]))
        seen, changes, newest, ahead = dict(mark["seen"]), [], mark["ts"], []
        readers = [(n, self.reader(c)) for n, c in zip(info.column_names, info.columns)]
        with self.engine.connect() as conn:
            clock = self.source_clock(conn)
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
                newest = stamp if newest is None or self._later(stamp, newest) else newest
                changes.append(self._change(table, row_key, row, stamp))
                if self._after(stamp, clock + dt.timedelta(seconds=self.options.overlap_seconds)):
                    ahead.append((row_key, stamp))
        if ahead:
            logger.warning("pair %s: %d row(s) of %s dated ahead of the source's clock (%s UTC) applied: %s; they are "
                           "read again on every poll until then (correct their %s)", self.pair, len(ahead), table,
                           f"{clock:%Y-%m-%d %H:%M:%S}", ", ".join(f"{list(k)} {s}" for k, s in ahead[:LISTED_KEYS]),
                           column)
        newest = self._capped(newest, clock)
        if newest is not None:
            cutoff = _minus(newest, self.options.overlap_seconds)
            seen = {tag: entry for tag, entry in seen.items() if not self._later(cutoff, entry[1])}
        return changes, {"ts": newest, "seen": seen}

    # -- the source's clock ----------------------------------------------------------
    def _moment(self, stamp: Any) -> dt.datetime | None:
        """A watermark as an aware instant (zone-less ones in source_timezone); None for a number or
        text that is no ISO date/time: such a column has no clock to compare with."""
        if not isinstance(stamp, str):
            return None
        try:
            moment = dt.datetime.fromisoformat(stamp)
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(self.source_zone))

    def _later(self, stamp: Any, other: Any) -> bool:
        """Whether ``stamp`` is later than ``other``: as instants when both are ISO text (their
        offsets may differ, as across a DST change), else as stored."""
        first, second = self._moment(stamp), self._moment(other)
        if first is not None and second is not None:
            return first > second
        return stamp > other

    def _after(self, stamp: Any, clock: dt.datetime) -> bool:
        moment = self._moment(stamp)
        return moment is not None and moment > clock

    def _capped(self, stamp: Any, clock: dt.datetime) -> Any:
        """``stamp``, or the source's clock written the way ``stamp`` is when the stamp is later."""
        return self._written_like(clock, stamp) if self._after(stamp, clock) else stamp

    def _written_like(self, clock: dt.datetime, stamp: str) -> str:
        """``clock`` (whole seconds, in source_timezone) written as ``stamp`` is: with or without its
        zone, 'T' or ' ' between date and time, or a date alone."""
        local = clock.astimezone(ZoneInfo(self.source_zone)).replace(microsecond=0)
        if len(stamp) == 10:
            return local.date().isoformat()
        if dt.datetime.fromisoformat(stamp).tzinfo is None:
            local = local.replace(tzinfo=None)
        return local.isoformat(sep="T" if "T" in stamp else " ")

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
