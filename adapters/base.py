"""The Source and Target contracts every adapter fulfils, and a base class for SQL targets.

Errors: RetryableError means "try again with back-off" (lock, lost connection);
RowError concerns one row (parked or fatal by the pair's on_error); every other
CdcError stops the pair with its message.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import itertools
import operator
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from cdc import state, values
from cdc._transforms import TransformError
from cdc.changes import ApplyResult, Batch, Position, Row, dumps, loads
from cdc.errors import RetryableError, RowError, SchemaError, SourceError, TargetError
from cdc.mapping import MappedChange, TargetOp

from . import _limits


def same(value: Any) -> Any:
    """The reader or writer of a value that needs no converting (recognised, and skipped, by identity)."""
    return value


_identity = same


def _nullable_only(column: sa.Column) -> Callable[[Any], Any]:
    """The fit check of a column whose values come from an identical column: only NOT NULL remains."""
    if column.nullable or column.primary_key:
        return _identity

    def check(value: Any) -> Any:
        if value is None:
            raise TransformError("NULL in a NOT NULL column")
        return value

    return check


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


@dataclass(frozen=True)
class TableInfo:
    """A table as reflected: its columns (SQLAlchemy Column objects) and primary key."""

    name: str
    columns: list[sa.Column]
    primary_key: tuple[str, ...]

    @property
    def column_names(self) -> list[str]:
        return [str(c.name) for c in self.columns]  # plain str: reflected names are str subclasses


class Source(Protocol):
    """Reads committed changes from one source database for one pair."""

    def describe(self, table: str) -> TableInfo:
        """The table's columns and primary key; SchemaError if it does not exist."""

    def watch(self, keys: dict[str, tuple[str, ...]]) -> None:
        """The tables to capture and their key columns; call before any other method but describe."""

    def prepare(self, keep: Iterable[str] = ()) -> list[str]:
        """Install what capture needs (idempotent); returns what it created. ``keep``: tables no
        longer in the pair whose capture stays, because the pair's checkpoint still streams them
        (see cdc.commands.install): taken down, their changes would be lost if they come back."""

    def unprepare(self) -> list[str]:
        """Remove what prepare installed for this pair and nothing else (idempotent)."""

    def current_position(self) -> Position:
        """The position a snapshot taken now joins the stream at (no gap, no loss)."""

    def begin_snapshot(self) -> Position:
        """Like current_position, for a first snapshot; a source that can make its snapshot reads
        see exactly that position (no overlap either) holds it until end_snapshot."""

    def end_snapshot(self) -> None:
        """Release what begin_snapshot holds (idempotent)."""

    def join_stream(self, position: Position, tables: list[str]) -> Position:
        """The stream position from which ``tables`` (watched, but not yet copied: the first
        snapshot, or tables added to a streaming pair) are captured too: their changes after the
        returned position are streamed, so a snapshot of them read after this call, with those
        changes applied over it, gives their current rows. Idempotent; SourceError naming
        `cdc install CONFIG` when capture does not cover them yet (nothing may be copied then)."""

    def uncaptured(self, tables: list[str]) -> list[str]:
        """The ones of ``tables`` whose changes capture does not see (trigger capture: not
        registered by `cdc install`, or a capture trigger missing, attached to another table or
        disabled; logical: not in the pair's publication); [] when it sees
        every table's changes. Read-only and idempotent (`cdc status` asks it); RetryableError
        on a passing fault."""

    def snapshot(self, table: str, key: tuple[str, ...], after_key: tuple | None, limit: int) -> list[Row]:
        """Up to ``limit`` rows after ``after_key`` in key order; short transactions, no long lock."""

    def read(self, after: Position, max_changes: int) -> Batch:
        """Committed changes after ``after`` in commit order, ending on a transaction boundary."""

    def stream(self, after: Position, max_changes: int) -> Iterator[Batch]:
        """Like read, in parts a large transaction is split into (bounded memory); the last part is complete."""

    def pending(self, after: Position) -> int | str | None:
        """How many changes wait after ``after``, or a description of the backlog (None: cannot tell)."""

    def format_position(self, position: Position) -> str:
        """A position as the database's own people write it (an LSN as X/Y, a changelog id)."""

    def acknowledge(self, position: Position) -> None:
        """Release what the target has committed up to ``position`` (idempotent)."""

    def generation(self) -> str | None:
        """The identity of the capture installation this source reads, which `cdc install` makes anew
        whenever it re-creates the changelog or slot (None when the mode installs nothing that could be
        re-created, e.g. timestamp polling); read-only and idempotent; SourceError if capture is not
        installed, RetryableError on a passing fault."""

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """SourceError naming the fix (`cdc run --resnapshot CONFIG`) when ``position`` cannot be a
        position of this installation (ahead of the newest position the source has issued, or a log
        that no longer holds it) or lies behind what the source has already released (a purged
        changelog, a slot confirmed past it: a target restored from a backup). ``written_at``: when the
        checkpoint was committed, for a capture that can tell a source restored from an older copy by
        it (SQLite's changelog). Read-only and idempotent; RetryableError on a passing fault."""

    def diagnose(self) -> list[tuple[str, str]]:
        """Findings (level ok|info|warn|fail, text with the fix) about the source's settings; read-only."""

    def warnings(self) -> list[tuple[str, str]]:
        """What `cdc status` shows next to a running pair: (level warn|fail, text naming table, count and
        fix) about rows capture cannot vouch for (fail: changes to them may be missing); read-only."""

    def idle(self, seconds: float, stop: Any) -> None:
        """Wait after a read that brought nothing: until ``seconds`` have passed, ``stop`` (an Event-like
        object with ``wait``/``is_set``) is set, or (for a capture that learns of them as they happen)
        changes are ready to read, whichever comes first."""

    def caught_up(self) -> bool:
        """After a read that only moved the position: whether the reader has reached the end of the
        source's log (`cdc run --once` goes on reading until it has)."""

    def close(self) -> None: ...


