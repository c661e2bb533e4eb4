"""PostgreSQL capture `trigger`: row triggers log JSON images with the transaction id.

Position: the transaction snapshot of the last read (``pg_snapshot`` text, "xmin:xmax:xip,..."):
every transaction it sees as committed has been applied. A read takes what committed since, in
the order each transaction's last change was logged (a transaction's "last"), and streams it in
parts into one target transaction; its own snapshot is the next position. A read that would take
more than ``batch_size`` changes stops after the whole transaction that reaches it; the position
is then {"done": the snapshot before, "window": the read's snapshot, "through": the last "last"
taken}, and the next read goes on in that window (so a backlog is applied, and survives a crash,
one batch at a time). A position of an older version is an int horizon H: every transaction
below H, the snapshot "H:H:".

A horizon alone (the oldest running transaction id) cannot be the position: a transaction with
an older id may write a row after a younger one committed it, and commit last; a read between
the two while a third, still older transaction runs would take the older one and leave the
younger one for the next read, which would then write its older value over the row. Cutting a
window by "last" is safe: a transaction left for the next read that touched a row of one taken
wrote it after that one committed.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
import uuid
from decimal import Decimal
from typing import Any, Callable, Generator, Iterable

import sqlalchemy as sa

from cdc.changes import Change, Position
from cdc.errors import SourceError

from .._changelog import ChangelogCapture
from . import sql


#: How long install or uninstall keeps trying to lock tables the application keeps busy.
LOCK_PATIENCE = 60.0
_LOCK_NOT_AVAILABLE = "55P03"


def _retry_locks(step: Callable[[], list[str]], what: str, tables: Iterable[str]) -> list[str]:
    """Run ``step`` (one transaction) again, after a short random pause, while a lock it needs is
    held by the application (each try gives up after the lock timeout and rolls back everything)."""
    deadline, pause = time.monotonic() + LOCK_PATIENCE, 0.05
    while True:
        try:
            return step()
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            if time.monotonic() > deadline:
                raise SourceError(f"cdc {what} could not lock table(s) {', '.join(sorted(tables))} for "
                                  f"{LOCK_PATIENCE:.0f} s: the application keeps them busy; nothing was "
                                  "changed, try again") from None
        time.sleep(random.uniform(pause / 2, pause))
        pause = min(pause * 2, 1.0)


def _records_database(conn: sa.Connection) -> bool:
    """Whether the consumers table has sql.DATABASE_COLUMN (`cdc install` adds it to older installations)."""
    return sql.DATABASE_COLUMN in {c["name"] for c in sa.inspect(conn).get_columns(sql.CONSUMERS)}


class TriggerSource(ChangelogCapture):
    """The shared changelog capture with PostgreSQL's trigger and its transaction-snapshot horizon."""

    changelog = sql.CHANGELOG
    changelog_mark = sql.CHANGELOG_MARK  # moves with every id handed out
    create_state = sql.CREATE_TRIGGER_STATE
    drop_state = sql.DROP_TRIGGER_STATE
    register_sql = sql.REGISTER
    acknowledge_sql = sql.ACKNOWLEDGE
    purge_sql = sql.PURGE
    triggers_noun = "trigger"

    # -- install -------------------------------------------------------------------
    def prepare(self, keep: Iterable[str] = ()) -> list[str]:
        return _retry_locks(lambda: super(TriggerSource, self).prepare(keep), "install", self.keys)

    def unprepare(self) -> list[str]:
        return _retry_locks(super().unprepare, "uninstall", self.keys)

    def lock_captured(self, conn: sa.Connection, tables: list[str]) -> None:
        conn.exec_driver_sql(sql.INSTALL_LOCK_TIMEOUT)
        present = [row[0] for row in conn.exec_driver_sql(sql.EXISTING_TABLES, {"tables": tables})]
        if present:
            conn.exec_driver_sql(sql.lock_tables(present))

    def drop_triggers(self, table: str) -> list[str]:
        return sql.drop_trigger(table)

    def install_triggers(self, conn: sa.Connection, tables: list[str]) -> None:
        for table in tables:
            self.describe(table)  # SchemaError if it is missing
            for statement in sql.create_trigger(table):
                conn.exec_driver_sql(statement)

    def _register(self, conn: sa.Connection, kept: list[str]) -> None:
        """The shared registration, which also names the database it was made in (see _same_database)."""
        super()._register(conn, kept)
        conn.exec_driver_sql(sql.ADD_DATABASE_COLUMN)
        conn.exec_driver_sql(sql.RECORD_DATABASE_ONCE, {"pair": self.pair})

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """SourceError when the checkpoint's transaction-id horizon is past the next transaction id
        the server will assign (a checkpoint edited by hand, or from another server), or before the
        horizon every pair has acknowledged, below which the changelog is purged."""
        self._same_database()
        with self.engine.connect() as conn:
            newest = int(conn.exec_driver_sql(sql.NEXT_TRANSACTION_ID).scalar())
        self._position_ahead(position, newest, "the next transaction id of the source server", order=_xmax)
        self._position_behind(position or 0, self._purged_through(),
                              "the transactions every pair has acknowledged, purged from the changelog", order=_xmin)

    def trigger_faults(self, conn: sa.Connection, tables: list[str]) -> dict[str, str]:
        """The trigger must be on the table itself, call the capture function and fire ALWAYS:
        `ALTER TABLE ... DISABLE TRIGGER`, or a session with session_replication_role = replica
        and a trigger enabled the ordinary way, write without logging."""
        faults = {}
        for table, enabled, ours in conn.exec_driver_sql(sql.TRIGGER_STATES, {"tables": list(tables)}):
            if enabled is None:
                faults[table] = f"trigger {sql.TRIGGER} missing (table dropped and made again?)"
            elif not ours:
                faults[table] = f"trigger {sql.TRIGGER} calls another function than {sql.CAPTURE_FUNCTION}()"
            elif enabled != "A":
                faults[table] = f"trigger {sql.TRIGGER} {sql.TRIGGER_ENABLED.get(enabled, 'is not enabled ALWAYS')}"
        return faults

    def horizon_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """A transaction open for long holds every later commit back: doctor names it (warn)."""
        oldest = conn.exec_driver_sql(sql.OLDEST_TRANSACTION).first()
        if oldest is not None and oldest.seconds > OLD_TRANSACTION_SECONDS:
            return [("warn", f"transaction {oldest.xid} (pid {oldest.pid}, {oldest.usename}) has run for "
                             f"{oldest.seconds:,.0f}s: nothing committed after it started is applied until it "
                             "ends; end it or ask its owner to")]
        return [("ok", "no long-running transaction holds capture back")]

    # -- the read horizon: transaction snapshots -------------------------------------
    def current_position(self) -> Position:
        with self.engine.connect() as conn:
            self._require_installed(conn)
            return conn.exec_driver_sql(sql.SNAPSHOT).scalar()

    def begin_snapshot(self) -> Position:
        """A copy from now on is of this database: the registration records it (see _same_database)."""
        with self.engine.begin() as conn:
            self._require_installed(conn)
            if _records_database(conn):
                conn.exec_driver_sql(sql.RECORD_DATABASE, {"pair": self.pair})
        return self.current_position()

    def _same_database(self) -> None:
        """SourceError when the registration was made in another database than this one: the source
        database was restored from a dump (pg_restore into a database made anew), so it went back to
        an older state that the target has passed, and the changelog it brought holds none of what
        the target applied since. The registration names the database of the pair's last copy."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            if not _records_database(conn):
                return  # installed before this check: `cdc install` records it
            recorded, now = conn.exec_driver_sql(sql.RECORDED_DATABASE, {"pair": self.pair}).one()
        if recorded is not None and recorded != now:
            raise SourceError(
                f"pair {self.pair}: the source database is not the one capture was installed in (database oid "
                f"{recorded}, now {now}): it was restored from a dump, so it holds an older state than the target "
                "has, and the changes in between are not in its changelog. Copy the tables again with "
                "`cdc run --resnapshot CONFIG`, then remove what the source no longer has with "
                "`cdc reconcile CONFIG --repair`")

    def changelog_rows(self, after: Position, max_changes: int) -> Generator[Any, None, Position]:
        """The transactions committed since ``after``, whole; the read stops after the whole
        transaction that brings it to ``max_changes`` changes (see above)."""
        done, window, through = _window(after)
        with self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
            self._require_installed(conn)
            now = conn.exec_driver_sql(sql.SNAPSHOT).scalar()  # the transaction's snapshot, taken here
            window = window or now
            params = {"low": str(_xmin(done)), "done": done, "window": window, "through": through,
                      "tables": list(self.keys)}
            chosen = conn.exec_driver_sql(sql.NEXT_TRANSACTIONS, {**params, "limit": max_changes}).all()
            if not chosen:
                return window
            yield from conn.execution_options(stream_results=True, yield_per=5000).exec_driver_sql(
                sql.ROWS_OF, {"txids": [t.txid for t in chosen], "lasts": [t.last for t in chosen],
                              "tables": list(self.keys)})
        # The window's rest (transactions after the last one taken) is the next read's.
        rest = chosen[0].remaining > len(chosen)
        return {"done": done, "window": window, "through": chosen[-1].last} if rest else window

    def format_position(self, position: Position) -> str:
        if isinstance(position, dict):
            done, window, through = _window(position)
            return f"snapshot {window}, after {done} up to change {through:,}"
        return f"snapshot {_snapshot(position)}" if position is not None else super().format_position(position)

    def acknowledged(self, position: Position) -> Any:
        """Every transaction below the position's xmin is applied: the changelog may let them go."""
        return _xmin(position)

    def count_pending(self, conn: sa.Connection, after: Position) -> int:
        done, window, through = _window(after)
        waiting = conn.exec_driver_sql(sql.PENDING, {"low": str(_xmin(done)), "done": done,
                                                     "tables": list(self.keys)}).scalar()
        if window is not None:  # the part of the window applied already
            waiting -= conn.exec_driver_sql(sql.APPLIED_OF_WINDOW, {
                "low": str(_xmin(done)), "done": done, "window": window, "through": through,
                "tables": list(self.keys)}).scalar()
        return waiting

    # -- images ----------------------------------------------------------------------
    def _change(self, row: Any) -> Change:
        if row.op == "truncate":
            raise SourceError(
                f"pair {self.pair}: TRUNCATE of {row.tbl} at the source (transaction {row.txid}) is not replicated by "
                "trigger capture: the pair stops before it. Once the table is as it should be, copy the tables again "
                "with `cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed by "
                "`cdc reconcile CONFIG --repair`)")
        return super()._change(row)

    def parse_image(self, text: str) -> dict:
        return _exact(text)

    def image_readers(self, table: str) -> dict[str, Callable[[Any], Any]]:
        info = self.describe(table)
        return {name: _json_reader(c) for name, c in zip(info.column_names, info.columns)}


