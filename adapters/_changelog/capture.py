"""The one trigger capture: triggers log row images to a changelog, read up to the dialect's horizon."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Callable, ContextManager, Generator, Iterable, Iterator

import sqlalchemy as sa

from cdc.changes import Batch, Change, Position, loads

from .._sql import kept_note
from .coverage import Coverage

#: Seconds between two looks at the changelog of an idle pair (see ChangelogCapture.idle).
IDLE_CHECK = 0.2


class ChangelogCapture(Coverage):
    """Capture `trigger`: AFTER triggers write before/after images to a changelog table that every
    pair of the database reads; a pair acknowledges what its target committed, and the changelog
    is purged below what every pair acknowledged.

    A dialect supplies its SQL (the class attributes below), how its triggers are made and dropped,
    its read horizon (``current_position`` and ``changelog_rows``: where a read may stop so that it
    ends on a source transaction boundary and misses no transaction that commits late) and how a
    logged image becomes the change model's values (``image_readers``, ``parse_image``).
    """

    #: SQL for a number that moves whenever a capture trigger logs a change (see ``idle``).
    changelog_mark = ""
    #: The statements that make (idempotent) and drop the changelog, its helpers and the consumers table.
    create_state: list[str] = []
    drop_state: list[str] = []
    #: SQLAlchemy text raising this pair's acknowledged position (binds :position and :pair).
    acknowledge_sql = ""
    #: SQL deleting the changelog rows every pair has acknowledged.
    purge_sql = ""
    #: How `cdc install`/`cdc uninstall` name one table's capture triggers.
    triggers_noun = "triggers"

    # -- the dialect's hooks ------------------------------------------------------------
    def drop_triggers(self, table: str) -> list[str]:
        """The statements dropping the capture triggers of ``table`` (idempotent)."""
        raise NotImplementedError

    def install_triggers(self, conn: sa.Connection, tables: list[str]) -> None:
        """Make (again) the capture triggers of ``tables``; SchemaError for a missing table."""
        raise NotImplementedError

    def changelog_rows(self, after: Position, max_changes: int) -> Generator[Any, None, Position]:
        """The changelog rows of the read after ``after``, in the order to apply them; returns the
        position the read ends at (its horizon). Rows need id, txid, tbl, op, before, after, changed_at."""
        raise NotImplementedError

    def image_readers(self, table: str) -> dict[str, Callable[[Any], Any]]:
        """Per column of ``table``, how a logged value becomes the change model's value."""
        raise NotImplementedError

    def parse_image(self, text: str) -> dict:
        """A logged image (JSON text) as a dict of logged values."""
        return loads(text)

    def committed_at(self, row: Any) -> dt.datetime:
        """When the change was logged, zone-aware."""
        return row.changed_at

    def count_pending(self, conn: sa.Connection, after: Position) -> int:
        """How many logged changes of the pair's tables lie after ``after``."""
        raise NotImplementedError

    def acknowledged(self, position: Position) -> Any:
        """The value of ``acknowledged_column`` that records ``position`` as applied."""
        return position or 0

    def purge(self, conn: sa.Connection) -> None:
        """Delete what every pair reading this changelog has applied."""
        conn.exec_driver_sql(self.purge_sql)

    def _session(self) -> ContextManager[sa.Connection]:
        """The connection install, uninstall and acknowledge run on: one transaction by default."""
        return self.engine.begin()

    # -- install ------------------------------------------------------------------------
    def prepare(self, keep: Iterable[str] = ()) -> list[str]:
        with self._session() as conn:
            kept = self._kept(conn, keep)
            removed = [f"removed {self.triggers_noun} on {table} (no longer in the pair)"
                       for table in self._take_down(conn, self._no_longer_captured(conn, keep))]
            for statement in self.create_state:
                conn.exec_driver_sql(statement)
            self._commit(conn)
            self.install_triggers(conn, list(self.keys))
            self._register(conn, kept)
            self._commit(conn)
        return [f"changelog {self.changelog}"] + [f"{self.triggers_noun} on {t}" for t in self.keys] + removed + \
            [kept_note(t) for t in kept]

    def unprepare(self) -> list[str]:
        with self._session() as conn:
            if not sa.inspect(conn).has_table(self.consumers_table):
                return []
            mine = set(self.keys) | self._registered(conn).get(self.pair, set())  # tables removed from it too
            still = self._unregister(conn)
            removed = [f"{self.triggers_noun} on {table}" for table in self._take_down(conn, sorted(mine - still))]
            if not still:
                for statement in self.drop_state:
                    conn.exec_driver_sql(statement)
                removed.append(f"changelog {self.changelog}")
            self._commit(conn)
        return removed

    def _take_down(self, conn: sa.Connection, tables: list[str]) -> list[str]:
        """Drop the capture triggers of ``tables``; the tables."""
        for table in tables:
            for statement in self.drop_triggers(table):
                conn.exec_driver_sql(statement)
        return tables

    def generation(self) -> str | None:
        """The identity `cdc install` gave this pair's registration with the changelog (remembered:
        a dialect may check at every read that it is still the same)."""
        self._generation = self._registered_generation()
        return self._generation

    # -- stream -------------------------------------------------------------------------
    def idle(self, seconds: float, stop: Any) -> None:
        """Ask the changelog's newest id every IDLE_CHECK seconds (one indexed lookup, on one
        connection) and end the wait as soon as it moves, so a change on an idle pair need not
        wait for the poll interval."""
        deadline = time.monotonic() + seconds
        try:
            with self.engine.connect() as conn:
                first = self._changelog_mark(conn)
                while not stop.wait(max(0.0, min(IDLE_CHECK, deadline - time.monotonic()))):
                    if time.monotonic() >= deadline or self._changelog_mark(conn) != first:
                        return
                return
        except sa.exc.DBAPIError:  # the source is away: the next read says so, and is retried
            pass
        stop.wait(max(0.0, deadline - time.monotonic()))

    def _changelog_mark(self, conn: sa.Connection) -> Any:
        try:
            return conn.exec_driver_sql(self.changelog_mark).scalar()
        finally:
            conn.rollback()  # each look its own short read: it holds no lock, and the next sees new commits

    def read(self, after: Position, max_changes: int) -> Batch:
        parts = list(self.stream(after, max_changes))
        return Batch([c for p in parts for c in p.changes], parts[-1].position)

    def stream(self, after: Position, max_changes: int) -> Iterator[Batch]:
        """The changes up to the read's horizon in parts of ``max_changes``; only the last part ends
        on a transaction boundary and carries the position."""
        rows = self.changelog_rows(after, max_changes)
        part: list[Change] = []
        while True:
            try:
                row = next(rows)
            except StopIteration as end:
                yield Batch(part, end.value)
                return
            part.append(self._change(row))
            if len(part) >= max_changes:
                yield Batch(part, None, complete=False)
                part = []

    def _change(self, row: Any) -> Change:
        readers = self._readers(row.tbl)
        before, after = (None if text is None else _decoded(self.parse_image(text), readers)
                         for text in (row.before, row.after))
        image = after if after is not None else before
        key = tuple(image[k] for k in self.keys[row.tbl])
        return Change(row.op, row.tbl, key, before, after, self.committed_at(row), row.id, row.txid)

    def _readers(self, table: str) -> dict[str, Callable[[Any], Any]]:
        cache = self.__dict__.setdefault("_image_readers", {})
        if table not in cache:
            cache[table] = self.image_readers(table)
        return cache[table]

    def pending(self, after: Position) -> int | None:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(self.changelog):
                return None
            return self.count_pending(conn, after)

    def acknowledge(self, position: Position) -> None:
        with self._session() as conn:
            conn.execute(sa.text(self.acknowledge_sql), {"position": self.acknowledged(position), "pair": self.pair})
            self._commit(conn)
            self.purge(conn)  # only what every pair reading this changelog has applied


def _decoded(image: dict, readers: dict[str, Callable[[Any], Any]]) -> dict:
    return {name: readers[name](value) if name in readers else value for name, value in image.items()}
