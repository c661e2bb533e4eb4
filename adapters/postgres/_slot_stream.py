"""The running stream of a replication slot and the reads that take whole transactions from it."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import sqlalchemy as sa

from cdc.changes import Batch
from cdc.errors import RetryableError

from . import sql
from ._decoder import Decoder
from ._replication import KeepAlive, WalStream

#: A read takes what the stream has ready for at most this long: many small source transactions
#: go to the target in one transaction, and a light load still reaches it within a moment.
GROUP_SECONDS = 0.2


class Live:
    """A running stream of the slot and what the reads have taken from it."""

    def __init__(self, stream: WalStream, decoder: Decoder, start: int, engine: sa.Engine):
        self.stream, self.decoder, self.engine = stream, decoder, engine
        self.handed = start  # where the last read's last whole transaction (or heartbeat) ended
        self.decoded = 0  # how far the server said it had decoded, as far as the reads have taken
        self.unread = False  # a read stopped inside what it took: the stream must start again
        self.leftover: list = []  # taken from the stream after the last read's last transaction
        self._heartbeat = 0.0

    def take(self, timeout: float) -> list | None:
        if self.leftover:
            items, self.leftover = self.leftover, []
            return items
        return self.stream.take(timeout)

    def heartbeat_due(self) -> bool:
        """At most one heartbeat a second: each is a checkpoint write in the target."""
        now = time.monotonic()
        if now - self._heartbeat < 1.0:
            return False
        self._heartbeat = now
        return True

    def read(self, after: int, max_changes: int) -> Iterator[Batch]:
        """Whole transactions after ``after``, in parts of at most ``max_changes`` changes (see
        LogicalSource.stream); a heartbeat when nothing of ours is pending up to where the server
        has decoded."""
        decoder, done, yielded = self.decoder, False, 0
        decoder.begin(after, max_changes)
        deadline = time.monotonic() + GROUP_SECONDS
        goal, drain = None, Drain()
        try:
            with self._lazy_connection() as conn:
                decoder.conn = conn
                while True:
                    boundary = not decoder.inside
                    if boundary and (yielded >= max_changes or (yielded and time.monotonic() >= deadline)):
                        break
                    items = self.take(0 if boundary else 1.0)
                    if items is None:
                        if not boundary:
                            continue  # the rest of the transaction is on its way
                        if yielded or decoder.passed:
                            break  # what was ready is read: the next read takes what comes next
                        if goal is None:
                            goal = int(conn.get().exec_driver_sql(sql.FLUSHED_LSN).scalar())
                        if drain.done(goal, after, self.decoded):
                            break
                        if drain.ask():
                            self.stream.ask_position()
                        items = self.take(0.05)
                        if items is None:
                            continue
                    for index, item in enumerate(items):
                        if isinstance(item, KeepAlive):
                            self.decoded = max(self.decoded, int(item))
                            continue
                        part = decoder.feed(item)
                        if part is not None:
                            yielded += len(part.changes)
                            if part.complete:
                                self.handed = part.position
                            yield part
                            if part.complete and yielded >= max_changes:
                                self.leftover = items[index + 1:]  # the next read starts with them
                                break
                    self.unread = False
            done = True
        finally:
            decoder.conn = None
            if not done:  # stopped inside what the stream gave: the next read starts the stream again
                self.unread = True
        if self.decoded > self.handed and not decoder.inside and self.heartbeat_due():
            # Heartbeat: nothing of ours is pending up to where the server has decoded. The checkpoint
            # moves there (other work's WAL), and the slot is then confirmed to it as after any read:
            # the slot is never confirmed past the checkpoint.
            self.handed = self.decoded
            yield Batch([], self.decoded)

    @contextmanager
    def _lazy_connection(self) -> Iterator[LazyConnection]:
        lazy = LazyConnection(self.engine)
        try:
            yield lazy
        finally:
            lazy.close()


class Drain:
    """When a read that found nothing may say the slot is drained: the server has decoded the WAL
    flushed when the read began (``goal``), or says the same position for a while when asked
    (a flush point inside a page header, or padding, is never a record's end); RetryableError after 30 s."""

    def __init__(self):
        self.started = self.asked = self.since = time.monotonic()
        self.seen = -1

    def done(self, goal: int, after: int, decoded: int) -> bool:
        now = time.monotonic()
        if decoded != self.seen:
            self.seen, self.since = decoded, now
        if goal <= after or decoded >= goal:
            return True
        if now - self.started > 30:  # never "drained" on a guess: `cdc run --once` would end with changes left
            raise RetryableError(f"source: the replication stream did not reach the source's flush point "
                                 f"{sql.lsn_text(goal)} within 30 s (decoded up to {sql.lsn_text(decoded)})")
        # The server idles just short of the flush point only by a page header or record padding.
        return decoded > 0 and goal - decoded < 8192 and now - self.since > 0.3

    def ask(self) -> bool:
        now = time.monotonic()
        if now - self.asked < 0.05:
            return False
        self.asked = now
        return True


class LazyConnection:
    """A source connection opened the first time a read needs one (TOAST values, the flush point)."""

    def __init__(self, engine: sa.Engine):
        self.engine, self.conn = engine, None

    def get(self) -> sa.Connection:
        if self.conn is None:
            self.conn = self.engine.connect()
        return self.conn

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.get().execute(*args, **kwargs)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