def _window(position: Position) -> tuple[str, str | None, int]:
    """(the snapshot applied, the snapshot of a window being applied or None, its "last" applied)."""
    if isinstance(position, dict):
        return _snapshot(position["done"]), _snapshot(position["window"]), int(position["through"])
    return _snapshot(position), None, 0


def _snapshot(position: Position) -> str:
    """A position as pg_snapshot text; an int horizon H of an older version (or none) as "H:H:"."""
    if isinstance(position, str):
        _xmax(position)  # ValueError unless it is one
        return position
    if position is None or isinstance(position, int) and not isinstance(position, bool):
        horizon = max(int(position or 0), 1)
        return f"{horizon}:{horizon}:"
    raise TypeError(f"not a trigger capture position: {position!r}")


def _xmin(position: Position) -> int:
    """Every transaction below it is applied."""
    if isinstance(position, dict):
        return _xmin(position["done"])
    return int(_snapshot(position).split(":", 1)[0]) if isinstance(position, str) else max(int(position or 0), 0)


def _xmax(position: Position) -> int:
    """No transaction from it on is applied."""
    if isinstance(position, dict):
        return _xmax(position["window"])
    if isinstance(position, str):
        xmin, xmax, _ = position.split(":")
        if int(xmin) > int(xmax):
            raise ValueError(f"not a snapshot: {position!r}")
        return int(xmax)
    return max(int(position or 0), 0)


