"""Binlog events -> parts of whole transactions; a statement that changes captured rows unseen stops the pair."""

from __future__ import annotations

import datetime as dt
import struct
from typing import TYPE_CHECKING, Any, Iterator

import sqlalchemy as sa
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import NONE_SOURCE
from pymysqlreplication.event import GtidEvent, MariadbGtidEvent, QueryEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from cdc.changes import Batch, Change
from cdc.errors import SourceError

from . import _rows, _statements, sql

if TYPE_CHECKING:
    from .binlog import BinlogSource

UTC = dt.timezone.utc
#: What mysql-replication's None means when it is not NULL: a zero date (kept as the text the
#: driver gives, which date columns refuse by name) or an empty SET.
NOT_NULL = {NONE_SOURCE.OUT_OF_DATETIME_RANGE: "0000-00-00 00:00:00",
            NONE_SOURCE.OUT_OF_DATETIME2_RANGE: "0000-00-00 00:00:00", NONE_SOURCE.OUT_OF_DATE_RANGE: "0000-00-00",
            NONE_SOURCE.EMPTY_SET: ""}
_OPS = {WriteRowsEvent: "insert", UpdateRowsEvent: "update", DeleteRowsEvent: "delete"}


class Transactions:
    """Groups row events into transactions, in parts of at most ``size`` changes; ``done`` once
    ``size`` changes have been read in whole transactions."""

    def __init__(self, source: BinlogSource, size: int):
        self.source, self.size = source, size
        self.pending: list[Change] = []
        self.total, self.partial, self.done = 0, False, False
        self.gtid: str | None = None
        self.xa: str | None = None  # the XA id when the transaction being read is an XA one
        self.moved: dict | None = None  # the end of the last transactions that had none of our rows

    def feed(self, event: Any, reader: BinLogStreamReader) -> Iterator[Batch]:
        if isinstance(event, (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)):
            yield from self._rows(event, reader)
        elif isinstance(event, XidEvent) or (isinstance(event, QueryEvent) and _query(event) == "COMMIT"):
            yield from self._commit(reader)
        elif isinstance(event, (MariadbGtidEvent, GtidEvent)):
            self.gtid, self.xa = str(event.gtid), _mariadb_xa(event)
        elif isinstance(event, QueryEvent):
            self._query(event)

    def _rows(self, event: Any, reader: BinLogStreamReader) -> Iterator[Batch]:
        if self.xa is not None:
            self._refuse_xa(event.table)
        committed = dt.datetime.fromtimestamp(event.timestamp, UTC)
        position = {"file": reader.log_file, "pos": reader.log_pos}
        op = _OPS[type(event)]
        for before, after in _images(event, op):
            self.pending.append(self.source.change(event.table, op, before, after, committed, position, self.gtid))
            if len(self.pending) >= self.size:
                part, self.pending = self.pending, []
                self.total += len(part)
                self.partial = True
                yield Batch(part, None, complete=False)

    def _commit(self, reader: BinLogStreamReader) -> Iterator[Batch]:
        position = {"file": reader.log_file, "pos": reader.log_pos}
        if self.gtid is not None:  # lets check_position tell this binlog from one reset and rewritten
            position["gtid"] = self.gtid
        part, self.pending, self.gtid = self.pending, [], None
        if not part and not self.partial:
            self.moved = position
            return
        self.total += len(part)
        self.partial, self.moved = False, None
        yield Batch(part, position)
        self.done = self.total >= self.size

    def _query(self, event: QueryEvent) -> None:
        text = _query(event)
        if text.startswith(("XA START", "XA BEGIN")):  # MySQL logs it; MariaDB flags the GTID event
            self.xa = _statements.xa_id(_text(event)) or f"(GTID {self.gtid})"
            return
        if text.startswith(("ALTER TABLE", "DROP TABLE", "RENAME TABLE", "TRUNCATE")):
            # Drop the cached reflection: the next row event is checked against the new shape.
            self.source.__dict__.pop("_info", None)
            self.source.__dict__.pop("_table_readers", None)
        schema = event.schema.decode(errors="replace") if isinstance(event.schema, bytes) else str(event.schema or "")
        database = (self.source.engine.url.database or "").lower()
        if schema.lower() != database and not self._may_name_ours(text):
            return
        found = _statements.effect(_text(event), schema)
        if found is None:
            return
        touched = self._captured(found.tables)
        if touched:
            self._refuse(found.action, touched[0], _text(event))
        if found.action in DML:  # through a view, or a table whose triggers write captured tables
            ours = [n.table for n in found.tables if n.database.lower() == database]
            reaching = self._may_reach_captured(ours)
            if reaching:
                self._refuse(found.action, reaching[0], _text(event), indirect=True)

    def _may_name_ours(self, text: str) -> bool:
        """Whether the (upper-cased) statement has a captured table's or the database's name in it at
        all: most statements in a busy binlog are other databases', and need no reading."""
        names = [*self.source.keys, self.source.engine.url.database or ""]
        return any(n and (n.upper() in text or n.replace("`", "``").upper() in text) for n in names)

    def _may_reach_captured(self, tables: list[str]) -> list[str]:
        """The ones of ``tables`` (of the pair's database, not captured) that are views or have
        triggers: a write to them may change captured tables, which no row event then shows. Read
        from the schema as it is now (statement-logged writes are rare: this runs only for them)."""
        if not tables:
            return []
        with self.source.engine.connect() as conn:
            found = conn.execute(sa.text(sql.VIEWS_OR_TRIGGERED).bindparams(sa.bindparam("names", expanding=True)),
                                 {"names": tables}).scalars().all()
        lowered = {f.lower() for f in found}
        return [t for t in tables if t.lower() in lowered]

    def _captured(self, names: list[_statements.Name]) -> list[str]:
        """The pair's tables among ``names`` (a database's "*": all of them), in the pair's spelling."""
        database = (self.source.engine.url.database or "").lower()
        ours = {t.lower(): t for t in self.source.keys}
        return [t for n in names if n.database.lower() == database
                for t in (list(ours.values()) if n.table == "*" else [ours.get(n.table.lower())]) if t]

    def _refuse(self, action: str, table: str, text: str, indirect: bool = False) -> None:
        """Stop on a statement that changed a captured table's rows without row events (``indirect``:
        a statement-logged write in the pair's database to a table it does not capture, which as a view
        or through triggers may change captured tables: nothing tells which rows)."""
        pair, shown = self.source.pair, " ".join(text.split())[:120]
        again = ("copy the tables again with `cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed "
                 "by `cdc reconcile CONFIG --repair`)")
        what = f"{table}, a view or a table with triggers in the pair's database (it may change captured tables)" \
            if indirect else f"captured table {table}"
        if action in DML:
            raise SourceError(
                f"pair {pair}: {action} of {what} was written to the binlog as a statement "
                f"({shown}), not as rows (a session with binlog_format STATEMENT or MIXED), so binlog capture cannot "
                f"apply it: the pair stops before it. Keep binlog_format=ROW in every session that writes captured "
                f"tables, then {again}")
        raise SourceError(
            f"pair {pair}: {action} at the source of captured table {table} ({shown}) is not replicated by binlog "
            f"capture (its rows change without row events): the pair stops before it. Once the table is as it "
            f"should be, {again}")

    def _refuse_xa(self, table: str) -> None:
        raise SourceError(
            f"pair {self.source.pair}: XA transaction {self.xa} (GTID {self.gtid}) changes captured table {table}: "
            "binlog capture does not support XA transactions (their rows are logged at XA PREPARE, before the "
            "transaction commits or rolls back); the pair stops before applying any of it. Use ordinary "
            "transactions for captured tables; once this one has ended (XA COMMIT or XA ROLLBACK; `XA RECOVER` "
            "lists those still prepared), copy the tables again with `cdc run --resnapshot CONFIG` (rows deleted "
            "meanwhile are then removed by `cdc reconcile CONFIG --repair`)")


