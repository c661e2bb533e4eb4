"""Capture `timestamp` for any SQL source: poll a change-time column with watermark (timestamp, key)."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
from decimal import Decimal
from typing import Any, Iterable

import sqlalchemy as sa

from cdc.changes import Batch, Change, Position, dumps
from cdc.errors import SourceError

from ._stamps import EPOCH_UNITS, StampedSource, stamp_text

logger = logging.getLogger(__name__)
UTC = dt.timezone.utc
#: Rows dated ahead of the source's clock that doctor lists by key.
LISTED_KEYS = 5
#: The label of the instant column every poll selects next to the row.
INSTANT = "cdc_instant_"


class TimestampCapture(StampedSource):
    """Capture `timestamp`: poll an updated_at column with watermark (timestamp, key).

    Rows inside the overlap window are re-read every poll and de-duplicated by key and
    row hash, so a row committed late or sharing the watermark's timestamp is not missed.
    No transaction grouping and no before images: a change is an upsert or, with a
    soft-delete column, a delete. Hard deletes are not seen (reconcile finds them).
    Position: {table: {"ts": watermark as UTC text, "at": the same in epoch seconds,
    "seen": {key: [row hash, epoch seconds]}}}; with ``unit: counter`` "ts" and "at" are the counter.

    Stamps are compared as instants, never as stored text: a date/time column, a text column of
    ISO date/times (SQLite; offsets such as +01:00/+02:00 across a DST change and 'T' or ' '
    mixed) or an epoch number (``unit: seconds|milliseconds|microseconds``) all become epoch
    seconds; ISO text without a zone is in the pair's ``source_timezone``. A date/time column
    without a zone (PostgreSQL timestamp, MySQL DATETIME) is compared as wall-clock seconds in
    ``source_timezone``, the order the database itself keeps (doctor warns that its repeated hour
    when clocks go back needs an overlap of an hour). The watermark never passes
    the source database's own clock: a row dated in the future (``updated_at = 2099-01-01``) is
    applied, counted and logged, and stays inside the window that every poll reads (applied again
    only when its content changes), instead of moving the watermark to 2099 and hiding every later
    change. A numeric column must state its unit (``counter``: a version number, no clock); a stamp
    that cannot be read as a time stops the pair naming table, key and column. Rows whose stamp is
    NULL cannot be polled: doctor and status report them (level fail) and `cdc run` logs them.
    """

    def __init__(self, engine: sa.Engine, pair: str, options: Any, source_zone: str = "UTC"):
        super().__init__(engine, pair, options, source_zone)
        self._logged_nulls: dict[str, int] = {}

    # -- install and doctor ----------------------------------------------------------
    def prepare(self, keep: Iterable[str] = ()) -> list[str]:
        for table in self.keys:
            self._unit(table)
        return []

    def unprepare(self) -> list[str]:
        return []

    def diagnose(self) -> list[tuple[str, str]]:
        self.prepare()
        found = []
        for table in self.keys:
            found.append(("ok", f"{table}: timestamp column {self.options.column} present"))
            found += self._table_findings(table) + self._repeated_hour_findings(table) + \
                self._shared_counter_findings(table)
        return found + [("info", "timestamp capture does not see hard deletes; use a soft-delete column or reconcile")]

    def warnings(self) -> list[tuple[str, str]]:
        """Rows dated ahead of the source's clock (warn) and rows with no change time (fail)."""
        return [found for table in self.keys for found in self._table_findings(table)]

    def _table_findings(self, table: str) -> list[tuple[str, str]]:
        """Rows with no change time (fail), a stamp that is no time (fail), rows ahead of the clock (warn)."""
        try:
            unit = self._unit(table)
            with self.engine.connect() as conn:
                found = self._null_findings(conn, table)
                if unit != "counter":
                    found += self._future_findings(conn, table, unit, self.source_clock(conn))
        except SourceError as exc:
            return [("fail", str(exc))]
        return found

    def _repeated_hour_findings(self, table: str) -> list[tuple[str, str]]:
        """A warning when wall-clock stamps in a zone that puts clocks back can hide rows: a row written in
        the repeated hour sorts before the watermark by up to an hour, so only an overlap of an hour sees it."""
        year = dt.datetime.now(UTC).year
        offsets = {dt.datetime(year, month, 1, tzinfo=self.zone).utcoffset() for month in (1, 7)}
        if self._unit(table) != "wall" or len(offsets) < 2 or self.options.overlap_seconds >= 3600:
            return []
        column = self.options.column
        return [("warn", f"{table}: {column} has no zone and {self.source_zone} puts clocks back once a year: rows "
                         f"written in the repeated hour are missed unless timestamp.overlap_seconds is at least 3600 "
                         f"(or {column} holds instants: timestamptz, MySQL TIMESTAMP)")]

    def _shared_counter_findings(self, table: str) -> list[tuple[str, str]]:
        """A warning when counter values repeat: a per-row version number (1, 2, 3 on every row) is
        no table-wide counter, and a change that leaves a row's counter below the highest one read
        is never seen (a counter per transaction repeats too, rightly: hence a warning, not a failure)."""
        if self._unit(table) != "counter":
            return []
        plain = sa.table(table, sa.column(self.options.column))
        with self.engine.connect() as conn:
            shared = conn.execute(sa.select(sa.func.count(plain.c[0]) - sa.func.count(plain.c[0].distinct()))).scalar()
        if not shared:
            return []
        return [("warn", f"{table}: {shared} row(s) share their {self.options.column} value with another row. A "
                         "counter must grow across the whole table (a sequence, a row version the database hands "
                         "out): a change whose counter is not above every counter read before is never captured")]

    def _null_findings(self, conn: sa.Connection, table: str) -> list[tuple[str, str]]:
        """A failure naming the count of rows whose change time is NULL: polling never sees them."""
        count = self._null_count(conn, table)
        if not count:
            return []
        column = self.options.column
        return [("fail", f"{table}: {count} row(s) with {column} NULL: their inserts and updates are not captured "
                         f"(rows there at the first copy were copied). Give them a time, e.g. UPDATE {table} SET "
                         f"{column} = CURRENT_TIMESTAMP WHERE {column} IS NULL (they are then captured), and make "
                         f"{column} NOT NULL with a default")]

    def _null_count(self, conn: sa.Connection, table: str) -> int:
        plain = sa.table(table, sa.column(self.options.column))
        return conn.execute(sa.select(sa.func.count()).select_from(plain).where(plain.c[0].is_(None))).scalar()

    def _future_findings(self, conn: sa.Connection, table: str, unit: str,
                         clock: dt.datetime) -> list[tuple[str, str]]:
        """A warning naming the rows dated ahead of the source's clock (by more than the overlap)."""
        limit = self._now(unit, clock) + self.options.overlap_seconds
        rows = [(key, stamp) for key, stamp, moment in self._rows_from(conn, table, unit, limit)
                if moment > limit]
        if not rows:
            return []
        rows.sort(key=lambda row: row[1] if isinstance(row[1], (int, float, Decimal)) else str(row[1]),
                  reverse=True)
        listed = ", ".join(f"({', '.join(map(str, key))}) {stamp_text(stamp)}" for key, stamp in rows[:LISTED_KEYS])
        column = self.options.column
        return [("warn", f"{table}: {len(rows)} row(s) with {column} ahead of the source's clock "
                         f"({clock.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC): {listed}"
                         f"{', ...' if len(rows) > LISTED_KEYS else ''}. They are applied, and read again on every "
                         f"poll until then; correct their {column}")]

    def _rows_from(self, conn: sa.Connection, table: str, unit: str, start: float):
        """(key, stamp, instant) of the rows whose instant may be at or after ``start``."""
        column, key, info = self.options.column, self.keys[table], self.describe(table)
        plain = sa.table(table, *[sa.column(c) for c in info.column_names])
        instant = self.instant_expression(plain.c[column], self._column(table))
        query = sa.select(*[plain.c[k] for k in key], plain.c[column], instant.label(INSTANT)) \
            .where(self._window(table, unit, plain, instant, start))
        for row in conn.execute(query):
            row_key = tuple(row[:len(key)])
            yield row_key, row[len(key)], self._row_instant(table, unit, row[-1], row[len(key)], row_key)

    def _window(self, table: str, unit: str, plain: Any, instant: sa.ColumnElement,
                start: float | None) -> sa.ColumnElement:
        """Rows with a change time whose instant may be at or after ``start`` (a wider bound is
        filtered again in Python), and with it every stamp the database could not parse."""
        present = plain.c[self.options.column].isnot(None)
        if start is None:
            return present
        if unit in ("time", "wall") and not self.parses_text_stamps:
            bound = self.bind_stamp(start, self._column(table))
        elif unit in EPOCH_UNITS:
            bound = math.floor(start * EPOCH_UNITS[unit])
        else:
            bound = start
        within = instant >= bound
        return sa.and_(present, sa.or_(within, instant.is_(None)) if self.parses_text_stamps else within)

    # -- the checkpoint --------------------------------------------------------------
    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """SourceError when a table's watermark is later than the source's clock (by more than the
        overlap): written before the watermark was capped, or edited; changes were skipped."""
        if not isinstance(position, dict):
            return
        with self.engine.connect() as conn:
            clock = self.source_clock(conn)
        for table, mark in position.items():
            if table not in self.keys or not isinstance(mark, dict) or self._unit(table) == "counter":
                continue
            unit = self._unit(table)
            limit = self._now(unit, clock) + self.options.overlap_seconds
            stamps = [self._loaded(table, mark)["at"], self._shown_instant(table, unit, mark.get("ts"))]
            if any(at is not None and at > limit for at in stamps):
                raise SourceError(
                    f"pair {self.pair}: the checkpoint's watermark for {table} ({mark.get('ts')}) is later than the "
                    f"source's clock ({clock.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC): rows changed since were "
                    "skipped. Copy the tables again with `cdc run --resnapshot CONFIG`")

    def _shown_instant(self, table: str, unit: str, shown: Any) -> float | None:
        """The instant of a mark's "ts" (UTC text, or a number as stored), which may be edited apart from "at"."""
        return self._moment(shown, unit == "wall") if isinstance(shown, str) else self._instant(table, unit, shown)

    def _loaded(self, table: str, mark: dict | None) -> dict:
        """A table's mark with "at" and "seen" in instants; a mark written before instants (stamps as
        stored: text, or a number) is read with the column's unit."""
        mark = mark or {}
        if "at" in mark:
            return {"at": mark["at"], "seen": {tag: tuple(entry) for tag, entry in mark.get("seen", {}).items()}}
        unit = self._unit(table)
        def instant(stamp: Any) -> float | None:
            return self._instant(table, unit, stamp)
        return {"at": instant(mark.get("ts")),
                "seen": {tag: (entry[0], instant(entry[1])) for tag, entry in mark.get("seen", {}).items()}}

    def _stored(self, table: str, at: float | None, seen: dict) -> dict:
        """A table's mark as the checkpoint keeps it; "ts" shows "at" as text (UTC, or wall-clock time)."""
        unit = self._unit(table)
        shown = at
        if at is not None and unit != "counter":
            moment = dt.datetime.fromtimestamp(at, UTC)
            shown = (moment.replace(tzinfo=None) if unit == "wall" else moment).isoformat()
        return {"ts": shown, "at": at, "seen": {tag: list(entry) for tag, entry in seen.items()}}

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
        unit = self._unit(table)
        with self.engine.connect() as conn:
            clock = self.source_clock(conn)
            plain = sa.table(table, sa.column(self.options.column))
            instant = self.instant_expression(plain.c[0], self._column(table))
            newest = conn.execute(sa.select(sa.func.max(instant))).scalar()
        newest = self._capped(unit, self._instant(table, unit, newest), clock)
        return self._poll(table, self._stored(table, newest, {}), float("inf"))[1]

    # -- polling ---------------------------------------------------------------------
    def read(self, after: Position, max_changes: int) -> Batch:
        position = dict(after or {})
        changes: list[Change] = []
        for table in self.keys:
            found, position[table] = self._poll(table, position.get(table), max_changes - len(changes))
            changes += found
            if len(changes) >= max_changes:
                break
        return Batch(changes, position)

    def _poll(self, table: str, mark: dict | None, limit: float) -> tuple[list[Change], dict]:
        """Up to ``limit`` changed rows from the overlap window on, and the new mark (never past
        the source's clock, read before the rows)."""
        unit, mark = self._unit(table), self._loaded(table, mark)
        column, key, info = self.options.column, self.keys[table], self.describe(table)
        plain = sa.table(table, *[sa.column(c) for c in info.column_names])
        instant = self.instant_expression(plain.c[column], self._column(table))
        start = None if mark["at"] is None else mark["at"] - self.options.overlap_seconds
        seen, changes, newest, ahead = dict(mark["seen"]), [], mark["at"], []
        readers = [(n, self.reader(c)) for n, c in zip(info.column_names, info.columns)]
        with self.engine.connect() as conn:
            clock = self.source_clock(conn)
            self._log_nulls(conn, table)
            query = sa.select(*self.selected(info, plain), instant.label(INSTANT)) \
                .where(self._window(table, unit, plain, instant, start)) \
                .order_by(instant, *[plain.c[k] for k in key])
            for raw in conn.execute(query):
                row = {n: read(v) for (n, read), v in zip(readers, raw)}
                row_key = tuple(row[k] for k in key)
                moment = self._row_instant(table, unit, raw._mapping[INSTANT], raw._mapping[column], row_key)
                if start is not None and moment < start:
                    continue  # a bound in whole units (epoch) reads a little more than the window
                tag = dumps(list(row_key))
                digest = hashlib.blake2b(dumps(row).encode(), digest_size=8).hexdigest()
                if seen.get(tag, (None,))[0] == digest:
                    continue
                if len(changes) >= limit:
                    break
                seen[tag] = (digest, moment)
                newest = moment if newest is None or moment > newest else newest
                stamp = stamp_text(raw._mapping[column])
                changes.append(self._change(table, row_key, row, stamp))
                if unit != "counter" and moment > self._now(unit, clock) + self.options.overlap_seconds:
                    ahead.append((row_key, stamp))
        if ahead:
            logger.warning("pair %s: %d row(s) of %s dated ahead of the source's clock (%s UTC) applied: %s; they are "
                           "read again on every poll until then (correct their %s)", self.pair, len(ahead), table,
                           f"{clock.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
                           ", ".join(f"{list(k)} {s}" for k, s in ahead[:LISTED_KEYS]), column)
        newest = self._capped(unit, newest, clock)
        if newest is not None:
            cutoff = newest - self.options.overlap_seconds
            seen = {tag: entry for tag, entry in seen.items() if entry[1] >= cutoff}
        return changes, self._stored(table, newest, seen)

    def _log_nulls(self, conn: sa.Connection, table: str) -> None:
        """Log the rows polling cannot see (change time NULL) when their count is new to this process."""
        count = self._null_count(conn, table)
        if count and count != self._logged_nulls.get(table):
            logger.warning("pair %s: %s", self.pair, self._null_findings(conn, table)[0][1])
        self._logged_nulls[table] = count

    def _change(self, table: str, key: tuple, row: dict, stamp: Any) -> Change:
        deleted = self.options.soft_delete and row.get(self.options.soft_delete)
        op = "delete" if deleted else "update"
        return Change(op, table, key, row if deleted else None, None if deleted else row, None, stamp)

    def pending(self, after: Position) -> int | None:
        return None

    def acknowledge(self, position: Position) -> None:
        """Nothing to release: polling holds nothing at the source."""
