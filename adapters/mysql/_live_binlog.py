"""One binlog connection kept open across reads: a process decodes transactions ahead of them.

A replica connection (`BinLogStreamReader`, blocking) is opened at the position of the first
read and stays open: a reader process (see LiveBinlog) decodes the pair's transactions into parts
and sends them to a queue here, and each read takes whole transactions off the queue. A read at another position than where the
last one ended (a retry after a failed target commit, a restart) gets a new reader started there.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from typing import Any, Callable, Iterator

import pymysql
from pymysqlreplication.event import HeartbeatLogEvent, QueryEvent, RotateEvent

from cdc.changes import Batch
from cdc.errors import RetryableError, SourceError

logger = logging.getLogger(__name__)
# The library says it reconnects after a lost connection; ours refuses to (see LiveBinlog._connect),
# and a reader that is stopped loses its connection on purpose.
logging.getLogger("pymysqlreplication").addFilter(
    lambda record: "Re-request the connection" not in record.getMessage())
#: Seconds a read keeps taking transactions that are ready before it ends at the next boundary.
READ_SECONDS = 0.2
#: Seconds between two reads that only move the position past other tables' transactions: each
#: is a checkpoint write of its own (a read with changes moves it in the same commit).
MOVE_SECONDS = 1.0
#: Seconds of silence after which the server sends a heartbeat: it tells that the reader has
#: everything up to the binlog's end (events the reader skips, e.g. a new file's header, included).
HEARTBEAT_SECONDS = 0.5
#: Longest wait of a read that finds nothing for the reader to reach the binlog's end.
CATCH_UP_SECONDS = 10.0


def binlog_order(position: dict) -> tuple[int, int]:
    """A binlog position as something to compare (binlog.000042:120 -> (42, 120))."""
    suffix = str(position["file"]).rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1, int(position["pos"])


class _Stopped(Exception):
    """The reader was told to stop."""


class _Queue:
    """Parts decoded ahead of the reads, bounded by the changes they hold; a part with no changes
    (a move past other tables' transactions) replaces the one before it."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0
        self.parts: collections.deque = collections.deque()
        self.ready = threading.Condition()
        self.error: BaseException | None = None
        self.reached: dict | None = None  # everything up to here is queued (or was not ours)
        self.closed = False

    def put(self, part: Batch) -> None:
        with self.ready:
            while self.held >= self.limit and not self.closed:
                self.ready.wait()
            if self.closed:
                raise _Stopped
            if not part.changes and self.parts and _is_move(self.parts[-1]):
                self.parts[-1] = part
            else:
                self.parts.append(part)
                self.held += len(part.changes)
            self.ready.notify_all()

    def reach(self, position: dict) -> None:
        with self.ready:
            self.reached = position
            self.ready.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.ready:
            self.error = error
            self.ready.notify_all()

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()

    def peek(self) -> Any:
        """The next part, the error once the parts before it are taken, or None."""
        if self.parts:
            return self.parts[0]
        return self.error

    def take(self) -> Batch:
        with self.ready:
            part = self.parts.popleft()
            self.held -= len(part.changes)
            self.ready.notify_all()
            return part

    def wait(self, until: Callable[[], bool], seconds: float) -> bool:
        """Wait up to ``seconds`` for ``until()`` (checked whenever the queue changes)."""
        with self.ready:
            return self.ready.wait_for(until, timeout=max(seconds, 0))


def _is_move(part: Any) -> bool:
    return isinstance(part, Batch) and not part.changes


class LiveBinlog:
    """A reader process on one replica connection from ``start``, and the reads that take its parts.

    ``open_reader(start, connect)``: a blocking BinLogStreamReader from ``start`` that connects with
    ``connect``; ``decoder()``: a fresh Transactions (parts of at most ``size`` changes);
    ``forked()``: called first in the reader process (the source's own connections are the
    parent's: it takes new ones). The binlog is read and decoded in a process of its own, forked
    from this one: decoding row events in Python takes most of a core under an OLTP load, and in a
    thread it would hold the interpreter lock the apply needs. The process sends each part as it is
    decoded through a pipe; a thread here puts them in the queue (full: the pipe fills and the
    process waits). It dies with this process (PR_SET_PDEATHSIG) and is killed by ``close``.
    """

    def __init__(self, open_reader: Callable[[dict, Callable], Any], decoder: Callable[[], Any], start: dict,
                 size: int, forked: Callable[[], None] = lambda: None):
        self.size = size
        self.handed = {"file": start["file"], "pos": int(start["pos"])}  # where the last read ended
        self.moved_at = float("-inf")  # when a read last moved the position only
        self.queue = _Queue(limit=2 * size)
        self._stop = threading.Event()
        self._open, self._decoder, self._start, self._forked = open_reader, decoder, start, forked
        self._process: Any = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cdc-binlog", daemon=True)
        self.thread.start()
        self._started.wait()

    # -- the receiving thread --------------------------------------------------------------
    def _run(self) -> None:
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        try:
            self._process = context.Process(target=_read_binlog, name="cdc-binlog",
                                            args=(send, self._open, self._decoder, self._start, self._forked),
                                            daemon=True)
            self._process.start()
        except BaseException as exc:
            self.queue.fail(RetryableError(f"source: could not start the binlog reader process: {exc}"))
            return
        finally:
            send.close()
            self._started.set()
        try:
            while True:
                try:
                    message = receive.recv()
                except (EOFError, OSError):
                    if not self._stop.is_set():
                        self._process.join(1)
                        self.queue.fail(RetryableError(
                            f"source: the binlog reader process ended (exit code {self._process.exitcode}); "
                            "reading again from the checkpoint"))
                    return
                kind = message[0]
                if kind == "part":
                    self.queue.put(message[1])
                    self.queue.reach(message[2])
                elif kind == "reach":
                    self.queue.reach(message[1])
                else:
                    self.queue.fail(message[1])
                    return
        except _Stopped:
            return
        finally:
            receive.close()

    def close(self) -> None:
        """Stop the process and the thread that receives from it."""
        self._stop.set()
        self.queue.close()
        process = self._process
        if process is not None and process.is_alive():
            process.kill()
            process.join(5)
        self.thread.join(timeout=5)
        if self.thread.is_alive():
            logger.warning("the binlog reader thread did not stop")

    # -- the reads -----------------------------------------------------------------------
    def continues(self, after: dict, size: int) -> bool:
        """Whether a read from ``after`` (in parts of ``size``) takes up where the last one ended."""
        if size != self.size or (not self.thread.is_alive() and self.queue.peek() is None):
            return False
        return (after.get("file"), int(after.get("pos", -1))) == (self.handed["file"], int(self.handed["pos"]))

    def ready(self) -> bool:
        """Whether a read would return something now (a move only once MOVE_SECONDS have passed)."""
        return self._goes_on(self.queue.peek(), 0, 0.0)

    def read(self, end: Callable[[], dict]) -> Iterator[Batch]:
        """Whole transactions that are ready, at most ``size`` changes (one larger transaction in
        parts), for up to READ_SECONDS, as one part (fewer, larger target statements); a read that
        finds nothing waits until some are ready or the reader has reached ``end()``, the binlog's
        end as the server says now."""
        if not self._wait_for_any(end):
            return
        started, total, inside, whole, told = time.monotonic(), 0, False, [], self.handed
        while True:
            head = self.queue.peek()
            if not inside and not self._goes_on(head, total, started):
                break
            if head is None:  # inside a transaction: its next part is on the way
                if not self.thread.is_alive():
                    raise RetryableError("source: the binlog reader stopped inside a transaction")
                self.queue.wait(lambda: self.queue.peek() is not None, 0.2)
                continue
            if isinstance(head, BaseException):
                self.queue.error = None  # raised once; the next read starts a new reader
                raise head
            part = self.queue.take()
            total += len(part.changes)
            split, inside = inside, not part.complete
            if part.complete:
                self.handed = part.position
            if inside or split or not total:  # a large transaction's parts; a move past other tables'
                if not total:
                    self.moved_at = time.monotonic()
                told = self.handed
                yield part
            else:
                whole += part.changes
        if whole or self.handed != told:
            yield Batch(whole, self.handed)

    def _goes_on(self, head: Any, total: int, started: float) -> bool:
        """Whether a read that has taken ``total`` changes takes ``head`` too (at a transaction boundary)."""
        if head is None:
            return False
        if isinstance(head, BaseException):
            return not total  # else raised by the next read, after this one's transactions are applied
        if not total:
            return not _is_move(head) or len(self.queue.parts) > 1 or \
                time.monotonic() >= self.moved_at + MOVE_SECONDS
        return total + len(head.changes) <= self.size and time.monotonic() - started < READ_SECONDS

    def _wait_for_any(self, end: Callable[[], dict]) -> bool:
        """Wait until a read has something to return (True), or the reader has reached the binlog's
        end (False)."""
        if self.queue.wait(self.ready, READ_SECONDS):
            return True
        target = binlog_order(end())
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while time.monotonic() < deadline:
            reached = self.queue.reached
            if reached is not None and binlog_order(reached) >= target:
                return self.ready()
            if self.queue.wait(self.ready, 0.1):
                return True
        logger.debug("the binlog reader did not reach %s within %ss", target, CATCH_UP_SECONDS)
        return self.ready()


# -- the reader process ----------------------------------------------------------------------
_INHERITED: list = []  # what the reader process took over from its parent: kept, never finalized here


def _read_binlog(send: Any, open_reader: Callable, decoder_factory: Callable, start: dict,
                 forked: Callable[[], None]) -> None:
    """The reader process: decode the binlog from ``start`` and send ("part", part, reached),
    ("reach", reached) and at the end ("error", exception)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops this process
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    connections: list = []

    def connect(**settings: Any) -> pymysql.Connection:
        """One connection for the stream, one for its queries; a lost connection is not made again
        behind our back (it would resume inside a transaction): the read fails instead."""
        if len(connections) >= 2:
            raise RetryableError("source: the binlog connection was lost; reading again from the checkpoint")
        connection = pymysql.connect(**settings)
        connections.append(connection)
        return connection

    try:
        forked()
        reader = open_reader(start, connect)
        decoder = decoder_factory()
        for event in reader:
            reached = {"file": reader.log_file, "pos": reader.log_pos}
            sent = False
            if not isinstance(event, HeartbeatLogEvent):
                for part in decoder.feed(event, reader):
                    send.send(("part", part, reached))
                    sent = True
                if decoder.moved is not None:
                    send.send(("part", Batch([], decoder.moved), reached))
                    decoder.moved, sent = None, True
            if not sent and isinstance(event, (HeartbeatLogEvent, RotateEvent, QueryEvent)):
                send.send(("reach", reached))  # nothing of ours up to here (events skipped included)
    except (BrokenPipeError, EOFError):
        return  # the parent is gone or closed the pipe
    except pymysql.err.OperationalError as exc:
        _send_error(send, RetryableError(f"source: binlog stream: {exc.args[-1]}"))
    except BaseException as exc:  # raised in the read that reaches it
        _send_error(send, exc)


def _send_error(send: Any, error: BaseException) -> None:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # an exception that does not survive the pipe: its type and text do
        error = SourceError(f"source: binlog reader: {type(error).__name__}: {error}")
    with contextlib.suppress(OSError):
        send.send(("error", error))


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the thread that forked it ends (the parent SIGKILLed, say)."""
    parent = os.getppid()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request
        os._exit(0)
