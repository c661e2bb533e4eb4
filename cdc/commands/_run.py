"""Running pairs: `cdc run`, each pair claimed, one thread per pair when streaming."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from ..config import Pair, load_config, mask_url
from ..errors import CdcError, RowError, first_line
from ..pipeline import PairRunner, RunResult, record_failure, tune_gc

#: The name log lines carried before the commands were split into modules (kept: `cdc run` prints it).
logger = logging.getLogger("cdc.commands")


def daemon(config_path: str, pair: str | None = None, *, state: str | None = None, listen: Any = None,
           stop: threading.Event | None = None) -> int:
    """Serve every pair (or ``pair``) as a long-running service until SIGTERM; see cdc.daemon.Daemon.
    ``listen``: (host, port), or None for the config's ``daemon.listen``. Returns the exit code."""
    from ..daemon import Daemon

    kwargs = {} if listen is None else {"listen": None if listen == "off" else listen}
    return Daemon(config_path, pair=pair, state=state, stop=stop, **kwargs).serve()


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
    tune_gc()
    chosen = config.select(pair)

    def one(p: Pair) -> RunResult:
        try:
            runner = PairRunner(p, progress=progress, stop=stop, max_attempts=10 if once else None)
        except BaseException as exc:
            record_failure(p, exc)
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