class Target(Protocol):
    """Writes mapped changes, audit rows and the checkpoint to one target in one transaction."""

    def apply(self, pair: str, mapped: list[MappedChange], *, position: Position, snapshot: dict | None,
              on_error: str, reason: str = "change", tables: dict[str, dict | None] | None = None) -> ApplyResult:
        """ONE transaction: rows, audit, dead letters, checkpoint (with ``snapshot`` progress and the
        streamed ``tables``, each with its mapping identity; None keeps the stored ones). Idempotent
        only with the checkpoint check."""

    def checkpoint(self, pair: str) -> state.Checkpoint | None: ...

    def advance(self, pair: str, position: Position, *, snapshot: dict | None = None,
                tables: dict[str, dict | None] | None = None) -> None:
        """Store ``position`` (and snapshot progress, streamed tables) as the checkpoint without changes."""

    def set_generation(self, pair: str, generation: str | None) -> None:
        """Record the capture installation the pair's checkpoint belongs to, once (a checkpoint that has
        one keeps it; nothing without a checkpoint; idempotent); RetryableError on a passing fault."""

    def close(self) -> None: ...


class KeyedReads:
    """Reflection and keyed, chunked reads over SQLAlchemy Core, for sources and targets alike."""

    engine: sa.Engine
    #: SQL for reconciliation fingerprints in this dialect (see cdc/reconcile.py), or None: the
    #: table is then read and fingerprinted in Python.
    fingerprints: Any = None

    def reader(self, column: sa.Column) -> Callable[[Any], Any]:
        """How a driver value of ``column`` becomes the change model's value (Decimal, never float)."""
        return _identity

    def reflected(self, table: sa.Table) -> None:
        """Correct what reflection cannot see in this dialect (in place); called once per table."""

    def stored_name(self, name: str) -> str | None:
        """How the database spells a table (or view) whose name differs from ``name`` only in
        letter case, or None: ``name`` is spelt as stored, or no such table exists. SQLite takes
        both spellings for one table where reflection and our changelog do not; other databases
        take them for two tables: either way a name must be written as the database stores it."""
        inspector = sa.inspect(self.engine)
        names = inspector.get_table_names() + inspector.get_view_names()
        if name in names:
            return None
        return next((n for n in names if n.lower() == name.lower()), None)

    def describe(self, table: str) -> TableInfo:
        """The table's columns and primary key (cached); SchemaError if it does not exist."""
        cache = self.__dict__.setdefault("_info", {})
        if table not in cache:
            if not sa.inspect(self.engine).has_table(table):
                raise SchemaError(f"table {table} does not exist")
            reflected = sa.Table(table, sa.MetaData(), autoload_with=self.engine)
            self.reflected(reflected)
            key = tuple(str(c.name) for c in reflected.primary_key.columns)
            cache[table] = TableInfo(table, list(reflected.columns), key)
        return cache[table]

    def snapshot(self, table: str, key: tuple[str, ...], after_key: tuple | None, limit: int,
                 where: str | None = None) -> list[Row]:
        """Up to ``limit`` rows after ``after_key`` in key order, each read in a short transaction;
        ``where``: an SQL condition the rows must meet too (reconciliation's --where)."""
        info = self.describe(table)
        plain = sa.table(table, *[sa.column(c) for c in info.column_names])
        query = sa.select(*plain.c).order_by(*[plain.c[k] for k in key]).limit(limit)
        if after_key is not None:
            query = query.where(sa.tuple_(*[plain.c[k] for k in key]) > sa.tuple_(*[sa.literal(v) for v in after_key]))
        if where:  # in parentheses: an OR in it must not escape the key range
            query = query.where(sa.text(f"({where})"))
        with self.reading() as conn:
            rows = conn.execute(query).all()
        return self._converted(info, rows)

    def rows_by_keys(self, table: str, key: tuple[str, ...], keys: list[tuple]) -> list[Row]:
        """The rows with these key values (those that exist), read in parts of 500 keys."""
        info = self.describe(table)
        plain = sa.table(table, *[sa.column(c) for c in info.column_names])
        found: list[Row] = []
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 500):
                part = keys[start:start + 500]
                if len(key) == 1:
                    condition = plain.c[key[0]].in_([k[0] for k in part])
                else:
                    condition = sa.tuple_(*[plain.c[k] for k in key]).in_([tuple(k) for k in part])
                found += self._converted(info, conn.execute(sa.select(*plain.c).where(condition)).all())
        return found

    def _converted(self, info: TableInfo, rows: list) -> list[Row]:
        names = info.column_names
        converting = [(name, read) for name, read in ((n, self.reader(c)) for n, c in zip(names, info.columns))
                      if read is not same]
        result = [dict(zip(names, row)) for row in rows]
        for name, read in converting:
            for row in result:
                row[name] = read(row[name])
        return result

    def reading(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """The connection snapshot chunks are read on (a source may pin it to a snapshot)."""
        return self.engine.connect()

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar()

    def close(self) -> None:
        self.engine.dispose()


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


class SqlTarget(KeyedReads):
    """A Target over SQLAlchemy Core; a dialect supplies ``upsert`` and ``writer``."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._tables: dict[str, sa.Table] = {}
        self._writers: dict[str, dict[str, Callable[[Any], Any]]] = {}
        self._trivial: dict[str, tuple[frozenset, list[str]]] = {}

    # -- dialect hooks -------------------------------------------------------------
    #: The dialect's INSERT construct with ``on_conflict_do_update`` (SQLite, PostgreSQL); a
    #: dialect with another upsert syntax (MySQL's ON DUPLICATE KEY UPDATE) overrides ``upsert``.
    insert_on_conflict: Callable[[sa.TableClause], Any] | None = None

    def upsert(self, table: sa.TableClause, key: tuple[str, ...], columns: list[str]) -> sa.Executable:
        """An INSERT that updates the row when ``key`` exists, in the dialect's syntax."""
        statement = type(self).insert_on_conflict(table)
        updates = {c: statement.excluded[c] for c in columns if c not in key}
        if not updates:
            return statement.on_conflict_do_nothing(index_elements=list(key))
        return statement.on_conflict_do_update(index_elements=list(key), set_=updates)

    def writer(self, column: sa.Column) -> Callable[[Any], Any]:
        """How a checked Python value of ``column`` is bound (TransformError if it cannot be)."""
        return _identity

    #: True when ``writer`` already makes driver-ready values, so statements carry no SQLAlchemy types.
    binds_own_values = False

    def statement_table(self, name: str) -> sa.TableClause:
        """The table statements are built on (untyped when the dialect binds its own values)."""
        if not self.binds_own_values:
            return self.table(name)
        plain = self.__dict__.setdefault("_plain", {})
        if name not in plain:
            plain[name] = sa.table(name, *[sa.column(c.name) for c in self.table(name).columns])
        return plain[name]

    def write_audit(self, conn: sa.Connection, rows: list[dict]) -> None:
        """Append audit rows in the apply transaction (a dialect may bulk-load them)."""
        state.write_audit(conn, rows)

    def classify(self, exc: sa.exc.DBAPIError) -> str:
        """'row' (this row is bad), 'retry' (passing fault) or 'fatal'."""
        if isinstance(exc, (sa.exc.IntegrityError, sa.exc.DataError)):
            return "row"
        return "retry" if exc.connection_invalidated else "fatal"

    # -- statement size ------------------------------------------------------------
    #: The server setting that limits one statement's size, as messages name it ("" if none).
    statement_limit_setting = ""
    #: The driver splits an executemany of many rows into statements of at most this many bytes
    #: (a row alone may be larger); None: unknown, so runs are split here when there is a limit.
    driver_statement_bytes: int | None = None

    def statement_limit(self, conn: sa.Connection) -> int | None:
        """The most bytes one statement may carry on ``conn`` (MySQL's max_allowed_packet), or None:
        no limit a row can reach. A row over it is refused before it is sent (see adapters/_limits.py)."""
        return None

    def statement_size(self, row: dict, exact: bool = False) -> int:
        """Bytes ``row``'s values take in one statement as the driver sends them (``exact`` False:
        a quick upper bound); needed only where ``statement_limit`` gives a limit."""
        raise NotImplementedError

    def write_dead_letters(self, conn: sa.Connection, rows: list[dict]) -> None:
        """Park refused changes in the apply transaction."""
        state.write_dead_letters(conn, rows)

    # -- schema --------------------------------------------------------------------
    def table(self, name: str) -> sa.Table:
        """The reflected target table (cached); TargetError if it does not exist."""
        if name not in self._tables:
            try:
                self._tables[name] = sa.Table(name, sa.MetaData(), autoload_with=self.engine)
                self.reflected(self._tables[name])
            except sa.exc.NoSuchTableError:
                raise TargetError(f"target table {name} does not exist: run `cdc init CONFIG` to create it") from None
        return self._tables[name]

    def exists(self, name: str) -> bool:
        return sa.inspect(self.engine).has_table(name)

    def table_definition(self, name: str, columns: list[sa.Column], key: tuple[str, ...],
                         source_dialect: str = "") -> sa.Table:
        """The table `cdc init` would create for these columns and primary key, not created yet.

        From a database of the same kind the types are kept as they are (jsonb stays jsonb);
        from another kind they go through SQLAlchemy's generic types (``target_type``). The key
        never generates values (no AUTO_INCREMENT, no serial): the source's keys are written.
        SchemaError, naming table and column, when this target cannot declare a column's type.
        """
        same = source_dialect == self.engine.dialect.name
        table = sa.Table(name, sa.MetaData(), *[
            sa.Column(c.name, c.type if same else self.target_type(c.type, key=c.name in key),
                      nullable=c.name not in key and c.nullable, primary_key=c.name in key, autoincrement=False)
            for c in columns])
        for column in table.columns:
            try:
                column.type.compile(dialect=self.engine.dialect)
            except (sa.exc.CompileError, sa.exc.UnsupportedCompilationError, AttributeError) as exc:
                raise SchemaError(f"target table {name} column {column.name}: a {self.engine.dialect.name} table "
                                  f"cannot declare the source type {column.type!r} ({exc}); create the table "
                                  f"yourself, then run `cdc init` again") from None
        try:
            sa.schema.CreateTable(table).compile(dialect=self.engine.dialect)
        except sa.exc.CompileError as exc:
            raise SchemaError(f"target table {name}: {exc}") from None
        return table

    def create_tables(self, tables: list[sa.Table]) -> None:
        """Create these tables (made by ``table_definition``, none of them existing) all or none.

        One transaction: where DDL is transactional (PostgreSQL, SQLite) a refused table leaves
        none of them. Where each CREATE commits itself (MySQL/MariaDB) the tables made before the
        refused one are dropped again: they are new and nothing has written to them.
        """
        created: list[sa.Table] = []
        try:
            with self.engine.begin() as conn:
                for table in tables:
                    try:
                        table.create(conn)
                    except sa.exc.DBAPIError as exc:
                        raise SchemaError(f"target table {table.name}: the target refused to create it: "
                                          f"{str(exc.orig).strip()}") from None
                    created.append(table)
        except SchemaError:
            with self.engine.begin() as conn:
                for table in reversed(created):
                    table.drop(conn, checkfirst=True)
            raise

    def create_table(self, name: str, columns: list[sa.Column], key: tuple[str, ...],
                     source_dialect: str = "") -> sa.Table:
        """Create one table (see table_definition); never alters an existing one."""
        table = self.table_definition(name, columns, key, source_dialect)
        self.create_tables([table])
        return table

    def target_type(self, kind: sa.types.TypeEngine, key: bool = False) -> sa.types.TypeEngine:
        """A source column type as this target should declare it (exact numerics stay exact).

        Timestamps keep their zone: a MySQL DATETIME is read in the pair's source_timezone
        and a TIMESTAMP in UTC, so both arrive as instants. An ENUM or SET is text (its values
        as they read: SET as its members, comma-separated), YEAR a small integer, BIT an integer.
        ``key``: the column is (part of) the primary key.
        """
        if getattr(kind, "_variant_mapping", None):
            return kind  # already says what it is per dialect
        if isinstance(kind, (sa.Enum, mysql.SET)):
            return sa.Text()
        if isinstance(kind, mysql.YEAR):
            return sa.SmallInteger()
        if isinstance(kind, mysql.BIT):  # read as an unsigned integer of up to 64 bits
            return sa.BigInteger() if (kind.length or 1) < 64 else sa.Numeric(20, 0)
        try:
            generic = kind.as_generic()
        except NotImplementedError:
            return kind
        if isinstance(generic, sa.DateTime) and type(kind).__module__.startswith("sqlalchemy.dialects.mysql"):
            return sa.DateTime(timezone=True)
        return generic

    # -- state ---------------------------------------------------------------------
    def init_state(self) -> tuple[str | None, str]:
        return state.upgrade(self.engine)

    def checkpoint(self, pair: str) -> state.Checkpoint | None:
        with self.engine.connect() as conn:
            state.ensure_current(conn)
            return state.read_checkpoint(conn, pair)

    def is_empty(self, table: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.exists().select_from(sa.table(table)))).scalar() is False

    def load_directly(self, table: str, on: bool) -> None:
        """While on, upserts into ``table`` are plain inserts: the snapshot fills an empty table
        with disjoint chunks (a dialect may then bulk-load straight into it)."""
        direct = self.__dict__.setdefault("_direct", set())
        (direct.add if on else direct.discard)(table)

    def advance(self, pair: str, position: Position, *, snapshot: dict | None = None,
                tables: dict[str, dict | None] | None = None) -> None:
        """Move the checkpoint past source transactions that held nothing for this pair (or record
        a changed set of tables), keeping ``snapshot`` progress."""
        with self.checkpointing(pair) as (_, write):
            write(position, snapshot, 0, tables=tables)

    def set_generation(self, pair: str, generation: str | None) -> None:
        """Record the capture installation the pair's checkpoint belongs to (see Source.generation)."""
        with self.engine.begin() as conn:
            state.write_generation(conn, pair, generation)

    def forget_checkpoint(self, pair: str) -> bool:
        """Drop the pair's checkpoint (the next run snapshots again); True if there was one."""
        with self.engine.begin() as conn:
            state.ensure_current(conn)
            return state.forget_checkpoint(conn, self._claim(pair))

    # -- the claim ------------------------------------------------------------------
    def take_claim(self, pair: str, timeout: float, purpose: str = "run") -> state.Claim:
        """Claim the pair for this process (ClaimHeldError if a live process holds it); every later
        checkpoint write of ``pair`` through this target, and every repair write, is fenced by it.
        ``purpose``: ``run`` or ``repair`` (see cdc/state/_claims.py). Waits at most a few seconds
        for a holder's open transaction, which counts as held."""
        try:
            with self.engine.begin() as conn:
                state.ensure_current(conn)
                self.bounded_lock_wait(conn, CLAIM_LOCK_WAIT)
                claim = state.claims.take(conn, pair, timeout, purpose)
        except sa.exc.IntegrityError:  # two first claims at once: the other one's row is there now
            raise state.claims.held(pair, None, purpose) from None
        except sa.exc.OperationalError as exc:
            try:  # readable now: it was a lock wait on the holder's open transaction, not an outage
                with self.engine.connect() as conn:
                    holder = state.read_holder(conn, pair)
            except sa.exc.OperationalError:
                raise exc from None
            raise state.claims.held(pair, holder, purpose, "; it is in the middle of a transaction") from None
        self.__dict__.setdefault("_claims", {})[pair] = claim
        return claim

    def heartbeat(self, pair: str, timeout: float) -> bool:
        """Refresh this process's claim of ``pair``; False when another process holds it now."""
        with self.engine.begin() as conn:
            return state.claims.heartbeat(conn, self._claim(pair), timeout)

    def forget_tables(self, pair: str, tables: list[str]) -> None:
        """Under this process's claim: see state.claims.forget_tables."""
        with self.engine.begin() as conn:
            state.claims.forget_tables(conn, self._claim(pair), tables)

    def forget_old_rows(self, pair: str, tables: list[str], mark: str) -> None:
        """A repair under this process's claim made these tables equal: see state.claims.forget_old_rows."""
        with self.engine.begin() as conn:
            state.claims.forget_old_rows(conn, self._claim(pair), tables, mark)

    def note_retrying(self, pair: str, error: str | None) -> None:
        """Record in this process's claim of ``pair`` that it retries ``error`` (None: running again)."""
        with self.engine.begin() as conn:
            state.claims.set_state(conn, self._claim(pair), error)

    def release_claim(self, pair: str, error: str | None = None) -> None:
        """Give the pair up: stopped, or failed with ``error`` (what `cdc status` shows)."""
        claim = self.__dict__.get("_claims", {}).pop(pair, None)
        if claim is not None:
            with self.engine.begin() as conn:
                state.claims.release(conn, claim, error)

    def record_failure(self, pair: str, error: str) -> None:
        """A pair that failed before it could claim: its row in cdc_leases says so."""
        with self.engine.begin() as conn:
            state.ensure_current(conn)
            state.claims.record_failure(conn, pair, error)

    def bounded_lock_wait(self, conn: sa.Connection, seconds: float) -> None:
        """Make the transaction's lock waits fail after ``seconds`` (a dialect hook; SQLite's busy
        timeout already does)."""

    def _claim(self, pair: str) -> state.Claim:
        claim = self.__dict__.get("_claims", {}).get(pair)
        if claim is None:
            raise state.ClaimLostError(f"pair {pair}: this process does not hold the pair's claim; nothing written")
        return claim

    @contextlib.contextmanager
    def checkpointing(self, pair: str | None) -> Iterator[tuple[sa.Connection, Callable[..., None]]]:
        """A target transaction whose checkpoint write is fenced by this process's claim of ``pair``;
        yields ``(conn, write)``, ``write(position, snapshot, applied, committed_at=None, tables=None)``. The claim
        learns the outcome: committed, or uncertain when the COMMIT itself failed. ``pair`` None: a
        transaction that writes no checkpoint, whose ``write`` refuses."""
        claim, written = (None if pair is None else self._claim(pair)), []

        def write(position: Position, snapshot: dict | None, applied: int, committed_at=None, tables=None) -> None:
            if claim is None:
                raise TypeError("this transaction writes no checkpoint")
            written.append(state.write_checkpoint(conn, claim, position, snapshot, applied, committed_at=committed_at,
                                                  tables=tables))

        try:
            with self.engine.begin() as conn:
                yield conn, write
        except BaseException:
            for texts in written:
                state.claims.uncertain(claim, texts)
            raise
        if written:
            state.claims.committed(claim, written[-1])

    # -- apply ---------------------------------------------------------------------
    def apply(self, pair: str, mapped: list[MappedChange], *, position: Position, snapshot: dict | None,
              on_error: str, reason: str = "change", tables: dict[str, dict | None] | None = None) -> ApplyResult:
        """Write rows, audit, dead letters and checkpoint in ONE transaction (see apply_parts)."""
        return self.apply_parts(pair, lambda: [mapped], position=lambda: position, snapshot=snapshot,
                                on_error=on_error, reason=reason, tables=tables)

    def apply_parts(self, pair: str, parts: Callable[[], Iterable[list[MappedChange]]], *,
                    position: Callable[[], Position], snapshot: dict | None, on_error: str,
                    reason: str = "change", tables: dict[str, dict | None] | None = None) -> ApplyResult:
        """Write parts of a batch one after another into ONE transaction, then the checkpoint.

        ``parts()`` yields the batch in parts (a large source transaction need not fit in
        memory); ``position()`` is read after the last part. When no part holds a change,
        nothing is written. A row the database rejects makes the whole batch roll back and
        run again from ``parts()`` one change per savepoint, so the bad change is parked
        (or stops the pair) alone. The checkpoint stores ``snapshot`` (progress of tables being
        copied) and ``tables`` (the streamed ones with their mapping identities; None keeps the stored ones).
        """
        try:
            return self._transaction(pair, parts(), position, snapshot, on_error, reason, isolate=False,
                                     tables=tables)
        except sa.exc.DBAPIError as exc:
            if self.classify(exc) != "row":
                raise self._translate(exc) from None
        try:
            return self._transaction(pair, parts(), position, snapshot, on_error, reason, isolate=True,
                                     tables=tables)
        except sa.exc.DBAPIError as exc:
            raise self._translate(exc) from None

    def prepare_tables(self, names: Iterable[str]) -> None:
        """Reflect these tables now: reflection inside an apply transaction would wait on itself."""
        for name in names:
            if self.exists(name):
                self.statement_table(name)

    def _translate(self, exc: sa.exc.DBAPIError) -> Exception:
        kind = self.classify(exc)
        text = str(exc.orig).strip()
        return RetryableError(f"target: {text}") if kind == "retry" else TargetError(f"target: {text}")

    def _transaction(self, pair, parts, position, snapshot, on_error, reason, isolate, tables=None) -> ApplyResult:
        applied = parked_count = seen = 0

        def reject(item: MappedChange, error: RowError, parked: list) -> None:
            error.table, error.key = error.table or item.mapping.target, error.key or item.change.key
            if on_error == "stop":
                raise error
            parked.append((item, error))

        with self.checkpointing(pair) as (conn, write_checkpoint):
            if reason == "repair":
                # A repair moves no checkpoint but holds the pair's claim (see cdc/state/_claims.py):
                # fenced first, so a repair that lost the pair to a run writes nothing, and a run
                # taking the pair waits for this transaction.
                state.claims.fence(conn, self._claim(pair))
            committed_at = None
            limit = self.statement_limit(conn)
            for mapped in parts:
                seen += len(mapped)
                done, parked = self._write_part(conn, mapped, isolate, lambda i, e, p: reject(i, e, p), limit)
                now = state._store.now()
                self._write_records(conn, _audit_rows(pair, done, reason, now),
                                    [_dead_letter(pair, item, error, now, reason) for item, error in parked], limit)
                applied, parked_count = applied + len(done), parked_count + len(parked)
                committed_at = next((m.change.committed_at for m in reversed(mapped) if m.change.committed_at),
                                    committed_at)
            if (seen or reason == "snapshot") and reason != "repair":
                write_checkpoint(position(), snapshot, applied if reason != "snapshot" else 0, committed_at,
                                 tables=tables)
        return ApplyResult(applied, parked_count)

    def _write_part(self, conn, mapped, isolate, reject, limit=None) -> tuple[list[MappedChange], list]:
        """Rows of one part: fit checks (a row over the statement ``limit`` is refused here, never
        sent), then one statement per run (or one savepoint per change)."""
        done: list[MappedChange] = []
        parked: list[tuple[MappedChange, RowError]] = []
        prepared = []
        for item in mapped:
            try:
                if item.error is not None:
                    raise item.error
                statements = [self._prepare(op) for op in item.ops]
                if limit is not None:
                    for _, _, _, params in statements:
                        _limits.refuse_oversized(self.statement_size, params, limit, self.statement_limit_setting)
                prepared.append((item, statements))
            except RowError as exc:
                reject(item, exc, parked)
        if isolate:
            for item, statements in prepared:
                try:
                    with conn.begin_nested():
                        self._write(conn, statements, limit)
                    done.append(item)
                except sa.exc.DBAPIError as exc:
                    if self.classify(exc) != "row":
                        raise
                    reject(item, RowError(f"the target refused the row: {str(exc.orig).strip()}"), parked)
        else:
            self._write(conn, [s for _, statements in prepared for s in statements], limit)
            done = [item for item, _ in prepared]
        return done, parked

    def _write_records(self, conn: sa.Connection, audit: list[dict], letters: list[dict], limit: int | None) -> None:
        """The part's audit rows and dead letters; under a statement limit, each made to fit (its
        largest image values kept as length and SHA-256) and written in statements that fit."""
        if limit is not None:
            audit = [_limits.fitted_audit_row(row, self.statement_size, limit) for row in audit]
            letters = [_limits.fitted_dead_letter(row, self.statement_size, limit, self.statement_limit_setting)
                       for row in letters]
        for part in self._statements(audit, limit):
            self.write_audit(conn, part)
        for part in self._statements(letters, limit):
            self.write_dead_letters(conn, part)

    def _statements(self, rows: list[dict], limit: int | None) -> Iterable[list[dict]]:
        """``rows`` in parts that each fit one statement (the driver may split them further)."""
        if not rows:
            return []
        if limit is None or (self.driver_statement_bytes is not None and self.driver_statement_bytes <= limit):
            return [rows]
        return _limits.in_statements(rows, self.statement_size, limit)

    def trust(self, name: str, columns: list[str]) -> None:
        """Skip the fit check for these columns: their values come from source columns of the very
        same type (same database kind, same declared type), so they cannot fail to fit."""
        self.__dict__.setdefault("_trusted", {})[name] = set(columns)
        self._writers.pop(name, None)
        self._trivial.pop(name, None)

    def _column_writers(self, name: str) -> dict[str, Callable[[Any], Any]]:
        """Per column: fit check then the dialect's binding, composed once per table."""
        if name not in self._writers:
            trusted = self.__dict__.get("_trusted", {}).get(name, set())

            def compose(column: sa.Column) -> Callable[[Any], Any]:
                bind = self.writer(column)
                fit = _nullable_only(column) if column.name in trusted else values.fitter(column)
                return fit if bind is _identity else (lambda value: bind(fit(value)))

            columns = self.table(name).columns
            self._writers[name] = {str(c.name): compose(c) for c in columns}
            # Every column trusted and bound as it is: a row needs only its NOT NULL columns checked.
            if all(str(c.name) in trusted for c in columns) and all(self.writer(c) is _identity for c in columns):
                self._trivial[name] = (frozenset(self._writers[name]),
                                       [str(c.name) for c in columns if not (c.nullable or c.primary_key)])
        return self._writers[name]

    def _prepare(self, op: TargetOp) -> tuple[str, str, tuple[str, ...], dict]:
        writers = self._column_writers(op.table)
        source = op.row if op.op == "upsert" else dict(zip(op.key_columns, op.key))
        trivial = self._trivial.get(op.table)
        if trivial is not None and op.op == "upsert" and source.keys() <= trivial[0]:
            for name in trivial[1]:
                if source.get(name) is None:
                    raise RowError("NULL in a NOT NULL column", table=op.table, key=op.key, column=name)
            return op.op, op.table, op.key_columns, source
        params = {}
        for name, value in source.items():
            write = writers.get(name)
            if write is None:
                raise SchemaError(f"target table {op.table} has no column {name!r}: add it or change the mapping")
            try:
                params[name] = write(value)
            except TransformError as exc:
                raise RowError(str(exc), table=op.table, key=op.key, column=name) from None
        return op.op, op.table, op.key_columns, params

    def _write(self, conn: sa.Connection, statements: list[tuple[str, str, tuple[str, ...], dict]],
               limit: int | None = None) -> None:
        """Run operations of one kind on one table together (in statements under ``limit``).

        Where the order of rows cannot matter to the target (see ``free_order``), the operations are
        gathered into as few runs as keep each row's own operations in their order: the many small
        transactions of an OLTP load (a few tables, each changed once per transaction) then take a
        statement per table, not one per change. Otherwise only consecutive operations are joined."""
        names = {s[1] for s in statements}
        runs = _runs(statements) if len(statements) > 1 and self.free_order(names) else None
        if runs is None:
            runs = [(run_key, [s[3] for s in run]) for run_key, run in itertools.groupby(statements, key=_RUN_KEY)]
        for (op, name, key), params in runs:
            for part in self._statements(params, limit):
                self.write_run(conn, op, name, key, part)

    def free_order(self, names: Iterable[str]) -> bool:
        """Whether rows of these target tables may be written in another order than they changed,
        each row's own changes kept in order: true when none has a foreign key or a unique
        constraint or index besides its key (then no order of distinct rows can fail where
        another would not), as in the tables `cdc init` makes. Cached per table."""
        cache = self.__dict__.setdefault("_free_order", {})
        for name in names:
            if name not in cache:
                table = self.table(name)
                key = {c.name for c in table.primary_key.columns}
                unique = [set(c.columns.keys()) for c in table.constraints if isinstance(c, sa.UniqueConstraint)]
                unique += [{c.name for c in i.columns} for i in table.indexes if i.unique]
                cache[name] = not table.foreign_keys and all(u == key for u in unique)
            if not cache[name]:
                return False
        return True

    def write_run(self, conn: sa.Connection, op: str, name: str, key: tuple[str, ...], params: list[dict]) -> None:
        """One run of upserts or deletes on one table as one executemany (a dialect may bulk-load)."""
        if op == "upsert":
            conn.execute(self._run_statement(op, name, key, tuple(params[0])), params)
        else:
            conn.execute(self._run_statement(op, name, key, ()), [{f"k_{k}": p[k] for k in key} for p in params])

    def _run_statement(self, op: str, name: str, key: tuple[str, ...], columns: tuple[str, ...]) -> sa.Executable:
        """The upsert or delete statement of a run, built once per table, key and columns: runs are
        short where the target keeps source order (see ``free_order``), and building (and cache-keying)
        the statement anew for each run cost more than executing it."""
        cache = self.__dict__.setdefault("_run_statements", {})
        if (op, name, key, columns) not in cache:
            table = self.statement_table(name)
            if op == "upsert":
                statement = self.upsert(table, key, list(columns))
            else:
                statement = table.delete().where(sa.and_(*[table.c[k] == sa.bindparam(f"k_{k}") for k in key]))
            cache[(op, name, key, columns)] = statement
        return cache[(op, name, key, columns)]


