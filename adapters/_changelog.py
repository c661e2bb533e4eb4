"""Capture `trigger` for any SQL source: the one changelog capture; each adapter's trigger.py holds its hooks."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any, Callable, ContextManager, Generator, Iterable, Iterator

import sqlalchemy as sa

from cdc.changes import Batch, Change, Position, dumps, loads
from cdc.errors import SourceError, TransformError

from ._sql import SqlSource, kept_note

__all__ = ["IDLE_CHECK", "ChangelogCapture", "kept_note", "trigger_fault"]

#: Seconds between two looks at the changelog of an idle pair (see ChangelogCapture.idle).
IDLE_CHECK = 0.2


def trigger_fault(table: str, names: list[str], attached: dict[str, str]) -> str | None:
    """Why the capture triggers ``names`` of ``table`` do not log its changes, given the table each
    existing trigger is attached to (``attached``: trigger name -> table); None when all are on it.
    Table names compare without letter case (SQLite and MySQL may store them as first written)."""
    missing = [name for name in names if name not in attached]
    if missing:
        return f"trigger{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing (table dropped and made again?)"
    elsewhere = sorted({attached[n] for n in names if attached[n].casefold() != table.casefold()})
    if elsewhere:
        return (f"its triggers are attached to table {', '.join(elsewhere)} (the table was renamed and another "
                "put in its place?)")
    return None


class Consumers(SqlSource):
    """Each pair a changelog serves is registered in ``consumers_table`` with its tables, an
    identity (generation) and the position it has acknowledged; the changelog is purged below the
    lowest acknowledged position, so one changelog serves every pair of the database."""

    #: The table in which `cdc install` registers each pair a changelog serves.
    consumers_table = "_cdc_consumers"
    #: The column of ``consumers_table`` holding the position each pair has acknowledged.
    acknowledged_column = "acked"
    #: The dialect's upsert of a pair's registration (SQLAlchemy text; binds :pair and :tables).
    register_sql = ""

    def _register(self, conn: sa.Connection, kept: list[str]) -> None:
        """Register the pair with its tables and those it keeps (idempotent), and give it an identity."""
        conn.execute(sa.text(self.register_sql), {"pair": self.pair, "tables": dumps(sorted({*self.keys, *kept}))})
        self._register_generation(conn)

    def _register_generation(self, conn: sa.Connection) -> None:
        """Give this pair's registration in the consumers table an identity, kept while the
        registration lives: `cdc uninstall` deletes it (and with the last pair the changelog), so
        the next `cdc install` makes a new one. Adds the column to an installation made before
        generations existed."""
        columns = {c["name"] for c in sa.inspect(conn).get_columns(self.consumers_table)}
        if "generation" not in columns:
            conn.exec_driver_sql(f"ALTER TABLE {self.consumers_table} ADD COLUMN generation VARCHAR(100)")
        conn.execute(sa.text(f"UPDATE {self.consumers_table} SET generation = :generation "
                             "WHERE pair = :pair AND generation IS NULL"),
                     {"generation": uuid.uuid4().hex, "pair": self.pair})

    def _registered_generation(self) -> str | None:
        """This pair's registration identity (None for an installation older than generations)."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            columns = {c["name"] for c in sa.inspect(conn).get_columns(self.consumers_table)}
            if "generation" not in columns:
                return None
            return conn.execute(sa.text(f"SELECT generation FROM {self.consumers_table} WHERE pair = :pair"),
                                {"pair": self.pair}).scalar()

    def _purged_through(self) -> Any:
        """The position up to which the changelog is purged (or is at the next acknowledge of any
        pair): the lowest position a registered pair has acknowledged."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            return self._acknowledged_by_all(conn)

    def _acknowledged_by_all(self, conn: sa.Connection) -> Any:
        """The lowest position a registered pair has acknowledged (None with no pair registered)."""
        return conn.execute(sa.text(f"SELECT min({self.acknowledged_column}) FROM {self.consumers_table}")).scalar()

    def _require_installed(self, conn: sa.Connection) -> None:
        """SourceError unless `cdc install` registered this pair, with every one of its tables."""
        row = None
        if sa.inspect(conn).has_table(self.consumers_table):
            row = conn.execute(sa.text(f"SELECT tables FROM {self.consumers_table} WHERE pair = :pair"),
                               {"pair": self.pair}).first()
        registered = () if row is None else row[0] if isinstance(row[0], list) else loads(row[0])  # jsonb or text
        if row is None or not set(self.keys) <= set(registered):
            missing = sorted(set(self.keys) - set(registered))
            raise SourceError(f"capture is not installed for pair {self.pair}: run `cdc install CONFIG` "
                              f"(table{'s' if len(missing) > 1 else ''} without capture: {', '.join(missing)})")

    def _registered(self, conn: sa.Connection) -> dict[str, set[str]]:
        """Per pair, the tables `cdc install` registered in ``consumers_table``."""
        if not sa.inspect(conn).has_table(self.consumers_table):
            return {}
        rows = conn.execute(sa.text(f"SELECT pair, tables FROM {self.consumers_table}")).all()
        return {pair: set(tables if isinstance(tables, list) else loads(tables)) for pair, tables in rows}

    def _no_longer_captured(self, conn: sa.Connection, keep: Iterable[str] = ()) -> list[str]:
        """Tables this pair registered before but no longer copies, that no other pair captures,
        that still exist and that are not to be kept: their triggers must go, or they log changes
        for nobody (and fail the table's writes once `cdc uninstall` dropped the changelog)."""
        registered = self._registered(conn)
        others = set().union(*[tables for pair, tables in registered.items() if pair != self.pair])
        gone = registered.get(self.pair, set()) - set(self.keys) - others - set(keep)
        return sorted(t for t in gone if sa.inspect(conn).has_table(t))

    def _kept(self, conn: sa.Connection, keep: Iterable[str]) -> list[str]:
        """The tables of ``keep`` this pair registered before: their triggers stay, and so does
        their registration, so a later `cdc install` still knows to take them down."""
        return sorted(set(keep) & self._registered(conn).get(self.pair, set()) - set(self.keys))

    def _unregister(self, conn: sa.Connection) -> set[str]:
        """Delete this pair's registration; the tables the pairs still registered capture."""
        conn.execute(sa.text(f"DELETE FROM {self.consumers_table} WHERE pair = :pair"), {"pair": self.pair})
        self._commit(conn)
        return set().union(*self._registered(conn).values())

    def _commit(self, conn: sa.Connection) -> None:
        """End the step so far (a dialect whose install runs outside one transaction commits here)."""


class Coverage(Consumers):
    """A table is covered when `cdc install` registered it and its capture triggers log its changes."""

    #: The changelog table the capture triggers fill.
    changelog = "_cdc_changelog"

    def trigger_faults(self, conn: sa.Connection, tables: list[str]) -> dict[str, str]:
        """Per table of ``tables`` whose changes its triggers do not log, why: a trigger is missing
        (the table was dropped and made again, say from a dump), is attached to another table (the
        table was renamed away and another renamed in its place), or does not fire for every
        session (disabled). One query; read-only. The dialect's hook."""
        raise NotImplementedError

    def uncaptured(self, tables: list[str]) -> list[str]:
        """The tables `cdc install` has not registered, or whose capture triggers are not in working
        order (see ``trigger_faults``)."""
        with self.engine.connect() as conn:
            registered = self._registered(conn).get(self.pair, set())
            faults = self.trigger_faults(conn, [t for t in tables if t in registered])
        return [t for t in tables if t not in registered or t in faults]

    def join_stream(self, position: Position, tables: list[str]) -> Position:
        """The tables must be registered by `cdc install` and their triggers in working order."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            faults = self.trigger_faults(conn, tables)
        if faults:
            table, why = next(iter(faults.items()))
            raise SourceError(f"table {table} of pair {self.pair} is not covered by trigger capture, so its "
                              f"changes are not captured ({why}): run `cdc install CONFIG`, then `cdc run` "
                              "copies it")
        return position

    def diagnose(self) -> list[tuple[str, str]]:
        """(level, text) findings: capture installed (else nothing more is checked), each table's
        triggers, the changelog's size, then what holds the read horizon back."""
        with self.engine.connect() as conn:
            shared = self._changelog_findings(conn)
            if shared[0][0] == "fail":
                return shared
            found = self.table_findings(conn) + shared + self.horizon_findings(conn)
        return found + self.database_findings()

    def table_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """doctor's finding per table of the pair: its capture triggers log its changes (ok), or
        why they do not (fail, naming the fix)."""
        faults = self.trigger_faults(conn, list(self.keys))
        return [("fail", f"{table}: {faults[table]}: run `cdc install CONFIG`") if table in faults
                else ("ok", f"{table}: capture triggers installed") for table in self.keys]

    def horizon_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """The dialect's findings on what keeps a read from reaching recent changes (none by default)."""
        return []

    def database_findings(self) -> list[tuple[str, str]]:
        """The dialect's findings on the database itself, each on its own connection (none by default)."""
        return []

    def _changelog_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """Not installed (fail, and nothing else is worth checking), else the changelog's size
        (warn past a million rows not yet applied)."""
        try:
            self._require_installed(conn)
        except SourceError as exc:
            return [("fail", str(exc))]
        size = conn.execute(sa.text(f"SELECT count(*) FROM {self.changelog}")).scalar()
        level = "warn" if size > 1_000_000 else "ok"
        return [(level, f"changelog holds {size:,} row(s) not yet applied by every pair")]


class ChangelogCapture(Coverage):
    """Capture `trigger`: AFTER triggers write before/after images to a changelog table that every
    pair of the database reads; a pair acknowledges what its target committed, and the changelog
    is purged below what every pair acknowledged.

    A dialect supplies its SQL (the class attributes below), how its triggers are made and dropped,
    its read horizon (``current_position`` and ``changelog_rows``: where a read may stop so that it
    ends on a source transaction boundary and misses no transaction that commits late) and how a
    logged image becomes the change model's values (``image_readers``, ``parse_image``).
    Its bases: ``Consumers`` (the table in which `cdc install` registers each pair a changelog
    serves) and ``Coverage`` (whether the triggers log a table's changes: doctor, status, join).
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

    def lock_captured(self, conn: sa.Connection, tables: list[str]) -> None:
        """Lock the tables whose triggers install or uninstall changes, before the changelog (the
        application's writes lock a table, then the changelog: the other order deadlocks with them)."""

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
            kept, gone = self._kept(conn, keep), self._no_longer_captured(conn, keep)
            self.lock_captured(conn, list(self.keys) + gone)
            removed = [f"removed {self.triggers_noun} on {table} (no longer in the pair)"
                       for table in self._take_down(conn, gone)]
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
            self.lock_captured(conn, sorted(mine - still))
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
    """The logged image with its values read as their columns' types; a value its reader refuses
    (the text 'abc' SQLite keeps in a NUMERIC column) stays as it was logged, for the target's fit
    check to refuse by table, key and column: that change is parked, the pair goes on."""
    try:
        return {name: readers[name](value) if name in readers else value for name, value in image.items()}
    except TransformError:
        return {name: _read_or_keep(readers.get(name), value) for name, value in image.items()}


def _read_or_keep(reader: Callable[[Any], Any] | None, value: Any) -> Any:
    try:
        return value if reader is None else reader(value)
    except TransformError:
        return value
