"""SQLite as a source: trigger capture through a changelog table, or timestamp polling."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Callable, Iterable, Iterator

import sqlalchemy as sa

from cdc.changes import Batch, Change, Position, dumps, loads
from cdc.errors import SourceError

from .._timestamp import TimestampCapture
from ..base import TableInfo
from .._sql import SqlSource, kept_note, trigger_fault
from . import sql, types

logger = logging.getLogger(__name__)

#: How much later than the checkpoint's commit the row it ends at may have been logged (the target's
#: and the source's clocks may differ) before the source counts as restored from an older copy.
RESTORE_SLACK = dt.timedelta(seconds=5)


def _replace_findings(conn: sa.Connection, table: str) -> list[tuple[str, str]]:
    """A warning for each UNIQUE constraint or index besides the primary key: a REPLACE (INSERT OR
    REPLACE, ON CONFLICT REPLACE) that removes another row through it fires that row's delete
    trigger only when the writing connection has PRAGMA recursive_triggers = ON, so the delete
    would not be captured."""
    found = []
    for index in conn.exec_driver_sql(f'PRAGMA index_list("{table}")').mappings():
        if index["unique"] and index["origin"] != "pk":
            columns = [c["name"] for c in conn.exec_driver_sql(f'PRAGMA index_info("{index["name"]}")').mappings()]
            found.append(("warn", f"{table}: UNIQUE ({', '.join(columns)}): a REPLACE or INSERT OR REPLACE that "
                                  f"removes another row through it is captured only when the writing connection sets "
                                  f"PRAGMA recursive_triggers = ON (SQLite fires no delete trigger otherwise, and the "
                                  f"removed row stays in the target: `cdc reconcile --repair` finds it)"))
    return found


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


class SqliteSource(SqlSource):
    """Shared by both capture modes: reflection, snapshots, SQLite value conversion."""

    enforces_types = False  # a column's declared type does not limit what it stores

    def reader(self, column: sa.Column) -> Callable[[Any], Any]:
        return types.reader(column)

    def describe(self, table: str) -> TableInfo:
        info = super().describe(table)
        for column in info.columns:
            if type(column.type) in (sa.Integer, sa.INTEGER):
                # SQLite integers are 64-bit: another target must declare them BIGINT.
                column.type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
        return info


class TriggerSource(SqliteSource):
    """Capture `trigger`: AFTER triggers write before/after images to a changelog table.

    Position: the id of the last changelog row applied (an int, 0 before the first).
    """

    registers_tables = True
    changelog_mark = sql.NEWEST_ID

    def prepare(self, keep: Iterable[str] = ()) -> list[str]:
        done, removed = [], []
        with self.engine.begin() as conn:
            kept = self._kept(conn, keep)
            for table in self._no_longer_captured(conn, keep):
                for statement in sql.drop_triggers(table):
                    conn.exec_driver_sql(statement)
                removed.append(f"removed triggers on {table} (no longer in the pair)")
            for statement in sql.CREATE_STATE:
                conn.exec_driver_sql(statement)
            for table in self.keys:
                for statement in sql.create_triggers(table, self.describe(table).columns):
                    conn.exec_driver_sql(statement)
                done.append(f"triggers on {table}")
            conn.exec_driver_sql(
                f"INSERT INTO {sql.CONSUMERS} (pair, tables) VALUES (?, ?) "
                "ON CONFLICT (pair) DO UPDATE SET tables = excluded.tables", (self.pair, dumps(sorted({*self.keys, *kept}))))
            self._register_generation(conn)
        return [f"changelog {sql.CHANGELOG}"] + done + removed + [kept_note(t) for t in kept]

    def generation(self) -> str | None:
        """The identity `cdc install` gave this pair's registration with the changelog; every read
        after this checks it is still the same (see _require_same)."""
        self._generation = self._registered_generation()
        return self._generation

    def _require_same(self, conn: sa.Connection, after: int) -> int:
        """SourceError when, since this process verified the checkpoint, capture was installed again
        (another generation) or the changelog went back behind ``after`` (the database restored from
        an older copy, which hands out the ids again): a running pair stops at its next read, rather
        than skip the changes under the reused ids or stream from another installation."""
        self._require_installed(conn)
        known = getattr(self, "_generation", None)
        if known is not None:
            now = conn.exec_driver_sql(f"SELECT generation FROM {sql.CONSUMERS} WHERE pair = ?", (self.pair,)).scalar()
            if now != known:
                raise SourceError(
                    f"pair {self.pair}: capture was installed again while the pair ran (installation {known}, now "
                    f"{now or 'none'}): changes made in between were not captured. Copy the tables again with "
                    "`cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed by "
                    "`cdc reconcile CONFIG --repair`)")
        newest = conn.exec_driver_sql(sql.NEWEST_ID).scalar()
        self._position_ahead(after, newest, "the newest changelog id the source has issued (the database was restored "
                                            "from an older copy?)")
        return newest

    acknowledged_column = "acked_id"

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """SourceError when the checkpoint is past the newest changelog id ever handed out (AUTOINCREMENT
        never reuses one; a changelog made again by `cdc install` starts from 1), or before the ids
        every pair has acknowledged, which the changelog no longer holds; when changelog rows after it
        were deleted (by hand: our purge never passes an acknowledged id); or when the row the
        checkpoint ends at, not yet acknowledged, was logged after ``written_at`` (the checkpoint's
        commit time): the source was restored from an older copy and its ids were handed out again."""
        newest = self.current_position()
        self._position_ahead(position, newest, "the newest changelog id the source ever issued")
        self._position_behind(position or 0, self._purged_through(),
                              "the changelog ids every pair has acknowledged, purged from the changelog")
        with self.engine.connect() as conn:
            self._require_whole(conn, position or 0, newest)
            if written_at is None or not position:
                return
            acked = conn.exec_driver_sql(f"SELECT acked_id FROM {sql.CONSUMERS} WHERE pair = ?", (self.pair,)).scalar()
            if acked is not None and acked >= position:
                return
            logged = conn.exec_driver_sql(f"SELECT changed_at FROM {sql.CHANGELOG} WHERE id = ?", (position,)).scalar()
        if logged is not None and _utc(logged) > written_at + RESTORE_SLACK:
            raise SourceError(
                f"pair {self.pair}: the changelog row the checkpoint ends at ({position}) was logged at {logged} UTC, "
                f"after the checkpoint was written ({written_at:%Y-%m-%d %H:%M:%S} UTC): the source database was "
                "restored from an older copy and its changelog ids were handed out again, so the changes under them "
                "would be skipped. Copy the tables again with `cdc run --resnapshot CONFIG` (rows deleted meanwhile are "
                "then removed by `cdc reconcile CONFIG --repair`)")

    def _require_whole(self, conn: sa.Connection, after: int, through: int) -> None:
        """SourceError unless the changelog holds every id in (after, through]: SQLite hands out
        AUTOINCREMENT ids without holes (a rolled-back insert takes its id back), and we purge only
        ids every pair has acknowledged, so a hole is rows deleted by hand, changes lost for good.
        Ids up to that acknowledged point are not looked at: they are purged by right (a process that
        lost the pair to another, say, reads behind what the new holder acknowledged; its fence stops it)."""
        purged = conn.exec_driver_sql(f"SELECT min({self.acknowledged_column}) FROM {sql.CONSUMERS}").scalar() or 0
        after = max(after, purged)
        if through <= after:
            return
        held = conn.exec_driver_sql(f"SELECT count(*) FROM {sql.CHANGELOG} WHERE id > ? AND id <= ?",
                                    (after, through)).scalar()
        if held != through - after:
            raise SourceError(
                f"pair {self.pair}: {through - after - held} of the changelog rows {after + 1}..{through} are missing "
                f"from {sql.CHANGELOG} (deleted by hand?): those changes are lost. Copy the tables again with "
                "`cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed by "
                "`cdc reconcile CONFIG --repair`)")

    def unprepare(self) -> list[str]:
        removed = []
        with self.engine.begin() as conn:
            if not sa.inspect(conn).has_table(sql.CONSUMERS):
                return []
            mine = set(self.keys) | self._registered(conn).get(self.pair, set())  # tables removed from it too
            conn.exec_driver_sql(f"DELETE FROM {sql.CONSUMERS} WHERE pair = ?", (self.pair,))
            still_used = {t for (tables,) in conn.exec_driver_sql(f"SELECT tables FROM {sql.CONSUMERS}")
                          for t in loads(tables)}
            for table in sorted(mine - still_used):
                for statement in sql.drop_triggers(table):
                    conn.exec_driver_sql(statement)
                removed.append(f"triggers on {table}")
            if not still_used:
                for statement in sql.DROP_STATE:
                    conn.exec_driver_sql(statement)
                removed.append(f"changelog {sql.CHANGELOG}")
        return removed

    def diagnose(self) -> list[tuple[str, str]]:
        """(level, text) findings: capture installed, triggers present on their tables, changelog size."""
        with self.engine.connect() as conn:
            shared = self._changelog_findings(conn, sql.CHANGELOG)
            if shared[0][0] == "fail":
                return shared
            found = self._trigger_findings(conn)
            for table in self.keys:
                found += _replace_findings(conn, table)
            return found + shared

    def trigger_faults(self, conn: sa.Connection, tables: list[str]) -> dict[str, str]:
        """A table's three triggers must exist and be attached to it: renamed away, a table takes
        them along, and they go on logging changes under the old name."""
        attached = dict(conn.exec_driver_sql(sql.TRIGGERS).all())
        faults = {table: trigger_fault(table, sql.trigger_names(table), attached) for table in tables}
        texts = dict(conn.exec_driver_sql(sql.TRIGGER_TEXTS).all())
        for table in tables:
            if not faults[table] and self._stale(table, texts):
                faults[table] = ("its triggers log other columns than the table has now (a column was added, dropped "
                                 "or renamed since `cdc install`; SQLite rewrites a renamed column's trigger to log "
                                 "the new column under the old name)")
        return {table: why for table, why in faults.items() if why}

    def _stale(self, table: str, texts: dict[str, str]) -> bool:
        """Whether the table's triggers are not what `cdc install` would make for its columns now:
        SQLite keeps a trigger's text as it was written, rewritten only by RENAME COLUMN/TABLE."""
        wanted = [s for s in sql.create_triggers(table, self.describe(table).columns) if s.startswith("CREATE")]
        return [texts.get(name) for name in sql.trigger_names(table)] != wanted

    def current_position(self) -> Position:
        with self.engine.connect() as conn:
            self._require_installed(conn)
            return conn.exec_driver_sql(sql.NEWEST_ID).scalar()

    def read(self, after: Position, max_changes: int) -> Batch:
        parts = list(self.stream(after, max_changes))
        return Batch([c for p in parts for c in p.changes], parts[-1].position)

    def stream(self, after: Position, max_changes: int) -> Iterator[Batch]:
        """Up to ``max_changes`` changes and the rest of the last transaction group, in parts of at
        most ``max_changes``; each part is its own short read, so writers are never held up."""
        after = after or 0
        with self.engine.connect() as conn:  # its own read: a deferred transaction that reads before it
            newest = self._require_same(conn, after)  # writes gets "database is locked" at once instead of waiting
        if newest <= after:  # nothing logged since: no epoch to seal (a write that waits for the writers' lock)
            yield Batch([], after)
            return
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {sql.EPOCH} SET n = n + 1")
            epoch = conn.exec_driver_sql(f"SELECT n FROM {sql.EPOCH}").scalar()
        tables = ", ".join("?" * len(self.keys))
        query = (f"SELECT id, txid, tbl, op, before, after, changed_at FROM {sql.CHANGELOG} "
                 f"WHERE id > ? AND txid < ? AND tbl IN ({tables}) ORDER BY id LIMIT ?")
        rest = query.replace("txid < ?", "txid = ?")
        with self.engine.connect() as conn:
            self._require_installed(conn)
            rows = conn.exec_driver_sql(query, (after, epoch, *self.keys, max_changes)).all()
            if rows:
                self._require_whole(conn, after, rows[-1].id)
        while len(rows) == max_changes:
            # A batch ends on a transaction boundary: the rest of the last group follows in parts.
            yield Batch([self._change(row) for row in rows], None, complete=False)
            last = rows[-1]
            with self.engine.connect() as conn:
                rows = conn.exec_driver_sql(rest, (last.id, last.txid, *self.keys, max_changes)).all()
                if rows:
                    self._require_whole(conn, last.id, rows[-1].id)
            after = last.id
        yield Batch([self._change(row) for row in rows], rows[-1].id if rows else after)

    def _change(self, row: Any) -> Change:
        readers = self._log_readers(row.tbl)
        before, after = (self._image(loads(text), readers) for text in (row.before, row.after))
        key_source = after if after is not None else before
        key = tuple(key_source[k] for k in self.keys[row.tbl])
        committed = _utc(row.changed_at)
        return Change(row.op, row.tbl, key, before, after, committed, row.id, row.txid)

    def _log_readers(self, table: str) -> dict[str, Callable[[Any], Any]]:
        cache = self.__dict__.setdefault("_readers", {})
        if table not in cache:
            info = self.describe(table)
            cache[table] = {name: types.log_reader(c) for name, c in zip(info.column_names, info.columns)}
        return cache[table]

    @staticmethod
    def _image(raw: dict | None, readers: dict[str, Callable[[Any], Any]]) -> dict | None:
        if raw is None:
            return None
        return {name: readers[name](value) if name in readers else value for name, value in raw.items()}

    def pending(self, after: Position) -> int | None:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(sql.CHANGELOG):
                return None
            tables = ", ".join("?" * len(self.keys))
            return conn.exec_driver_sql(f"SELECT count(*) FROM {sql.CHANGELOG} WHERE id > ? AND tbl IN ({tables})",
                                        (after or 0, *self.keys)).scalar()

    def acknowledge(self, position: Position) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {sql.CONSUMERS} SET acked_id = max(acked_id, ?) WHERE pair = ?",
                                 (position or 0, self.pair))
            # Purge only what every pair reading this changelog has applied.
            conn.exec_driver_sql(f"DELETE FROM {sql.CHANGELOG} WHERE id <= (SELECT min(acked_id) FROM {sql.CONSUMERS})")