def _images(event: Any, op: str) -> Iterator[tuple[dict | None, dict | None]]:
    """(before, after) of each row: the fast decoder where it handles every column type, else
    mysql-replication's own decoding (whose None for a zero date or an empty SET is undone)."""
    decoder = _rows.decoder_for(event.table_map[event.table_id])
    if decoder is not None and event.event_type not in _PARTIAL:
        yield from _rows.decode(event, decoder)
        return
    for row in event.rows:
        if op == "update":
            yield (_not_null(row["before_values"], row.get("before_none_sources")),
                   _not_null(row["after_values"], row.get("after_none_sources")))
        else:
            image = _not_null(row["values"], row.get("none_sources"))
            yield (None, image) if op == "insert" else (image, None)


def _not_null(image: dict, none: dict | None) -> dict:
    if not none:
        return image
    return {c: NOT_NULL.get(none.get(c), v) if v is None else v for c, v in image.items()}


_PARTIAL = {39}  # MySQL 8's PARTIAL_UPDATE_ROWS_EVENT (binary JSON diffs): the library decodes those


#: Statements that change rows: logged as statements, their rows are not in the binlog.
DML = ("INSERT", "REPLACE", "UPDATE", "DELETE")


def _query(event: QueryEvent) -> str:
    return _text(event).upper()


def _text(event: QueryEvent) -> str:
    query = event.query
    return (query.decode(errors="replace") if isinstance(query, bytes) else str(query)).strip()


#: MariaDB's GTID event flags: the group is an XA transaction's prepared part; a commit id follows the flags.
_FL_PREPARED_XA, _FL_GROUP_COMMIT_ID = 64, 2


def _mariadb_xa(event: Any) -> str | None:
    """The XA id of a MariaDB GTID event that starts an XA transaction's prepared part (XA START ...
    XA PREPARE), else None. mysql-replication reads the flags only; the XID follows them in the
    event (commit id if flagged, then format id, gtrid length, bqual length, gtrid, bqual)."""
    if not isinstance(event, MariadbGtidEvent) or not event.flags & _FL_PREPARED_XA:
        return None
    try:
        if event.flags & _FL_GROUP_COMMIT_ID:
            event.packet.read(8)
        format_id, gtrid_length, bqual_length = struct.unpack("<IBB", event.packet.read(6))
        return _statements.xa_text(format_id, event.packet.read(gtrid_length), event.packet.read(bqual_length))
    except (struct.error, ValueError):
        return f"(GTID {event.gtid})"
