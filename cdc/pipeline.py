"""Run one pair: initial snapshot, then capture -> map -> apply(+checkpoint+audit) -> acknowledge."""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import sqlalchemy as sa

from . import apply, state, values
from ._copying import _Copying
from ._observer import Observer
from ._opening import (OLD_ROWS, capture_gap, missing_targets, open_pair, open_source, open_target,
                       resolve_mappings, verify_checkpoint)
from ._planning import _Planning
from ._streaming import tune_gc, _Heartbeat, _Read, _Stop, _first_line, _joined, _prefetched, _source_fault
from .changes import ApplyResult, dumps
from .config import Pair
from .errors import CdcError, RetryableError, TargetError, first_line
from .state import ClaimHeldError, ClaimLostError
from .mapping import TableMapping, map_changes

__all__ = ["OLD_ROWS", "PairRunner", "RunResult", "capture_gap", "record_failure", "tune_gc", "missing_targets", "open_pair", "open_source",
           "open_target", "resolve_mappings", "verify_checkpoint"]

logger = logging.getLogger(__name__)
MAX_BACKOFF = 30.0


@dataclass
class RunResult:
    """What one run of a pair did."""

    pair: str
    snapshot_rows: int = 0
    applied: int = 0
    parked: int = 0
    batches: int = 0
    skipped: int = 0  # updates that changed no mapped column: nothing written
    conflicts: int = 0  # target rows changed since this pair wrote them, whatever the policy decided
    tables_snapshotted: list[str] = field(default_factory=list)


