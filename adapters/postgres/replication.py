"""PostgreSQL's streaming replication protocol over libpq, for logical slots (pgoutput).

psycopg 3 has no replication API, but its libpq wrapper (``psycopg.pq``) speaks the protocol's
few pieces: a ``replication=database`` connection, simple-query replication commands and
COPY BOTH. Compared with ``pg_logical_slot_peek_binary_changes`` the server streams changes
while it decodes them (no result set built first), and ``CREATE_REPLICATION_SLOT ...
EXPORT_SNAPSHOT`` gives the initial snapshot the slot's exact start point.
"""

from __future__ import annotations

import datetime as dt
import select
import struct
import time
from typing import Iterator

import sqlalchemy as sa
from psycopg import pq
from psycopg.conninfo import make_conninfo

from cdc.config import mask_url
from cdc.errors import RetryableError, SourceError

from . import sql

_HEADER = struct.Struct(">qqq")  # XLogData: start LSN, server WAL end, send time
_KEEPALIVE = struct.Struct(">qqB")  # server WAL end, send time, reply requested
_STATUS = struct.Struct(">cqqqqB")  # 'r', written, flushed, applied LSN, client time, reply requested
PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)

#: Handed out by `messages` when the server has sent all WAL up to the point asked for.
CAUGHT_UP = object()


class ReplicationConnection:
    """One replication connection; the text output of every value is fixed by its session settings."""

    def __init__(self, url: sa.URL):
        self.url = url
        conninfo = make_conninfo(url.set(drivername="postgresql").render_as_string(hide_password=False),
                                 replication="database", options=sql.REPLICATION_OPTIONS)
        self.pgconn = pq.PGconn.connect(conninfo.encode())
        if self.pgconn.status != pq.ConnStatus.OK:
            message = self._error()
            self.pgconn.finish()
            raise RetryableError(f"source {mask_url(url)}: replication connection failed: {message}")
        self.confirmed = 0

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
        ((_, point, snapshot, _),) = self.command(f"CREATE_REPLICATION_SLOT {sql.quote(slot)} LOGICAL pgoutput "
                                                  "EXPORT_SNAPSHOT")
        return sql.lsn_int(point), snapshot

    def start(self, slot: str, after: int, publication: str) -> None:
        """Begin streaming the slot from ``after`` (the server starts at the slot's confirmed point if later)."""
        self.confirmed = after
        self.pgconn.send_query(f"START_REPLICATION SLOT {sql.quote(slot)} LOGICAL {sql.lsn_text(after)} "
                               f"(proto_version '1', publication_names '{publication}')".encode())
        result = self.pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            text = result.error_message.decode(errors="replace").strip() if result is not None else self._error()
            raise SourceError(f"source: START_REPLICATION failed: {text}")
        self.pgconn.nonblocking = 1

    def messages(self, until: int, idle: float) -> Iterator[bytes | object]:
        """pgoutput messages, and CAUGHT_UP each time the server says it has sent all WAL up to
        ``until``. No status is sent unless the server asks (a status confirming all it sent
        would stop the keepalive that says so). Silence for ``idle`` seconds is a lost server."""
        heard = time.monotonic()
        while True:
            size, data = self.pgconn.get_copy_data(1)
            if size == 0:
                if time.monotonic() - heard > idle:
                    raise RetryableError(f"source: no word from the replication stream for {idle:.0f}s")
                select.select([self.pgconn.socket], [], [], 0.2)
                self.pgconn.consume_input()
                continue
            if size < 0:
                raise RetryableError(f"source: replication stream ended: {self._error() or 'by the server'}")
            heard = time.monotonic()
            kind = data[0]
            if kind == 0x77:  # 'w': XLogData
                yield bytes(data[1 + _HEADER.size:])
            elif kind == 0x6B:  # 'k': keepalive
                wal_end, _, reply = _KEEPALIVE.unpack_from(data, 1)
                if reply:
                    self.send_status()
                if wal_end >= until:
                    yield CAUGHT_UP

    def confirm(self, lsn: int) -> None:
        """Tell the server everything up to ``lsn`` is safely applied (the slot may release it)."""
        self.confirmed = max(self.confirmed, lsn)
        self.send_status()

    def send_status(self) -> None:
        now = int((dt.datetime.now(dt.timezone.utc) - PG_EPOCH).total_seconds() * 1_000_000)
        lsn = self.confirmed
        self.pgconn.put_copy_data(_STATUS.pack(b"r", lsn, lsn, lsn, now, 0))
        self.pgconn.flush()

    def close(self) -> None:
        self.pgconn.finish()
