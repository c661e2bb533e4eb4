"""The Source over SQLAlchemy Core that the capture modes build on."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any, Callable, Iterable, Iterator

import sqlalchemy as sa

from cdc.changes import Batch, Position, dumps, loads
from cdc.errors import SourceError

from .reads import KeyedReads, same


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


def kept_note(table: str, where: str = "triggers on") -> str:
    """What `cdc install` says of a table whose capture it kept (see Source.prepare)."""
    what = f"{table} {where}" if where.startswith("in ") else f"{where} {table}"
    return (f"kept {what}: no longer in the pair, but its checkpoint still streams it (run `cdc run --once "
            f"CONFIG`, then `cdc install CONFIG` again to take it down)")


class SqlSource(KeyedReads):
    """A Source over SQLAlchemy Core; a capture mode adds prepare/read/acknowledge."""

    #: Every stored value fits its column's declared type (not so in SQLite, whose NUMERIC(12,2)
    #: column can hold 3.005): then a target column of a type that holds them all needs no fit check.
    enforces_types = True

    def __init__(self, engine: sa.Engine, pair: str):
        self.engine = engine
        self.pair = pair
        self.keys: dict[str, tuple[str, ...]] = {}

    def watch(self, keys: dict[str, tuple[str, ...]]) -> None:
        """The tables this pair captures and the key columns that identify their rows."""
        self.keys = dict(keys)

    def format_position(self, position: Position) -> str:
        return dumps(position)

    #: Trigger capture: SQL for a number that changes whenever a capture trigger logs a change (the
    #: changelog's newest id), which ``idle`` asks every IDLE_CHECK seconds; None: idle just waits.
    changelog_mark: str | None = None

    def idle(self, seconds: float, stop: Any) -> None:
        """A polling capture learns of changes only by reading: it waits the whole poll interval. Trigger
        capture asks its changelog's newest id every IDLE_CHECK seconds (one indexed lookup, on one
        connection) and ends the wait as soon as it moves, so a change on an idle pair need not wait
        for the poll interval."""
        deadline = time.monotonic() + seconds
        if self.changelog_mark is not None:
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

    def caught_up(self) -> bool:
        """A read of these sources reads up to the log's end (a log connection kept open may not)."""
        return True

    def _changelog_mark(self, conn: sa.Connection) -> Any:
        try:
            return conn.exec_driver_sql(self.changelog_mark).scalar()
        finally:
            conn.rollback()  # each look its own short read: it holds no lock, and the next sees new commits

    def generation(self) -> str | None:
        """None: by default a capture mode installs nothing that could be re-created."""
        return None

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """By default any position is taken as it is."""

    def warnings(self) -> list[tuple[str, str]]:
        """By default a capture mode sees every row: nothing to warn about."""
        return []

    #: The table in which `cdc install` registers each pair a changelog serves (trigger capture).
    consumers_table = "_cdc_consumers"

    def _register_generation(self, conn: sa.Connection) -> None:
        """Give this pair's registration in the consumers table an identity (trigger capture), kept
        while the registration lives: `cdc uninstall` deletes it (and with the last pair the
        changelog), so the next `cdc install` makes a new one. Adds the column to an installation
        made before generations existed."""
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

    def _position_ahead(self, position: Position, newest: Any, what: str,
                        order: Callable[[Any], Any] = same) -> None:
        """SourceError when ``position`` lies beyond ``newest``, the newest the source ever issued
        (``order`` makes positions comparable)."""
        if position is not None and newest is not None and order(position) > order(newest):
            raise SourceError(
                f"pair {self.pair}: the checkpoint ({self.format_position(position)}) is ahead of {what} "
                f"({self.format_position(newest)}): capture was installed again, or the checkpoint was edited, and "
                "changes since are not where the checkpoint says. Copy the tables again with "
                "`cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed by "
                "`cdc reconcile CONFIG --repair`)")

    def _position_behind(self, position: Position, released: Any, what: str,
                         order: Callable[[Any], Any] = same) -> None:
        """SourceError when ``position`` lies before ``released``, the point up to which the source
        has already let go of its changes (purged the changelog, confirmed the slot): streaming
        from the checkpoint would silently skip what lies between.

        In normal operation the checkpoint commits before the source is acknowledged, so a crash
        between the two leaves the checkpoint ahead of ``released``, never behind it: behind means
        the target's state tables are older than the source believes (restored from a backup) or
        another target acknowledged this pair's changes meanwhile."""
        if position is not None and released is not None and order(position) < order(released):
            raise SourceError(
                f"pair {self.pair}: the checkpoint ({self.format_position(position)}) is behind {what} "
                f"({self.format_position(released)}): the changes in between are gone from the source (the target was "
                "restored from an older backup, or another target ran this pair meanwhile) and would be skipped. "
                "Copy the tables again with `cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed "
                "by `cdc reconcile CONFIG --repair`)")

    #: The column of ``consumers_table`` holding the position each pair has acknowledged (trigger capture).
    acknowledged_column = "acked"

    def _purged_through(self) -> Any:
        """Trigger capture: the position up to which the changelog is purged (or is at the next
        acknowledge of any pair): the lowest position a registered pair has acknowledged."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
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
        """Per pair, the tables `cdc install` registered in ``consumers_table`` (trigger capture)."""
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

    def _changelog_findings(self, conn: sa.Connection, changelog: str) -> list[tuple[str, str]]:
        """doctor's findings every trigger capture shares: not installed (fail, and nothing else is
        worth checking), else the changelog's size (warn past a million rows not yet applied)."""
        try:
            self._require_installed(conn)
        except SourceError as exc:
            return [("fail", str(exc))]
        size = conn.execute(sa.text(f"SELECT count(*) FROM {changelog}")).scalar()
        return [("warn" if size > 1_000_000 else "ok", f"changelog holds {size:,} row(s) not yet applied by every pair")]

    def _trigger_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """doctor's finding per table of the pair: its capture triggers log its changes (ok), or
        why they do not (fail, naming the fix)."""
        faults = self.trigger_faults(conn, list(self.keys))
        return [("fail", f"{table}: {faults[table]}: run `cdc install CONFIG`") if table in faults
                else ("ok", f"{table}: capture triggers installed") for table in self.keys]

    def begin_snapshot(self) -> Position:
        return self.current_position()

    def end_snapshot(self) -> None:
        pass

    #: Trigger capture: `cdc install` registers the pair's tables in ``consumers_table``.
    registers_tables = False

    def uncaptured(self, tables: list[str]) -> list[str]:
        """Trigger capture: the tables `cdc install` has not registered, or whose capture triggers
        are not in working order (see ``trigger_faults``); a capture that reads every table's
        changes (the binlog, timestamp polling) misses none."""
        if not self.registers_tables:
            return []
        with self.engine.connect() as conn:
            registered = self._registered(conn).get(self.pair, set())
            faults = self.trigger_faults(conn, [t for t in tables if t in registered])
        return [t for t in tables if t not in registered or t in faults]

    def trigger_faults(self, conn: sa.Connection, tables: list[str]) -> dict[str, str]:
        """Trigger capture: per table of ``tables`` whose changes its triggers do not log, why: a
        trigger is missing (the table was dropped and made again, say from a dump), is attached to
        another table (the table was renamed away and another renamed in its place), or does not
        fire for every session (disabled). One query; read-only."""
        return {}

    def join_stream(self, position: Position, tables: list[str]) -> Position:
        """Trigger capture: the tables must be registered by `cdc install` and their triggers in
        working order; a capture that reads every table's changes (the binlog) needs nothing more."""
        if self.registers_tables:
            with self.engine.connect() as conn:
                self._require_installed(conn)
                faults = self.trigger_faults(conn, tables)
            if faults:
                table, why = next(iter(faults.items()))
                raise SourceError(f"table {table} of pair {self.pair} is not covered by trigger capture, so its "
                                  f"changes are not captured ({why}): run `cdc install CONFIG`, then `cdc run` "
                                  "copies it")
        return position

    def stream(self, after: Position, max_changes: int) -> Iterator[Batch]:
        """The changes of one read in parts; only a part with ``complete`` set ends on a transaction
        boundary and carries the position. By default the whole read is one complete part."""
        yield self.read(after, max_changes)


#: Seconds between two looks at the changelog of an idle trigger-capture pair (see SqlSource.idle).
IDLE_CHECK = 0.2