#: Seconds between two looks at the changelog of an idle trigger-capture pair (see SqlSource.idle).
IDLE_CHECK = 0.2
#: Seconds a claim waits for a holder's open transaction before it counts as held.
CLAIM_LOCK_WAIT = 5.0
_RUN_KEY = operator.itemgetter(0, 1, 2)  # (op, table, key columns): one run per change of these


def _runs(statements: list[tuple[str, str, tuple[str, ...], dict]]) -> list[tuple[tuple, list[dict]]] | None:
    """``statements`` as runs of one (op, table, key, columns) each: a statement joins the first run of
    its kind that comes no earlier than the run its row's previous statement went to, so each row's
    statements stay in order (within a run, an executemany keeps its order). None when a key value
    cannot be told from another (unhashable): then the caller keeps the order as it is."""
    runs: list[tuple[tuple, list[dict]]] = []
    by_kind: dict[tuple, list[int]] = {}
    last: dict[tuple, int] = {}
    try:
        for op, name, key, params in statements:
            kind, row = (op, name, key, tuple(params)), (name, tuple([params[k] for k in key]))
            earliest = last.get(row, -1)
            indexes = by_kind.setdefault(kind, [])
            at = bisect.bisect_left(indexes, earliest)
            if at < len(indexes):
                index = indexes[at]
            else:
                index = len(runs)
                runs.append((kind, []))
                indexes.append(index)
            runs[index][1].append(params)
            last[row] = index
    except TypeError:
        return None
    return [((op, name, key), params) for (op, name, key, _), params in runs]