class PairRunner(_Planning, _Copying):
    """Runs one pair until drained (``once``) or until ``stop`` is set."""

    def __init__(self, pair: Pair, *, progress: bool = False, stop: threading.Event | None = None,
                 max_attempts: int | None = None, observer: Observer | None = None):
        self.pair = pair
        self.observer = observer or Observer()
        self.max_attempts = max_attempts
        self.progress = progress
        self.stop = _Stop(stop or threading.Event())
        self.lost: str | None = None  # why this process lost the pair's claim (set by the heartbeat)
        self._claimed = False
        self._retrying_since: str | None = None
        self.source, self.target, self.mappings = open_pair(pair)
        self.target.prepare_tables(m.target for m in self.mappings.values())
        self._bulk: dict[str, bool] = {}
        self._streamed: list[str] = []  # source tables copied whole, whose changes the pair streams
        self._progress: dict[str, dict] = {}  # snapshot progress of the tables being copied
        self._old_rows: set[str] = set()  # streamed tables whose copy found rows in the target already
        self._copy_types: dict[str, dict] = {}  # target column types a source makes COPY text for
        for table, mapping in self.mappings.items():
            if self._bulk_ok(table, mapping) and table not in self._copy_types:  # same kind, same types
                self.target.trust(mapping.target, mapping.target_columns)
            elif self.source.capabilities.enforces_types and self.target.exists(mapping.target):
                self.target.trust(mapping.target, self._always_fit(table, mapping))

    def _always_fit(self, table: str, mapping: TableMapping) -> list[str]:
        """Target columns copied untransformed from a source column whose every value fits them."""
        source = {c.name: c for c in self.source.describe(table).columns}
        target = {c.name: c for c in self.target.table(mapping.target).columns}
        # A source whose date columns may hold zero dates ('0000-00-00', MySQL) has them checked.
        dates = (sa.Date, sa.DateTime) if self.source.capabilities.zero_dates else ()
        return [name for name, origin, transforms in mapping.column_specs()
                if origin in source and name in target and not transforms
                and not isinstance(source[origin].type, dates)
                and values.always_fits(source[origin].type, target[name].type)]

    def close(self) -> None:
        self.source.close()
        self.target.close()

    def run(self, *, once: bool, resnapshot: bool = False, wait: bool = False) -> RunResult:
        """Claim the pair, then snapshot if needed and stream; the claim is released as stopped or
        failed (with the error, for `cdc status`). ``resnapshot``: forget the checkpoint first.
        ``wait``: wait for a process that holds the pair to stop instead of refusing to start."""
        self._claim(wait)
        self._claimed = True
        heartbeat = _Heartbeat(self)
        try:
            missing = missing_targets(self.pair.name, self.target, self.mappings)
            if missing:  # checked once the state tables are known to exist (the claim reads them)
                raise TargetError(missing)
            if resnapshot:
                self._still_open()
            if resnapshot and self.target.forget_checkpoint(self.pair.name):
                logger.warning("pair %s: checkpoint dropped; copying every table again", self.pair.name)
            result = self._run(once)
            if self.lost:  # the heartbeat found another process holding the pair: stop, non-zero
                raise ClaimLostError(self.lost)
        except BaseException as exc:
            heartbeat.stop()
            self._release(first_line(exc) if isinstance(exc, Exception) else f"stopped by {type(exc).__name__}")
            raise
        heartbeat.stop()
        self._release(None)
        return result

    def _still_open(self) -> None:
        """Before a re-copy: refuse while conflicts are open (see _refuse_copy_over_conflicts); say which
        dead letters stay open (the copy writes the source's current rows over their keys, but a key
        deleted at the source meanwhile keeps its target row, and its letter, until a repair, so none
        is settled here)."""
        self._refuse_copy_over_conflicts(sorted(self.mappings), "`cdc run --resnapshot`")
        with self.target.reading() as conn:
            letters, _ = state.open_counts(conn, self.pair.name)
        if letters:
            logger.warning("pair %s: %d dead letter(s) stay open through the copy, and later changes of their keys "
                           "wait behind them: once it is done, `cdc reconcile CONFIG --repair` settles the letters "
                           "of keys it puts right, and `cdc dead-letters retry` (the source's current row) the rest",
                           self.pair.name, letters)

    def _claim(self, wait: bool) -> None:
        while True:
            try:
                self._retrying(lambda: self.target.take_claim(self.pair.name, self.pair.claim_timeout))
                return
            except ClaimHeldError as exc:
                if not wait or self.stop.is_set():
                    raise
                logger.warning("%s; waiting", exc)
                self.stop.wait(min(self.pair.claim_timeout / 3, 5.0))

    def _release(self, error: str | None) -> None:
        try:
            self.target.release_claim(self.pair.name, error)
        except (sa.exc.SQLAlchemyError, CdcError) as exc:  # the target is gone: the claim expires by itself
            logger.warning("pair %s: could not record how the run ended: %s", self.pair.name, _first_line(exc))

    def _run(self, once: bool) -> RunResult:
        result = RunResult(self.pair.name)
        checkpoint = self._retrying(lambda: self.target.checkpoint(self.pair.name))
        try:
            if checkpoint is None:
                position = self._retrying(self.source.begin_snapshot)
                generation = self._retrying(self.source.generation)
            else:
                generation = self._retrying(lambda: verify_checkpoint(self.pair.name, self.source, checkpoint))
                position = checkpoint.position
                # A crash between commit and acknowledge left this unreleased; release it now.
                self._retrying(lambda: self.source.acknowledge(position))
            if checkpoint is not None and checkpoint.generation is None and generation is not None:
                # Written before generations existed: it adopts the installation it runs on.
                self._retrying(lambda: self.target.set_generation(self.pair.name, generation))
            position = self._plan_tables(checkpoint, position)
            if not self._streamed:
                self._snapshot(position, result)
            if checkpoint is None:  # the first chunk created the checkpoint
                self._retrying(lambda: self.target.set_generation(self.pair.name, generation))
        finally:
            self.source.end_snapshot()
        self._stream(position, once, result)
        return result

    # -- stream --------------------------------------------------------------------
    def _stream(self, position: Any, once: bool, result: RunResult) -> None:
        """Read, apply and acknowledge until drained (``once``) or stopped; a table added to the pair
        is copied one chunk between two reads until it streams too."""
        moved_before, caught_up = False, False
        while not self.stop.is_set():
            # A table added to the streaming pair is copied only once the stream has caught up with
            # the source: its changelog or slot may still hold changes logged before this run (while
            # it was out of the pair, before capture was taken down and set up again), and those,
            # applied after a chunk read now, would write older rows over it for good.
            copying = self._snapshot_step(position, result) if caught_up else self._copy_pending()
            read = _Read(position)

            def mapped() -> Any:
                try:
                    for part in _joined(self.source.stream(position, self.pair.batch_size), self.pair.batch_size):
                        yield part, map_changes(part.changes, self.mappings)
                except sa.exc.DBAPIError as exc:  # raised inside the target's transaction: say whose it is
                    raise _source_fault(exc) from None

            def parts() -> Any:
                read.reset()
                # The next part is read, decoded and mapped in a second thread while this one is
                # applied: the apply thread is the one that sets the pace.
                for part, changes in _prefetched(mapped):
                    read.add(part)
                    self.observer.alive()
                    yield changes

            applied = self._apply_parts(parts, read)
            caught_up = caught_up or not read.changes or (read.complete and read.changes < self.pair.batch_size)
            moved = False
            if not read.changes and read.complete and dumps(read.position) != dumps(position):
                # Only transactions of other tables (a binlog), or a slot's heartbeat: keep the
                # checkpoint up with them, then let the source release them (never before: a source
                # released past the checkpoint would mean changes lost, see verify_checkpoint).
                to, (snapshot, tables) = read.position, self._to_commit()
                self._retrying(lambda: apply.advance(self.target, self.pair.name, to, snapshot=snapshot, tables=tables))
                self._retrying(lambda: self.source.acknowledge(to))
                position, moved = to, True
            if read.changes:
                self.observer.committed(applied)
            elif read.complete or not copying:
                self.observer.caught_up()
            if not read.changes:
                # A read that only moved the position ended at a part that had arrived; what comes
                # after it may be on its way: --once ends after a read that found nothing, or a
                # second move in a row (other tables' transactions that never stop).
                if once and not copying and (not moved or (moved_before and self.source.caught_up())):
                    return
                moved_before = moved
                if not copying:  # --once: only a moment for what may be on its way, not a whole poll interval
                    self.source.idle(min(self.pair.poll_interval, 1.0) if once else self.pair.poll_interval, self.stop)
                continue
            position, moved_before = read.position, False
            self._retrying(lambda: self.source.acknowledge(position))
            result.applied += applied.applied
            result.parked += applied.parked
            result.skipped += applied.skipped
            result.conflicts += applied.conflicts
            result.batches += 1
            logger.debug("pair %s: applied %d changes up to %s", self.pair.name, applied.applied, dumps(position),
                         extra={"pair": self.pair.name, "position": dumps(position)})

    def _apply_parts(self, parts: Callable, read: "_Read") -> Any:
        """Stream a read into one target transaction, with retries that never apply it twice; the
        checkpoint carries the progress of tables still being copied."""
        attempts = []
        snapshot, tables = self._to_commit()

        def attempt() -> Any:
            if attempts and read.complete and self._committed(read.position, snapshot, tables):
                return ApplyResult(0, 0)  # the connection broke after COMMIT: never apply twice
            attempts.append(1)
            return apply.apply_parts(self.target, self.pair.name, parts, position=lambda: read.position,
                                     snapshot=snapshot, on_error=self.pair.on_error, tables=tables)

        return self._retrying(attempt)

    def _apply(self, mapped: list, position: Any, snapshot: dict | None, reason: str, tables: dict[str, dict]) -> Any:
        """Apply with retries; a retry first asks the target whether the lost attempt had committed."""
        attempts = []

        def attempt() -> Any:
            if attempts and self._committed(position, snapshot, tables):
                return ApplyResult(0, 0)  # the connection broke after COMMIT: never apply twice
            attempts.append(1)
            return apply.apply(self.target, self.pair.name, mapped, position=position, snapshot=snapshot,
                               on_error=self.pair.on_error, reason=reason, tables=tables)

        return self._retrying(attempt)

    def _committed(self, position: Any, snapshot: dict | None, tables: dict[str, dict]) -> bool:
        checkpoint = self.target.checkpoint(self.pair.name)
        return checkpoint is not None and dumps(checkpoint.position) == dumps(position) \
            and dumps(checkpoint.snapshot) == dumps(snapshot) and checkpoint.tables == tables

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """Run ``call``; a passing fault is retried with back-off until it works or we are stopped.
        While it retries, the claim's row says so (``cdc status``: retrying, unhealthy)."""
        delay, attempt = 0.5, 0
        while True:
            attempt += 1
            try:
                outcome = call()
            except (RetryableError, sa.exc.OperationalError) as exc:
                if self.stop.is_set() or (self.max_attempts is not None and attempt >= self.max_attempts):
                    raise
                logger.warning("pair %s: %s; retrying in %.1fs", self.pair.name, _first_line(exc), delay)
                self.observer.retrying(_first_line(exc))
                self._say_retrying(_first_line(exc))
                self.stop.wait(delay * random.uniform(0.75, 1.25))  # jitter: pairs of one server spread out
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            if attempt > 1:
                self.observer.recovered()
            if self._retrying_since is not None:
                self._say_retrying(None)
            return outcome

    def _say_retrying(self, error: str | None) -> None:
        """Record in the claim's row that the run retries ``error`` (None: it works again). When the
        target itself is away this cannot be written; `cdc status` then fails to read it too."""
        if not self._claimed or error == self._retrying_since:
            return
        try:
            self.target.note_retrying(self.pair.name, error)
            self._retrying_since = error
        except (sa.exc.SQLAlchemyError, CdcError) as exc:
            logger.debug("pair %s: could not record the retry: %s", self.pair.name, _first_line(exc))


def record_failure(p: Pair, exc: BaseException) -> None:
    """A pair that could not even start: say so in its target's state tables where they exist."""
    try:
        target = open_target(p.target)
        try:
            target.record_failure(p.name, first_line(exc))
        finally:
            target.close()
    except (CdcError, sa.exc.SQLAlchemyError) as error:
        logger.debug("pair %s: failure not recorded in the target: %s", p.name, error)
