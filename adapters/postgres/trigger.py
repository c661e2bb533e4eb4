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
import uuid
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator

import sqlalchemy as sa

from cdc.changes import Batch, Change, Position, dumps, loads
from cdc.errors import SourceError

from .._sql import SqlSource, kept_note
from . import sql



#: The column of the consumers table that names the database (pg_database.oid) the pair was
#: installed in, or last copied from.
DATABASE_COLUMN = "database_oid"


def _records_database(conn: sa.Connection) -> bool:
    """Whether the consumers table has DATABASE_COLUMN (`cdc install` adds it to older installations)."""
    return DATABASE_COLUMN in {c["name"] for c in sa.inspect(conn).get_columns(sql.CONSUMERS)}

class TriggerSource(SqlSource):
    """Reads the changelog the capture triggers fill; purges what every pair has applied."""

    registers_tables = True
    changelog_mark = f"SELECT last_value FROM {sql.CHANGELOG}_id_seq"  # moves with every id handed out

    # -- install -------------------------------------------------------------------
    def prepare(self, keep: Iterable[str] = ()) -> list[str]:
        removed = []
        with self.engine.begin() as conn:
            kept = self._kept(conn, keep)
            for table in self._no_longer_captured(conn, keep):
                for statement in sql.drop_trigger(table):
                    conn.exec_driver_sql(statement)
                removed.append(f"removed trigger on {table} (no longer in the pair)")
            for statement in sql.CREATE_TRIGGER_STATE:
                conn.exec_driver_sql(statement)
            for table in self.keys:
                self.describe(table)  # SchemaError if it is missing
                for statement in sql.create_trigger(table):
                    conn.exec_driver_sql(statement)
            conn.exec_driver_sql(f"INSERT INTO {sql.CONSUMERS} (pair, tables) VALUES (%(pair)s, %(tables)s) "
                                 "ON CONFLICT (pair) DO UPDATE SET tables = excluded.tables",
                                 {"pair": self.pair, "tables": dumps(sorted({*self.keys, *kept}))})
            self._register_generation(conn)
            conn.exec_driver_sql(f"ALTER TABLE {sql.CONSUMERS} ADD COLUMN IF NOT EXISTS {DATABASE_COLUMN} bigint")
            conn.exec_driver_sql(f"UPDATE {sql.CONSUMERS} SET {DATABASE_COLUMN} = ({sql.DATABASE_OID}) "
                                 f"WHERE pair = %(pair)s AND {DATABASE_COLUMN} IS NULL", {"pair": self.pair})
        return [f"changelog {sql.CHANGELOG}"] + [f"trigger on {t}" for t in self.keys] + removed + \
            [kept_note(t) for t in kept]

    def generation(self) -> str | None:
        """The identity `cdc install` gave this pair's registration with the changelog."""
        return self._registered_generation()

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

    def unprepare(self) -> list[str]:
        removed = []
        with self.engine.begin() as conn:
            if not sa.inspect(conn).has_table(sql.CONSUMERS):
                return []
            mine = set(self.keys) | self._registered(conn).get(self.pair, set())  # tables removed from it too
            conn.exec_driver_sql(f"DELETE FROM {sql.CONSUMERS} WHERE pair = %(pair)s", {"pair": self.pair})
            still = {t for (tables,) in conn.exec_driver_sql(f"SELECT tables::text FROM {sql.CONSUMERS}")
                     for t in loads(tables)}
            for table in sorted(mine - still):
                for statement in sql.drop_trigger(table):
                    conn.exec_driver_sql(statement)
                removed.append(f"trigger on {table}")
            if not still:
                for statement in sql.DROP_TRIGGER_STATE:
                    conn.exec_driver_sql(statement)
                removed.append(f"changelog {sql.CHANGELOG}")
        return removed

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

    # -- stream --------------------------------------------------------------------
    def current_position(self) -> Position:
        with self.engine.connect() as conn:
            self._require_installed(conn)
            return conn.exec_driver_sql(sql.SNAPSHOT).scalar()

    def begin_snapshot(self) -> Position:
        """A copy from now on is of this database: the registration records it (see _same_database)."""
        with self.engine.begin() as conn:
            self._require_installed(conn)
            if _records_database(conn):
                conn.exec_driver_sql(f"UPDATE {sql.CONSUMERS} SET {DATABASE_COLUMN} = ({sql.DATABASE_OID}) "
                                     "WHERE pair = %(pair)s", {"pair": self.pair})
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
            recorded, now = conn.exec_driver_sql(
                f"SELECT {DATABASE_COLUMN}, ({sql.DATABASE_OID}) FROM {sql.CONSUMERS} WHERE pair = %(pair)s",
                {"pair": self.pair}).one()
        if recorded is not None and recorded != now:
            raise SourceError(
                f"pair {self.pair}: the source database is not the one capture was installed in (database oid "
                f"{recorded}, now {now}): it was restored from a dump, so it holds an older state than the target "
                "has, and the changes in between are not in its changelog. Copy the tables again with "
                "`cdc run --resnapshot CONFIG`, then remove what the source no longer has with "
                "`cdc reconcile CONFIG --repair`")

    def read(self, after: Position, max_changes: int) -> Batch:
        parts = list(self.stream(after, max_changes))
        return Batch([c for p in parts for c in p.changes], parts[-1].position)

    def stream(self, after: Position, max_changes: int) -> Iterator[Batch]:
        """The transactions committed since ``after``, whole, in parts of ``max_changes``; the read
        stops after the whole transaction that brings it to ``max_changes`` changes (see above)."""
        done, window, through = _window(after)
        with self.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
            self._require_installed(conn)
            now = conn.exec_driver_sql(sql.SNAPSHOT).scalar()  # the transaction's snapshot, taken here
            window = window or now
            params = {"low": str(_xmin(done)), "done": done, "window": window, "through": through,
                      "tables": list(self.keys)}
            chosen = conn.exec_driver_sql(sql.NEXT_TRANSACTIONS, {**params, "limit": max_changes}).all()
            if not chosen:
                yield Batch([], window)
                return
            rows = conn.execution_options(stream_results=True, yield_per=5000).exec_driver_sql(
                sql.ROWS_OF, {"txids": [t.txid for t in chosen], "lasts": [t.last for t in chosen],
                              "tables": list(self.keys)})
            part: list[Change] = []
            for row in rows:
                part.append(self._change(row))
                if len(part) >= max_changes:
                    yield Batch(part, None, complete=False)
                    part = []
        # The window's rest (transactions after the last one taken) is the next read's.
        rest = chosen[0].remaining > len(chosen)
        yield Batch(part, {"done": done, "window": window, "through": chosen[-1].last} if rest else window)

    def format_position(self, position: Position) -> str:
        if isinstance(position, dict):
            done, window, through = _window(position)
            return f"snapshot {window}, after {done} up to change {through:,}"
        return f"snapshot {_snapshot(position)}" if position is not None else super().format_position(position)

    def _change(self, row: Any) -> Change:
        if row.op == "truncate":
            raise SourceError(
                f"pair {self.pair}: TRUNCATE of {row.tbl} at the source (transaction {row.txid}) is not replicated by "
                "trigger capture: the pair stops before it. Once the table is as it should be, copy the tables again "
                "with `cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed by "
                "`cdc reconcile CONFIG --repair`)")
        readers = self._json_readers(row.tbl)
        before, after = (None if text is None else {k: readers.get(k, _same)(v) for k, v in _exact(text).items()}
                         for text in (row.before, row.after))
        image = after if after is not None else before
        key = tuple(image[k] for k in self.keys[row.tbl])
        return Change(row.op, row.tbl, key, before, after, row.changed_at, row.id, row.txid)

    def _json_readers(self, table: str) -> dict[str, Callable[[Any], Any]]:
        cache = self.__dict__.setdefault("_readers", {})
        if table not in cache:
            info = self.describe(table)
            cache[table] = {name: _json_reader(c) for name, c in zip(info.column_names, info.columns)}
        return cache[table]

    def pending(self, after: Position) -> int | None:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(sql.CHANGELOG):
                return None
            done, window, through = _window(after)
            waiting = conn.exec_driver_sql(sql.PENDING, {"low": str(_xmin(done)), "done": done,
                                                         "tables": list(self.keys)}).scalar()
            if window is not None:  # the part of the window applied already
                waiting -= conn.exec_driver_sql(sql.APPLIED_OF_WINDOW, {
                    "low": str(_xmin(done)), "done": done, "window": window, "through": through,
                    "tables": list(self.keys)}).scalar()
            return waiting

    def acknowledge(self, position: Position) -> None:
        """Every transaction below the position's xmin is applied: the changelog may let them go."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {sql.CONSUMERS} SET acked = greatest(acked, %(p)s) WHERE pair = %(pair)s",
                                 {"p": _xmin(position), "pair": self.pair})
            # Purge only what every pair reading this changelog has applied.
            conn.exec_driver_sql(f"DELETE FROM {sql.CHANGELOG} WHERE txid < "
                                 f"(SELECT min(acked) FROM {sql.CONSUMERS})::text::xid8")

    def diagnose(self) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            shared = self._changelog_findings(conn, sql.CHANGELOG)
            if shared[0][0] == "fail":
                return shared
            found = self._trigger_findings(conn) + shared
            oldest = conn.exec_driver_sql(sql.OLDEST_TRANSACTION).first()
        if oldest is not None and oldest.seconds > OLD_TRANSACTION_SECONDS:
            found.append(("warn", f"transaction {oldest.xid} (pid {oldest.pid}, {oldest.usename}) has run for "
                                  f"{oldest.seconds:,.0f}s: nothing committed after it started is applied until it "
                                  "ends; end it or ask its owner to"))
        else:
            found.append(("ok", "no long-running transaction holds capture back"))
        return found


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
