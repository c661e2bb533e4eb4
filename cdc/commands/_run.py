"""Running pairs: `cdc run`, each pair claimed, one thread per pair when streaming."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from typing import Any

import sqlalchemy as sa

from ..config import Pair, load_config, mask_url
from ..errors import CdcError, RowError, first_line
from ..pipeline import PairRunner, RunResult, open_target


#: Allocations between two young-generation garbage collections while pairs run (CPython: 700).
GC_THRESHOLD = 50_000


#: The name log lines carried before the commands were split into modules (kept: `cdc run` prints it).
logger = logging.getLogger("cdc.commands")


def _tune_gc() -> None:
    """Collect cycles less often while streaming.

    A batch keeps hundreds of thousands of change objects alive (none in reference cycles);
    CPython's default threshold (a collection every 700 allocations, each walking the young
    objects and, every so often, all of them) cost a quarter of the streaming apply's time in
    bench/postgres_bench.py. Memory stays bounded: the change model holds no cycles.
    """
    if gc.get_threshold()[0] < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, 20, 100)


def run(config_path: str, pair: str | None = None, *, once: bool = False, progress: bool = False,
        stop: threading.Event | None = None, resnapshot: bool = False, wait: bool = False) -> list[RunResult]:
    """Run the pairs: snapshot if needed, then stream. ``once``: drain what is pending and return.

    Each pair is claimed first (one process per pair; ``wait``: wait for the holder to stop
    instead of refusing). ``resnapshot`` forgets each pair's checkpoint first, so every table is
    copied again from the source's current position (after a lost slot or purged log). Rows deleted
    at the source while the log was lost stay in the target until reconciliation removes them.
    Without ``once`` each pair runs in its own thread until ``stop`` is set (SIGTERM/SIGINT set it
    when called from the main thread); the current batch always finishes first. A pair that fails
    records its error in the target (for `cdc status`) while the others go on; when every pair has
    stopped, the first failure is raised, so the process exits non-zero.
    """
    config = load_config(config_path)
    stop = stop or threading.Event()
    _tune_gc()
    chosen = config.select(pair)

    def one(p: Pair) -> RunResult:
        try:
            runner = PairRunner(p, progress=progress, stop=stop, max_attempts=10 if once else None)
        except BaseException as exc:
            _record_failure(p, exc)
            raise
        try:
            return runner.run(once=once, resnapshot=resnapshot, wait=wait)
        finally:
            runner.close()

    if not once and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    outcomes = _each_pair(chosen, one, concurrently=not once)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        first = failures[0]
        raise first if isinstance(first, CdcError) else \
            CdcError(f"pair {chosen[outcomes.index(first)].name}: {mask_url(first_line(first))}")
    return outcomes


def _each_pair(pairs: list[Pair], work, *, concurrently: bool) -> list[Any]:
    """``work(pair)`` for every pair (one thread each when ``concurrently``); a pair's failure is
    logged and returned in its place, and the other pairs go on."""
    outcomes: dict[str, Any] = {}

    def guarded(p: Pair) -> None:
        try:
            outcomes[p.name] = work(p)
        except BaseException as exc:  # reported by the caller
            outcomes[p.name] = exc
            if len(pairs) > 1:
                logger.error("pair %s stopped: %s", p.name, exc.describe() if isinstance(exc, RowError) else exc)

    if not concurrently:
        for p in pairs:
            guarded(p)
    else:
        threads = [threading.Thread(target=guarded, args=(p,), name=f"pair-{p.name}") for p in pairs]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.5)
    return [outcomes[p.name] for p in pairs]


def _record_failure(p: Pair, exc: BaseException) -> None:
    """A pair that could not even start: say so in its target's state tables where they exist."""
    try:
        target = open_target(p.target)
        try:
            target.record_failure(p.name, first_line(exc))
        finally:
            target.close()
    except (CdcError, sa.exc.SQLAlchemyError) as error:
        logger.debug("pair %s: failure not recorded in the target: %s", p.name, error)
