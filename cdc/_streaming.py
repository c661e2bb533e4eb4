"""The threads and reads a running pair streams with: stop signal, claim heartbeat, joined and prefetched parts."""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import sqlalchemy as sa

from .changes import Batch
from .errors import CdcError, RetryableError, SourceError, first_line

if TYPE_CHECKING:
    from .pipeline import PairRunner

logger = logging.getLogger("cdc.pipeline")  # the name `cdc run` prints with every line

#: Allocations between two young-generation garbage collections while pairs run (CPython: 700).
GC_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect cycles less often while streaming.

    A batch keeps hundreds of thousands of change objects alive (none in reference cycles);
    CPython's default threshold (a collection every 700 allocations, each walking the young
    objects and, every so often, all of them) cost a quarter of the streaming apply's time in
    bench/postgres_bench.py. Memory stays bounded: the change model holds no cycles.
    """
    if gc.get_threshold()[0] < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, 20, 100)


def _source_fault(exc: sa.exc.DBAPIError) -> CdcError:
    """A database error of the source read: retried when the server or connection failed
    (OperationalError), else the pair stops."""
    text = f"source: {first_line(exc.orig)}"
    retry = exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError)
    return RetryableError(text) if retry else SourceError(text)


class _Stop:
    """A runner's stop signal: the run's shared one (SIGTERM stops every pair), or its own (this
    pair alone must stop: its claim was lost)."""

    def __init__(self, shared: threading.Event):
        self.shared, self.own = shared, threading.Event()

    def is_set(self) -> bool:
        return self.shared.is_set() or self.own.is_set()

    def set(self) -> None:
        self.own.set()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                break
            self.own.wait(left)
        return self.is_set()


class _Heartbeat:
    """Refreshes a runner's claim every third of its timeout in a thread of its own, so an idle pair
    keeps it; says so loudly if another process took the pair (whose next commit then fails)."""

    def __init__(self, runner: PairRunner):
        self.runner = runner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"cdc-claim-{runner.pair.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        pair, timeout = self.runner.pair.name, self.runner.pair.claim_timeout
        while not self._stop.wait(timeout / 3):
            try:
                if not self.runner.target.heartbeat(pair, timeout):
                    self.runner.lost = (f"pair {pair}: another process took the pair (its heartbeat was older than "
                                        f"claim_timeout {timeout:g}s, or the pair was claimed over it); this one "
                                        "stopped and committed nothing more. See `cdc status` for who runs it now")
                    logger.error("%s", self.runner.lost)
                    self.runner.stop.set()
                    return
            except (sa.exc.SQLAlchemyError, CdcError) as exc:  # busy or away: the next beat tries again
                logger.debug("pair %s: claim heartbeat failed: %s", pair, _first_line(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _joined(parts: Iterable[Batch], size: int) -> Iterator[Batch]:
    """Consecutive whole transactions joined into parts of about ``size`` changes: an OLTP load's
    many small transactions are then mapped and written a few statements per part, not per
    transaction. A part of a larger transaction (not complete) is passed on as it is."""
    pending: list = []
    position, held = None, False
    for part in parts:
        if not part.complete or (not held and len(part.changes) >= size):
            if held:
                yield Batch(pending, position)
                pending, held = [], False
            yield part
            continue
        pending.extend(part.changes)
        position, held = part.position, True
        if len(pending) >= size:
            yield Batch(pending, position)
            pending, held = [], False
    if held:
        yield Batch(pending, position)


def _prefetched(make: Callable[[], Any], depth: int = 2) -> Any:
    """Iterate ``make()`` in a worker thread, at most ``depth`` items ahead; errors re-raise here.

    If the consumer stops early, the worker is told to stop and its generator is closed in its
    own thread (which releases the source connection it holds).
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        source = make()
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((done, None))
        except BaseException as exc:  # handed to the consumer
            items.put((done, exc))
        finally:
            source.close()

    worker = threading.Thread(target=work, name="cdc-read", daemon=True)
    worker.start()
    try:
        while True:
            item, error = items.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)


class _Read:
    """What one streamed read brought: how many changes, and the position its last complete part ends at."""

    def __init__(self, start: Any):
        self.start = start
        self.reset()

    def reset(self) -> None:
        self.changes, self.position, self.complete = 0, self.start, False

    def add(self, part: Any) -> None:
        self.changes += len(part.changes)
        self.complete = part.complete
        if part.complete:
            self.position = part.position


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