#: A transaction open longer than this holds trigger capture back noticeably: doctor says so.
OLD_TRANSACTION_SECONDS = 300


#: Made once: json.loads(text, parse_float=...) builds a new decoder for every image.
_EXACT = json.JSONDecoder(parse_float=Decimal)


def _exact(text: str) -> dict:
    """JSON from to_jsonb with numbers as Decimal, never float."""
    return _EXACT.decode(text)


def _same(value: Any) -> Any:
    return value


def _json_reader(column: sa.Column) -> Callable[[Any], Any]:
    """How a value of ``column`` as to_jsonb wrote it becomes the change model's value."""
    kind = column.type
    if isinstance(kind, sa.JSON):
        return lambda v: json.loads(json.dumps(v, default=float))  # documents as the logical path gives them
    if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float):
        return lambda v: None if v is None else Decimal(v) if not isinstance(v, Decimal) else v
    if isinstance(kind, sa.Float):
        return lambda v: None if v is None else float(v)
    if isinstance(kind, sa.DateTime):
        return lambda v: None if v is None else dt.datetime.fromisoformat(v)
    if isinstance(kind, sa.Date):
        return lambda v: None if v is None else dt.date.fromisoformat(v)
    if isinstance(kind, sa.LargeBinary):
        return lambda v: None if v is None else bytes.fromhex(v[2:])
    if isinstance(kind, sa.Uuid):
        return lambda v: None if v is None else uuid.UUID(v)
    return _same
