"""SQLite as a source: trigger capture through a changelog table, or timestamp polling."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import Any, Callable

import sqlalchemy as sa

from cdc.changes import Batch, Change, Position, dumps, loads
from cdc.errors import SourceError

from ..base import SqlSource, TableInfo
from . import sql, types

logger = logging.getLogger(__name__)


class SqliteSource(SqlSource):
    """Shared by both capture modes: reflection, snapshots, SQLite value conversion."""

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

    def prepare(self) -> list[str]:
        done = []
        with self.engine.begin() as conn:
            for statement in sql.CREATE_STATE:
                conn.exec_driver_sql(statement)
            for table in self.keys:
                for statement in sql.create_triggers(table, self.describe(table).columns):
                    conn.exec_driver_sql(statement)
                done.append(f"triggers on {table}")
            conn.exec_driver_sql(
                f"INSERT INTO {sql.CONSUMERS} (pair, tables) VALUES (?, ?) "
                "ON CONFLICT (pair) DO UPDATE SET tables = excluded.tables", (self.pair, dumps(sorted(self.keys))))
        return [f"changelog {sql.CHANGELOG}"] + done

    def unprepare(self) -> list[str]:
        removed = []
        with self.engine.begin() as conn:
            if not sa.inspect(conn).has_table(sql.CONSUMERS):
                return []
            conn.exec_driver_sql(f"DELETE FROM {sql.CONSUMERS} WHERE pair = ?", (self.pair,))
            still_used = {t for (tables,) in conn.exec_driver_sql(f"SELECT tables FROM {sql.CONSUMERS}")
                          for t in loads(tables)}
            for table in sorted(set(self.keys) - still_used):
                for statement in sql.drop_triggers(table):
                    conn.exec_driver_sql(statement)
                removed.append(f"triggers on {table}")
            if not still_used:
                for statement in sql.DROP_STATE:
                    conn.exec_driver_sql(statement)
                removed.append(f"changelog {sql.CHANGELOG}")
        return removed

    def diagnose(self) -> list[tuple[str, str]]:
        """(level, text) findings: capture installed, triggers present, changelog size."""
        with self.engine.connect() as conn:
            try:
                self._require_installed(conn)
            except SourceError as exc:
                return [("fail", str(exc))]
            names = {n for (n,) in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
            found = []
            for table in self.keys:
                missing = [t for op in sql.TRIGGER_SUFFIX if (t := sql.trigger_name(table, op)) not in names]
                found.append(("fail", f"{table}: trigger(s) {', '.join(missing)} missing: run `cdc install CONFIG`")
                             if missing else ("ok", f"{table}: capture triggers installed"))
            size = conn.exec_driver_sql(f"SELECT count(*) FROM {sql.CHANGELOG}").scalar()
            found.append(("warn" if size > 1_000_000 else "ok", f"changelog holds {size:,} row(s) not yet applied "
                                                                "by every pair"))
        return found

    def _require_installed(self, conn: sa.Connection) -> None:
        row = conn.exec_driver_sql(f"SELECT tables FROM {sql.CONSUMERS} WHERE pair = ?", (self.pair,)).first() \
            if sa.inspect(conn).has_table(sql.CONSUMERS) else None
        if row is None or not set(self.keys) <= set(loads(row[0])):
            raise SourceError(f"capture is not installed for pair {self.pair}: run `cdc install CONFIG`")

    def current_position(self) -> Position:
        with self.engine.connect() as conn:
            self._require_installed(conn)
            return conn.exec_driver_sql(
                f"SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{sql.CHANGELOG}'), 0)").scalar()

    def read(self, after: Position, max_changes: int) -> Batch:
        after = after or 0
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {sql.EPOCH} SET n = n + 1")
            epoch = conn.exec_driver_sql(f"SELECT n FROM {sql.EPOCH}").scalar()
        tables = ", ".join("?" * len(self.keys))
        query = (f"SELECT id, txid, tbl, op, before, after, changed_at FROM {sql.CHANGELOG} "
                 f"WHERE id > ? AND txid < ? AND tbl IN ({tables}) ORDER BY id")
        with self.engine.connect() as conn:
            self._require_installed(conn)
            rows = conn.exec_driver_sql(query + " LIMIT ?", (after, epoch, *self.keys, max_changes)).all()
            if len(rows) == max_changes:
                # A batch ends on a transaction boundary: take the rest of the last transaction.
                rest = query.replace("txid < ?", "txid = ?")
                rows += conn.exec_driver_sql(rest, (rows[-1].id, rows[-1].txid, *self.keys)).all()
        return Batch([self._change(row) for row in rows], rows[-1].id if rows else after)

    def _change(self, row: Any) -> Change:
        readers = self._log_readers(row.tbl)
        before, after = (self._image(loads(text), readers) for text in (row.before, row.after))
        key_source = after if after is not None else before
        key = tuple(key_source[k] for k in self.keys[row.tbl])
        committed = dt.datetime.fromisoformat(row.changed_at).replace(tzinfo=dt.timezone.utc)
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


class TimestampSource(SqliteSource):
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
                newest = conn.execute(sa.select(sa.func.max(plain.c[0]))).scalar()
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
            query = query.where(plain.c[column] >= _minus(mark["ts"], self.options.overlap_seconds))
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
                stamp = raw._mapping[column]
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


def _minus(stamp: Any, seconds: float) -> Any:
    """``stamp`` minus the overlap, in the same representation (number or ISO text)."""
    if isinstance(stamp, (int, float)):
        return stamp - seconds
    text = str(stamp)
    moment = dt.datetime.fromisoformat(text) - dt.timedelta(seconds=seconds)
    return moment.isoformat(sep="T" if "T" in text else " ")
