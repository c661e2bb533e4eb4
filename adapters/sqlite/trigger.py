"""SQLite capture `trigger`: AFTER triggers log JSON images with the epoch the writer's transaction belongs to.

Position: the id of the last changelog row applied (an int, 0 before the first). Writers are
serialised in SQLite, so every row one transaction logs carries the same epoch; a read seals the
epoch by bumping it and reads only older epochs, which are committed whole.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Generator

import sqlalchemy as sa

from cdc.changes import Position
from cdc.errors import SourceError

from .._changelog import ChangelogCapture, trigger_fault
from . import sql, types
from .source import SqliteSource

#: How much later than the checkpoint's commit the row it ends at may have been logged (the target's
#: and the source's clocks may differ) before the source counts as restored from an older copy.
RESTORE_SLACK = dt.timedelta(seconds=5)


def _replace_findings(conn: sa.Connection, table: str) -> list[tuple[str, str]]:
    """A warning for each UNIQUE constraint or index besides the primary key: a REPLACE (INSERT OR
    REPLACE, ON CONFLICT REPLACE) that removes another row through it fires that row's delete
    trigger only when the writing connection has PRAGMA recursive_triggers = ON, so the delete
    would not be captured."""
    found = []
    for index in conn.exec_driver_sql(sql.index_list(table)).mappings():
        if index["unique"] and index["origin"] != "pk":
            columns = [c["name"] for c in conn.exec_driver_sql(sql.index_info(index["name"])).mappings()]
            found.append(("warn", f"{table}: UNIQUE ({', '.join(columns)}): a REPLACE or INSERT OR REPLACE that "
                                  f"removes another row through it is captured only when the writing connection sets "
                                  f"PRAGMA recursive_triggers = ON (SQLite fires no delete trigger otherwise, and the "
                                  f"removed row stays in the target: `cdc reconcile --repair` finds it)"))
    return found


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


class TriggerSource(ChangelogCapture, SqliteSource):
    """The shared changelog capture with SQLite's triggers, epochs and checks of the changelog ids."""

    database_findings = SqliteSource.database_findings  # before the shared capture's none

    changelog = sql.CHANGELOG
    changelog_mark = sql.NEWEST_ID
    create_state = sql.CREATE_STATE
    drop_state = sql.DROP_STATE
    register_sql = sql.REGISTER
    acknowledge_sql = sql.ACKNOWLEDGE
    purge_sql = sql.PURGE
    acknowledged_column = "acked_id"

    # -- install ----------------------------------------------------------------------
    def drop_triggers(self, table: str) -> list[str]:
        return sql.drop_triggers(table)

    def install_triggers(self, conn: sa.Connection, tables: list[str]) -> None:
        for table in tables:
            for statement in sql.create_triggers(table, self.describe(table).columns):
                conn.exec_driver_sql(statement)

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

    def table_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """The shared trigger findings, and a warning per UNIQUE index a REPLACE may delete through."""
        found = super().table_findings(conn)
        for table in self.keys:
            found += _replace_findings(conn, table)
        return found

    # -- positions --------------------------------------------------------------------
    def current_position(self) -> Position:
        with self.engine.connect() as conn:
            self._require_installed(conn)
            return conn.exec_driver_sql(sql.NEWEST_ID).scalar()

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
            acked = conn.exec_driver_sql(sql.ACKNOWLEDGED, (self.pair,)).scalar()
            if acked is not None and acked >= position:
                return
            logged = conn.exec_driver_sql(sql.LOGGED_AT, (position,)).scalar()
        if logged is not None and _utc(logged) > written_at + RESTORE_SLACK:
            raise SourceError(
                f"pair {self.pair}: the changelog row the checkpoint ends at ({position}) was logged at {logged} UTC, "
                f"after the checkpoint was written ({written_at:%Y-%m-%d %H:%M:%S} UTC): the source database was "
                "restored from an older copy and its changelog ids were handed out again, so the changes under them "
                "would be skipped. Copy the tables again with `cdc run --resnapshot CONFIG` (rows deleted meanwhile "
                "are then removed by `cdc reconcile CONFIG --repair`)")

    def _require_same(self, conn: sa.Connection, after: int) -> int:
        """SourceError when, since this process verified the checkpoint, capture was installed again
        (another generation) or the changelog went back behind ``after`` (the database restored from
        an older copy, which hands out the ids again): a running pair stops at its next read, rather
        than skip the changes under the reused ids or stream from another installation."""
        self._require_installed(conn)
        known = getattr(self, "_generation", None)
        if known is not None:
            now = conn.exec_driver_sql(sql.GENERATION, (self.pair,)).scalar()
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

    def _require_whole(self, conn: sa.Connection, after: int, through: int) -> None:
        """SourceError unless the changelog holds every id in (after, through]: SQLite hands out
        AUTOINCREMENT ids without holes (a rolled-back insert takes its id back), and we purge only
        ids every pair has acknowledged, so a hole is rows deleted by hand, changes lost for good.
        Ids up to that acknowledged point are not looked at: they are purged by right (a process that
        lost the pair to another, say, reads behind what the new holder acknowledged; its fence stops it)."""
        after = max(after, self._acknowledged_by_all(conn) or 0)
        if through <= after:
            return
        held = conn.exec_driver_sql(sql.HELD, (after, through)).scalar()
        if held != through - after:
            raise SourceError(
                f"pair {self.pair}: {through - after - held} of the changelog rows {after + 1}..{through} are missing "
                f"from {sql.CHANGELOG} (deleted by hand?): those changes are lost. Copy the tables again with "
                "`cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed by "
                "`cdc reconcile CONFIG --repair`)")

    # -- the read horizon: sealed epochs ------------------------------------------------
    def changelog_rows(self, after: Position, max_changes: int) -> Generator[Any, None, Position]:
        """Up to ``max_changes`` changes and the rest of the last transaction group, each query its
        own short read, so writers are never held up."""
        after = after or 0
        with self.engine.connect() as conn:  # its own read: a deferred transaction that reads before it
            newest = self._require_same(conn, after)  # writes gets "database is locked" at once instead of waiting
        if newest <= after:  # nothing logged since: no epoch to seal (a write that waits for the writers' lock)
            return after
        with self.engine.begin() as conn:
            conn.exec_driver_sql(sql.SEAL[0])
            epoch = conn.exec_driver_sql(sql.SEAL[1]).scalar()
        with self.engine.connect() as conn:
            self._require_installed(conn)
            rows = self._rows(conn, sql.read_rows(len(self.keys), rest=False), after, epoch, max_changes)
        while len(rows) == max_changes:
            # A batch ends on a transaction boundary: the rest of the last group follows in parts.
            yield from rows
            last = rows[-1]
            with self.engine.connect() as conn:
                rows = self._rows(conn, sql.read_rows(len(self.keys), rest=True), last.id, last.txid, max_changes)
            after = last.id
        yield from rows
        return rows[-1].id if rows else after

    def _rows(self, conn: sa.Connection, query: str, after: int, epoch: int, limit: int) -> list[Any]:
        """The rows of one query, every id between ``after`` and the last of them present."""
        rows = conn.exec_driver_sql(query, (after, epoch, *self.keys, limit)).all()
        if rows:
            self._require_whole(conn, after, rows[-1].id)
        return rows

    def image_readers(self, table: str) -> dict[str, Callable[[Any], Any]]:
        info = self.describe(table)
        return {name: types.log_reader(c) for name, c in zip(info.column_names, info.columns)}

    def committed_at(self, row: Any) -> dt.datetime:
        return _utc(row.changed_at)

    def count_pending(self, conn: sa.Connection, after: Position) -> int:
        return conn.exec_driver_sql(sql.pending(len(self.keys)), (after or 0, *self.keys)).scalar()
