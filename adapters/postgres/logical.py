"""PostgreSQL as a source: capture `logical`, the pair's pgoutput slot streamed over replication.

Position: the end LSN of the last applied transaction (an int). The slot is confirmed only to
what the target has committed (acknowledge).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import sqlalchemy as sa

from cdc.changes import Batch, Position
from cdc.errors import RetryableError, SchemaError, SourceError

from .._sql import SqlSource, kept_note
from . import _logical_doctor, _pgoutput, sql, types
from ._decoder import Decoder
from ._slot_stream import Live
from ._replication import ReplicationConnection, WalStream

logger = logging.getLogger(__name__)
#: A slot's walsender whose client has said nothing for this long serves a run that lost the pair.
STALE_SECONDS = 5.0


class LogicalSource(SqlSource):
    """Reads committed transactions of the pair's tables from its replication slot."""

    def __init__(self, engine: sa.Engine, pair: str):
        super().__init__(engine, pair)
        self.slot = self.publication = sql.object_name(pair)

    # -- install -------------------------------------------------------------------
    def prepare(self, keep: Iterable[str] = ()) -> list[str]:
        done = []
        with self.engine.begin() as conn:
            self._check_wal_level(conn)
            for table in self.keys:
                self._check_identity(conn, table)
            exists = conn.exec_driver_sql(sql.PUBLICATION_EXISTS, {"publication": self.publication}).first()
            # A table the checkpoint still streams stays in the publication (see Source.prepare).
            kept = sorted(set(keep) & self._published(conn) - set(self.keys)) if exists else []
            if exists:
                conn.exec_driver_sql(sql.set_publication_tables(self.publication, [*self.keys, *kept]))
                conn.exec_driver_sql(sql.publish_via_root(self.publication))
            else:
                conn.exec_driver_sql(sql.create_publication(self.publication, list(self.keys)))
            done.append(f"publication {self.publication} ({', '.join(self.keys)})")
            done += [kept_note(t, "in the publication") for t in kept]
        with self.engine.begin() as conn:
            if conn.exec_driver_sql(sql.SLOT, {"slot": self.slot}).first() is None:
                conn.exec_driver_sql(sql.CREATE_SLOT, {"slot": self.slot})
                self._new_generation(conn)
            elif self._generation(conn) is None:  # installed before generations existed
                self._new_generation(conn)
            done.append(f"replication slot {self.slot} (pgoutput)")
        return done

    # -- generation ----------------------------------------------------------------
    def _new_generation(self, conn: sa.Connection) -> None:
        """A new identity for a new slot: pg_replication_slots tells no incarnation from another,
        so each slot cdc-sync creates gets one, kept in the publication's comment."""
        conn.exec_driver_sql(sql.comment_generation(self.publication, uuid.uuid4().hex))

    def _generation(self, conn: sa.Connection) -> str | None:
        comment = conn.exec_driver_sql(sql.PUBLICATION_COMMENT, {"publication": self.publication}).scalar()
        if comment is None or not comment.startswith(sql.GENERATION_PREFIX):
            return None
        return comment.removeprefix(sql.GENERATION_PREFIX)

    def generation(self) -> str | None:
        """The identity of the replication slot's incarnation (new whenever cdc-sync creates the slot)."""
        with self.engine.connect() as conn:
            if not conn.exec_driver_sql(sql.PUBLICATION_EXISTS, {"publication": self.publication}).first():
                raise SourceError(f"publication {self.publication} does not exist: capture is not installed for "
                                  f"pair {self.pair}: run `cdc install CONFIG`")
            return self._generation(conn)

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """SourceError when the checkpoint's LSN is past the end of the server's WAL, or before the
        point the slot has confirmed: the slot never sends a transaction that committed before it
        again (the slot is confirmed only after the checkpoint commits, so in normal operation it
        is never ahead of it)."""
        with self.engine.connect() as conn:
            newest = int(conn.exec_driver_sql(sql.CURRENT_LSN).scalar())
            confirmed = int(self._slot(conn).confirmed)
        self._position_ahead(position, newest, "the end of the source server's WAL")
        self._position_behind(position, confirmed, f"the point replication slot {self.slot} has confirmed, "
                                                    "before which it sends nothing again")

    def unprepare(self) -> list[str]:
        removed = []
        with self.engine.begin() as conn:
            slot = conn.exec_driver_sql(sql.SLOT, {"slot": self.slot}).first()
            if slot is not None:
                if slot.active:
                    raise SourceError(f"replication slot {self.slot} is in use: stop `cdc run` first")
                conn.exec_driver_sql(sql.DROP_SLOT, {"slot": self.slot})
                removed.append(f"replication slot {self.slot}")
            if conn.exec_driver_sql(sql.PUBLICATION_EXISTS, {"publication": self.publication}).first():
                conn.exec_driver_sql(sql.drop_publication(self.publication))
                removed.append(f"publication {self.publication}")
        return removed

    def _check_wal_level(self, conn: sa.Connection) -> None:
        level = conn.exec_driver_sql(sql.WAL_LEVEL).scalar()
        if level != "logical":
            raise SourceError(f"wal_level is {level!r}; logical capture needs 'logical': run "
                              "ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL")

    def _check_identity(self, conn: sa.Connection, table: str) -> None:
        info = self.describe(table)
        identity = conn.exec_driver_sql(sql.REPLICA_IDENTITY, {"table": table}).scalar()
        if identity != "f" and tuple(self.keys[table]) != info.primary_key:
            raise SourceError(f"table {table}: its rows are identified by ({', '.join(self.keys[table])}), not by a "
                              f"primary key, so deletes carry no key: run ALTER TABLE {table} REPLICA IDENTITY FULL")

    # -- bulk snapshot ---------------------------------------------------------------
    def column_types(self, table: str) -> dict[str, str]:
        """Column name -> PostgreSQL type as format_type writes it (for the COPY fast path)."""
        with self.engine.connect() as conn:
            return dict(conn.exec_driver_sql(sql.COLUMN_TYPES, {"table": sql.quoted_name(table)}).all())

    def copy_compatible(self, table: str, target_types: dict[str, str | None]) -> bool:
        """Whether binary COPY data fits these target column types: only the very same types."""
        return all(target_types.get(c) == t for c, t in self.column_types(table).items() if c in target_types)

    def copy_out(self, table: str, columns: list[str], key: tuple[str, ...], after_key: tuple | None,
                 limit: int, write, target_types: dict[str, str | None] | None = None) -> None:
        """Stream one keyed chunk as binary COPY data into ``write`` (no Python value per row);
        ``target_types`` play no part: binary COPY goes only into the very same types."""
        with self.reading() as conn:
            cursor = conn.connection.driver_connection.cursor()
            statement = sql.copy_out(table, columns, key, after_key is not None, limit)
            with cursor.copy(statement, list(after_key) if after_key is not None else None) as copy:
                for block in copy:
                    write(block)

    # -- doctor --------------------------------------------------------------------
    def diagnose(self) -> list[tuple[str, str]]:
        """(level, text) findings about this source's fitness for logical capture, with the fix."""
        return _logical_doctor.findings(self)

    # -- stream --------------------------------------------------------------------
    def _slot(self, conn: sa.Connection) -> Any:
        slot = conn.exec_driver_sql(sql.SLOT, {"slot": self.slot}).first()
        if slot is None:
            raise SourceError(f"replication slot {self.slot} does not exist (dropped, or `cdc install` not run). "
                              "Changes since the last checkpoint cannot be recovered from the log: run `cdc install "
                              "CONFIG` and `cdc run --resnapshot CONFIG` to copy the tables again")
        if slot.wal_status == "lost":
            raise SourceError(f"replication slot {self.slot} was invalidated (its WAL was removed, see "
                              "max_slot_wal_keep_size): run `cdc uninstall`, `cdc install` and "
                              "`cdc run --resnapshot CONFIG`")
        return slot

    def current_position(self) -> Position:
        """The slot's confirmed point; a first snapshot uses ``begin_snapshot`` instead."""
        with self.engine.connect() as conn:
            return int(self._slot(conn).confirmed)

    def begin_snapshot(self) -> Position:
        """Re-create the slot and hold its exported snapshot open for the snapshot reads.

        The slot starts exactly where the snapshot sees the data: no change is both in the
        snapshot and in the stream, none is in neither. Only a pair without a checkpoint gets
        here, so nothing in the slot `cdc install` made has been applied or is needed.
        """
        with self.engine.begin() as conn:
            if not conn.exec_driver_sql(sql.PUBLICATION_EXISTS, {"publication": self.publication}).first():
                raise SourceError(f"publication {self.publication} does not exist: run `cdc install CONFIG` first")
            slot = conn.exec_driver_sql(sql.SLOT, {"slot": self.slot}).first()
            if slot is not None and slot.active:
                raise SourceError(f"replication slot {self.slot} is in use by another process: stop it first")
            if slot is not None:
                conn.exec_driver_sql(sql.DROP_SLOT, {"slot": self.slot})
            self._new_generation(conn)
        exporter = ReplicationConnection(self.engine.url)
        try:
            position, self._exported = exporter.create_slot(self.slot)
        except BaseException:
            exporter.close()
            raise
        self._exporter = exporter
        logger.info("pair %s: slot %s re-created at %s with snapshot %s", self.pair, self.slot,
                    sql.lsn_text(position), self._exported)
        return position

    def join_stream(self, position: Position, tables: list[str]) -> Position:
        """The tables must be in the pair's publication (`cdc install` puts them there) before they
        are copied: the slot never sends a change made while its table was outside it."""
        missing = self.uncaptured(tables)
        if missing:
            raise SourceError(f"table {missing[0]} of pair {self.pair} is not in its publication {self.publication}, "
                              "so its changes are not captured: run `cdc install CONFIG`, then `cdc run` copies it")
        return position

    def whole_before_images(self, table: str) -> bool:
        """Only REPLICA IDENTITY FULL sends the whole old row of an update or delete."""
        with self.engine.connect() as conn:
            return conn.exec_driver_sql(sql.REPLICA_IDENTITY, {"table": table}).scalar() == "f"

    def uncaptured(self, tables: list[str]) -> list[str]:
        """The tables not in the pair's publication: the slot sends none of their changes."""
        with self.engine.connect() as conn:
            published = self._published(conn)
        return [t for t in tables if t not in published]

    def _published(self, conn: sa.Connection) -> set[str]:
        return {name for (name,) in conn.exec_driver_sql(sql.PUBLISHED_TABLES, {"publication": self.publication})}

    def end_snapshot(self) -> None:
        """Release the exported snapshot (closing its replication connection)."""
        exporter, self._exporter, self._exported = getattr(self, "_exporter", None), None, None
        if exporter is not None:
            exporter.close()

    @contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        """A connection that sees the exported snapshot while one is held (else the current data).

        A snapshot resumed by a later run reads newer data: the changes from the slot's start
        are replayed over it (each carries its whole row), so the target still converges.
        """
        with self.engine.connect() as conn:
            name = getattr(self, "_exported", None)
            if name is not None:
                try:
                    conn.exec_driver_sql(sql.REPEATABLE_READ)
                    conn.exec_driver_sql(sql.set_snapshot(name))
                except sa.exc.DBAPIError as exc:
                    logger.warning("pair %s: the exported snapshot is gone (%s); reading current data and "
                                   "replaying the changes since the slot's start over it", self.pair,
                                   str(exc.orig).strip())
                    conn.rollback()
                    self.end_snapshot()
            yield conn

    def read(self, after: Position, max_changes: int) -> Batch:
        parts = list(self.stream(after, max_changes))
        changes = [c for part in parts for c in part.changes]
        complete = [part.position for part in parts if part.complete]
        return Batch(changes, complete[-1] if complete else (after or 0))

    def stream(self, after: Position, max_changes: int) -> Iterator[Batch]:
        """Whole transactions after ``after`` from the slot's stream, in parts of at most
        ``max_changes`` changes (so even a transaction of millions of rows needs bounded memory).

        A read takes what the stream has ready, up to ``max_changes`` changes in whole
        transactions or ``GROUP_SECONDS``, and ends at a transaction boundary: the target commits
        them together. A read that finds nothing waits until the server says it has decoded the
        WAL flushed when the read began, so an empty read means drained (`cdc run --once`).
        """
        after = after or 0
        yield from self._live(after).read(after, max_changes)

    def _live(self, after: int) -> Live:
        """The slot's stream, positioned right after ``after``: started (again) unless the last read
        ended there at a transaction boundary with nothing of the stream taken beyond it."""
        live = getattr(self, "_stream_state", None)
        if live is not None and live.handed == after and not live.unread and live.stream.alive:
            return live
        self._end_stream()
        self._free_slot()
        self._same_generation()
        stream = WalStream(self.engine.url, self.slot, self.publication, after)
        self._stream_state = Live(stream, Decoder(self), after, self.engine)
        logger.debug("pair %s: streaming slot %s from %s", self.pair, self.slot, sql.lsn_text(after))
        return self._stream_state

    def _same_generation(self) -> None:
        """The slot a stream starts again on must be the one the run began with: a slot dropped and
        made again meanwhile (by `cdc install`, while this run was paused or retrying) starts at
        its creation, and what came between the two is in neither."""
        generation = self.generation()
        first = self.__dict__.setdefault("_streamed_generation", generation)
        if generation != first:
            raise SourceError(f"pair {self.pair}: replication slot {self.slot} was dropped and made again (capture "
                              f"installation {first}, now {generation}) while this run streamed: changes made in "
                              "between were not captured. Copy the tables again with `cdc run --resnapshot CONFIG` "
                              "(rows deleted meanwhile are then removed by `cdc reconcile CONFIG --repair`)")

    def _free_slot(self) -> None:
        """Wait until no other connection streams the slot. Only the process holding the pair's claim
        reads it, so a walsender whose client has been silent for ``STALE_SECONDS`` (it sends a status
        message every second) serves a run that lost the pair: paused, hung or gone without a word.
        Its connection is ended, or the slot would stay blocked until the server's wal_sender_timeout.
        A dropped or invalidated slot says so, with the fix."""
        deadline = time.monotonic() + 5
        while True:
            with self.engine.begin() as conn:
                self._slot(conn)
                user = conn.exec_driver_sql(sql.SLOT_USER, {"slot": self.slot}).first()
                if user is None:
                    return
                if user.silent is not None and float(user.silent) > STALE_SECONDS:
                    logger.warning("pair %s: replication slot %s is held by a connection (pid %s) whose client has "
                                   "been silent for %.0f s, a run that no longer holds the pair: ending it",
                                   self.pair, self.slot, user.pid, float(user.silent))
                    conn.exec_driver_sql(sql.TERMINATE, {"pid": user.pid})
            if time.monotonic() > deadline:
                raise RetryableError(f"source: replication slot {self.slot} is in use by another connection (pid "
                                     f"{user.pid}), whose client replied {float(user.silent or 0):.0f} s ago")
            time.sleep(0.1)

    def _end_stream(self) -> None:
        live, self._stream_state = getattr(self, "_stream_state", None), None
        if live is not None:
            live.stream.close()

    def idle(self, seconds: float, stop: Any) -> None:
        """Wait until the stream brings something (or ``seconds`` pass, or ``stop``)."""
        live = getattr(self, "_stream_state", None)
        if live is None or not live.stream.alive:
            stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while not stop.is_set() and not live.stream.ready.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            live.stream.ready.wait(min(left, 0.2))

    def close(self) -> None:
        self._end_stream()
        super().close()

    def _check_relation(self, relation: _pgoutput.Relation) -> list:
        """Parsers for the relation's columns; SchemaError if a column the pair reads is gone.

        A table the pair no longer copies (removed from its tables, publication not yet changed)
        is skipped, with a warning once."""
        if relation.name not in self.keys:
            warned = self.__dict__.setdefault("_unwatched", set())
            if relation.name not in warned:
                warned.add(relation.name)
                logger.warning("pair %s: publication %s still includes table %s, which the pair no longer copies; "
                               "its changes are skipped (`cdc install CONFIG` takes it out of the publication)",
                               self.pair, self.publication, relation.name)
            return [types.parser(oid) for oid in relation.type_oids]
        known = self.describe(relation.name).column_names
        generated = self._generated(relation.name)
        missing = [c for c in known if c not in relation.columns and c not in generated]
        if missing:
            raise SchemaError(f"source table {relation.name}: column {missing[0]!r} was dropped or renamed while "
                              f"pair {self.pair} ran; the pair stops (nothing after it was applied)")
        return [types.parser(oid) for oid in relation.type_oids]

    def _generated(self, table: str) -> frozenset[str]:
        """The table's generated columns, whose values pgoutput does not send (before PostgreSQL 18):
        each change reads them from the table, as it does unchanged TOAST values."""
        cache = self.__dict__.setdefault("_generated_columns", {})
        if table not in cache:
            with self.engine.connect() as conn:
                cache[table] = frozenset(conn.exec_driver_sql(sql.GENERATED_COLUMNS,
                                                              {"table": sql.quoted_name(table)}).scalars())
        return cache[table]

    def pending(self, after: Position) -> str | None:
        """The WAL the slot has not released, in bytes: counting changes would decode the backlog."""
        with self.engine.connect() as conn:
            slot = conn.exec_driver_sql(sql.SLOT, {"slot": self.slot}).first()
            if slot is None:
                return None
            behind = int(conn.exec_driver_sql(sql.CURRENT_LSN).scalar()) - int(slot.confirmed)
        return f"{max(behind, 0):,} bytes of WAL behind"

    def format_position(self, position: Position) -> str:
        return sql.lsn_text(position) if isinstance(position, int) else super().format_position(position)

    def acknowledge(self, position: Position) -> None:
        """Confirm the slot up to ``position``: through the stream when one runs (reported with its
        next status message), else by advancing the slot (a walsender of an ended run may take a
        moment to go)."""
        if not position:
            return
        live = getattr(self, "_stream_state", None)
        if live is not None and live.stream.alive:
            live.stream.acknowledge(position)
            return
        deadline = time.monotonic() + 5
        while True:
            with self.engine.begin() as conn:
                slot = self._slot(conn)
                if int(slot.confirmed) >= position:
                    return
                if not slot.active:
                    conn.exec_driver_sql(sql.ADVANCE, {"slot": self.slot, "lsn": sql.lsn_text(position)})
                    return
            if time.monotonic() > deadline:
                return  # the next read confirms it on its own stream
            time.sleep(0.02)