class TimestampSource(TimestampCapture, SqliteSource):
    """Capture `timestamp` on SQLite: the shared polling logic with SQLite's value conversion.

    SQLite keeps date/times as text, which compares as text: '2026-03-29 03:00:00+02:00' sorts after
    '2026-03-29 02:30:00+01:00' though it is earlier, and 'T' sorts after ' '. Every connection gets
    a function, ``cdc_instant(text)``, that reads an ISO 8601 date/time as epoch seconds (without a
    zone: in source_timezone) or gives NULL, so rows are ordered and bounded as instants and a value
    it cannot read stops the pair by key.
    """

    parses_text_stamps = True

    def __init__(self, engine: sa.Engine, pair: str, options: Any, source_zone: str = "UTC"):
        super().__init__(engine, pair, options, source_zone)
        sa.event.listen(engine, "connect", lambda dbapi_connection, record: dbapi_connection.create_function(
            sql.INSTANT_FUNCTION, 1, self._text_instant, deterministic=True))

    def wall_clock(self, column: sa.Column) -> bool:
        """Never: whatever the declared type, the stored text is compared as the instant it names."""
        return False

    def _text_instant(self, value: Any) -> float | None:
        return self._moment(value) if isinstance(value, str) else None

    def _window(self, table: str, unit: str, plain: Any, instant: sa.ColumnElement,
                start: float | None) -> sa.ColumnElement:
        """The shared window, after a test in C that lets through only rows that may be in it, so the
        registered function (Python) runs on those alone: julianday() reads the same ISO text, taking
        text without an offset as UTC (so the bound allows for source_timezone's offsets); a value it
        cannot read, or one that is not text, goes on to the function (and to an error)."""
        window = super()._window(table, unit, plain, instant, start)
        if unit != "time" or start is None:
            return window
        column = plain.c[self.options.column]
        year = dt.datetime.now(dt.timezone.utc).year
        west = min(0.0, *(dt.datetime(year, m, 1, tzinfo=self.zone).utcoffset().total_seconds() for m in (1, 7)))
        day = sa.func.julianday(column)
        maybe = sa.or_(sa.func.typeof(column) != "text", day.is_(None),
                       day >= (start + west - 1) / 86400 + sql.UNIX_EPOCH_JULIAN_DAY)  # 1 s for rounding
        return sa.and_(column.isnot(None), maybe, window)

    def instant_expression(self, column: sa.ColumnElement, info: sa.Column) -> sa.ColumnElement:
        """``cdc_instant(column)`` for ISO text; an epoch or counter column (timestamp.unit) as it is."""
        return column if self.options.unit else getattr(sa.func, sql.INSTANT_FUNCTION)(column)
