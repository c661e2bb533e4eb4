"""Replication connections: one creates a slot and exports the snapshot it starts at
(``CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT``); a `WalStream` reads the slot over the
streaming replication protocol (``START_REPLICATION ... LOGICAL``) for as long as the pair runs.

psycopg 3 has no replication API; its libpq wrapper (``psycopg.pq``) runs the commands over a
``replication=database`` connection with the simple query protocol, and reads the COPY BOTH
stream with PQgetCopyData. Streaming decodes the WAL once, as it is written; reading the slot
with ``pg_logical_slot_peek_binary_changes`` decoded it again from the slot's restart_lsn on
every read, so each read of a busy source cost time in proportion to the backlog.
"""

from __future__ import annotations

import logging
import queue
import select
import struct
import threading
import time
from typing import Any

import sqlalchemy as sa
from psycopg import pq
from psycopg.conninfo import make_conninfo

from cdc.config import mask_url
from cdc.errors import RetryableError, SourceError

from . import sql
from ._network import network_settings

logger = logging.getLogger(__name__)
#: How often the stream tells the server how far the target has committed (it drops a replication
#: connection that stays silent for wal_sender_timeout, 60 s by default; and a run taking the pair
#: over ends one silent for a few seconds: see LogicalSource._free_slot).
STATUS_INTERVAL = 1.0
#: Messages read in one wake-up of the reader thread are handed over together, up to this many.
HANDOVER = 2000
PG_EPOCH_OFFSET = 946_684_800  # seconds from 1970-01-01 to 2000-01-01, the protocol's epoch
_HEADER = struct.Struct(">qqq")  # XLogData: start, end of WAL, send time
_KEEPALIVE = struct.Struct(">qqB")  # walEnd, send time, reply requested
_STATUS = struct.Struct(">cqqqqB")  # 'r', written, flushed, applied, clock, reply requested


def replication_conninfo(url: sa.URL) -> str:
    """The libpq conninfo of a replication connection to ``url``: the settings SQLAlchemy gives
    psycopg for an ordinary connection, quoted by psycopg itself.

    Never a URL string: libpq trims spaces around a URL's parts, so a password with a leading or
    trailing space would not survive the round trip; make_conninfo quotes spaces, quotes and
    backslashes as libpq reads them.
    """
    _, settings = url.get_dialect()().create_connect_args(url)
    return make_conninfo("", **{**network_settings(url), **settings}, replication="database")


class ReplicationConnection:
    """One ``replication=database`` connection to the source."""

    def __init__(self, url: sa.URL):
        self.url = url
        self.pgconn = pq.PGconn.connect(replication_conninfo(url).encode())
        if self.pgconn.status != pq.ConnStatus.OK:
            message = self._error()
            self.pgconn.finish()
            if "max_wal_senders" in message:  # no passing fault: the server must be changed
                raise SourceError(f"source {mask_url(url)}: every walsender is in use ({message.splitlines()[-1]}): "
                                  "`cdc run` streams the slot over a replication connection of its own; raise "
                                  "max_wal_senders and restart PostgreSQL, or end a replication connection")
            raise RetryableError(f"source {mask_url(url)}: replication connection failed: {message}")

    def _error(self) -> str:
        return self.pgconn.error_message.decode(errors="replace").strip()

    def command(self, statement: str) -> list[tuple]:
        """A replication command (simple query protocol); its rows as text."""
        result = self.pgconn.exec_(statement.encode())
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise SourceError(f"source: {statement.split()[0]} failed: "
                              f"{result.error_message.decode(errors='replace').strip()}")
        return [tuple(None if v is None else v.decode() for v in (result.get_value(r, c) for c in range(result.nfields)))
                for r in range(result.ntuples)]

    def create_slot(self, slot: str) -> tuple[int, str]:
        """Create the logical slot and export its start snapshot: (consistent point, snapshot name).

        The snapshot can be imported (SET TRANSACTION SNAPSHOT) until this connection runs
        another command or closes.
        """
        ((_, point, snapshot, _),) = self.command(sql.create_replication_slot(slot))
        return sql.lsn_int(point), snapshot

    def close(self) -> None:
        self.pgconn.finish()


class KeepAlive(int):
    """A keepalive's WAL end in the stream of messages: every transaction that commits before it has
    been sent already (the walsender sends a transaction when it decodes its commit)."""