def _audit_rows(pair: str, done: list[MappedChange], reason: str, now) -> list[dict]:
    if reason == "snapshot":
        return _snapshot_audit(pair, done, now)
    rows = []
    position = txid = object()  # the changes of one transaction share these: encoded once
    for item in done:
        change = item.change
        if not item.ops:
            continue  # filtered out by the mapping: nothing was applied
        if change.position is not position or change.txid is not txid:
            position, txid = change.position, change.txid
            position_text, txid_text = dumps(position), None if txid is None else str(txid)
        before, after = _audit_images(item, reason)
        rows.append({
            "pair": pair, "source_table": change.table, "target_table": item.mapping.target, "op": change.op,
            "reason": reason, "key": dumps(item.ops[-1].key), "before": _json(before),
            "after": _json(after), "source_position": position_text, "source_txid": txid_text,
            "committed_at": change.committed_at, "applied_at": now,
        })
    return rows


def _audit_images(item: MappedChange, reason: str) -> tuple[Row | None, Row | None]:
    """The change's before and after images as target rows, both through the pair's mapping: a
    column the mapping does not copy never reaches the target database, its audit log included.
    A repair's images are target rows already."""
    change = item.change
    if reason == "repair":
        return change.before, change.after
    last = item.ops[-1]
    after = last.row if last.op == "upsert" else (
        None if change.after is None else item.mapping.image(change.after, change.key))
    return (None if change.before is None else item.mapping.image(change.before, change.key)), after