class WalStream:
    """A slot streamed over one replication connection, read by a thread of its own into a bounded
    queue: the pgoutput payloads in order, with a `KeepAlive` wherever the server says how far it
    has decoded. `acknowledge` sets the LSN the target has committed, which the thread reports as
    flushed (the slot then releases the WAL before it); nothing else ever confirms the slot.
    """

    def __init__(self, url: sa.URL, slot: str, publication: str, start: int, depth: int = 64):
        self.start = start
        self.items: queue.Queue = queue.Queue(maxsize=depth)
        self.ready = threading.Event()
        self._flushed, self._sent_flushed = start, -1
        self._want_reply = threading.Event()
        self._stopping = threading.Event()
        self.error: BaseException | None = None
        self.connection = ReplicationConnection(url)
        try:
            for statement in sql.REPLICATION_SESSION:
                self.connection.command(statement)
            self._start(slot, publication, start)
        except BaseException:
            self.connection.close()
            raise
        self._thread = threading.Thread(target=self._read, name=f"cdc-wal-{slot}", daemon=True)
        self._thread.start()

    def _start(self, slot: str, publication: str, start: int) -> None:
        pgconn = self.connection.pgconn
        statement = sql.start_replication(slot, publication, start)
        result = pgconn.exec_(statement.encode())
        if result.status != pq.ExecStatus.COPY_BOTH:
            message = result.error_message.decode(errors="replace").strip()
            if "is active for PID" in message:  # the walsender of a run that just ended has not gone yet
                raise RetryableError(f"source: replication slot {slot} is still in use: {message}")
            raise SourceError(f"source: START_REPLICATION failed: {message}")

    # -- the consumer's side ---------------------------------------------------------
    def take(self, timeout: float) -> list | None:
        """The next messages in order (payload bytes and KeepAlives), or None if none came within
        ``timeout``; the reader's error, once everything before it has been taken."""
        try:
            items = self.items.get(timeout=timeout) if timeout > 0 else self.items.get_nowait()
        except queue.Empty:
            if self.error is not None and not self._thread.is_alive():
                raise self.error
            return None
        if self.items.empty():
            self.ready.clear()
            if not self.items.empty():
                self.ready.set()
        if isinstance(items, BaseException):
            raise items
        return items

    def ask_position(self) -> None:
        """Ask the server for a keepalive: it says how far it has decoded."""
        self._want_reply.set()

    def acknowledge(self, lsn: int) -> None:
        """The target has committed everything before ``lsn``: reported to the server as flushed."""
        if lsn > self._flushed:
            self._flushed = lsn

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop reading; the last acknowledged position is reported before the connection closes."""
        self._stopping.set()
        self._thread.join(timeout=30)
        self.connection.close()

    # -- the reader thread -----------------------------------------------------------
    def _read(self) -> None:
        pgconn = self.connection.pgconn
        last_status, batch = 0.0, []
        try:
            while not self._stopping.is_set():
                nbytes, data = pgconn.get_copy_data(1)
                if nbytes > 0:
                    kind = data[0]
                    if kind == 0x77:  # 'w': XLogData
                        batch.append(bytes(data[_HEADER.size + 1:]))
                    elif kind == 0x6B:  # 'k': keepalive
                        end, _, reply = _KEEPALIVE.unpack_from(data, 1)
                        batch.append(KeepAlive(end))
                        if reply:
                            last_status = 0.0
                    if len(batch) < HANDOVER:
                        continue
                elif nbytes < 0:
                    raise self._ended(pgconn)
                if batch:
                    self._hand_over(batch)
                    batch = []
                now = time.monotonic()
                if (now - last_status >= STATUS_INTERVAL or self._flushed != self._sent_flushed
                        or self._want_reply.is_set()):
                    self._status(pgconn, reply=self._want_reply.is_set())
                    self._want_reply.clear()
                    last_status = now
                if nbytes == 0:
                    select.select([pgconn.socket], [], [], 0.05)
                    pgconn.consume_input()
            self._status(pgconn, reply=False)  # the last acknowledged position, before closing
        except BaseException as exc:  # handed to the consumer after what came before it
            self.error = exc if isinstance(exc, (RetryableError, SourceError)) else RetryableError(
                f"source: replication stream: {exc}")
            self._put_last(batch)

    def _ended(self, pgconn: Any) -> BaseException:
        """Why the server ended the stream (it was stopped or restarted, the slot dropped)."""
        result = pgconn.get_result()
        message = (result.error_message.decode(errors="replace").strip() if result is not None else "") or \
            pgconn.error_message.decode(errors="replace").strip() or "the server ended the stream"
        return RetryableError(f"source: replication stream ended: {message.splitlines()[0]}")

    def _hand_over(self, batch: list) -> None:
        """Put ``batch`` in the queue; while it is full (the target is slower), keep the connection
        alive with status messages so the server does not drop it."""
        while not self._stopping.is_set():
            try:
                self.items.put(batch, timeout=1.0)
                self.ready.set()
                return
            except queue.Full:
                self._status(self.connection.pgconn, reply=False)

    def _put_last(self, batch: list) -> None:
        if batch:
            self._hand_over(batch)
        self.ready.set()

    def _status(self, pgconn: Any, reply: bool) -> None:
        flushed = self._flushed
        clock = int((time.time() - PG_EPOCH_OFFSET) * 1_000_000)
        pgconn.put_copy_data(_STATUS.pack(b"r", flushed, flushed, flushed, clock, 1 if reply else 0))
        pgconn.flush()
        self._sent_flushed = flushed