def _snapshot_audit(pair: str, done: list[MappedChange], now) -> list[dict]:
    """One audit row per table and snapshot chunk: how many rows, first and last key."""
    rows = []
    for target, items in itertools.groupby(done, key=lambda m: m.mapping.target):
        items = list(items)
        rows.append({
            "pair": pair, "source_table": items[0].change.table, "target_table": target, "op": "snapshot",
            "reason": "snapshot", "key": dumps(list(items[-1].change.key)), "before": None,
            "after": dumps({"rows": sum(1 for m in items if m.ops), "read": len(items),
                            "first_key": list(items[0].change.key),
                            "last_key": list(items[-1].change.key)}),
            "source_position": None, "source_txid": None, "committed_at": None, "applied_at": now,
        })
    return rows


def _dead_letter(pair: str, item: MappedChange, error: RowError, now, reason: str = "change") -> dict:
    """The dead letter of a change the target refused: the change as the source gave it, with the
    source columns the mapping reads (all it needs to be mapped and applied again; a column the
    mapping does not copy stays out of the target database). A repair's images are target rows."""
    change = item.change
    read = None if reason == "repair" else item.mapping.read_columns()
    return {
        "pair": pair, "source_table": change.table, "target_table": item.mapping.target, "op": change.op,
        "key": dumps(list(change.key)), "error": str(error), "column_name": error.column,
        "change": dumps({"op": change.op, "table": change.table, "key": list(change.key),
                         "before": _only(change.before, read), "after": _only(change.after, read),
                         "position": change.position, "txid": change.txid}),
        "source_position": dumps(change.position), "created_at": now,
    }


def _only(row: Row | None, columns: frozenset[str] | None) -> Row | None:
    if row is None or columns is None or row.keys() <= columns:
        return row
    return {c: v for c, v in row.items() if c in columns}


def _json(row: Row | None) -> str | None:
    return None if row is None else dumps(row)
