"""One pair in the daemon: a thread that runs it, waits its turn while another process holds it, and
starts it again with exponential back-off and jitter when it fails."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable

from ..config import Pair, mask_url
from ..errors import RowError, first_line
from ..pipeline import PairRunner, record_failure
from ..state import ClaimHeldError, ClaimLostError
from ._health import PairHealth

logger = logging.getLogger(__name__)
#: A run that lasted this long before it failed starts again after the shortest back-off.
_HEALTHY_RUN = 60.0
_FIRST_BACKOFF = 1.0

#: ``assigned()``: None when this daemon is to run the pair, else why not (it is another daemon's).
Assigned = Callable[[], "str | None"]


def _why(exc: BaseException) -> str:
    return mask_url(exc.describe() if isinstance(exc, RowError) else first_line(exc))


class Worker:
    """Runs ``pair`` until ``stop()``; a failure never ends it, only delays the next start."""

    def __init__(self, pair: Pair, health: PairHealth, assigned: Assigned, max_backoff: float):
        self.pair, self.health, self.assigned, self.max_backoff = pair, health, assigned, max_backoff
        self._stop = threading.Event()
        self._wake = threading.Event()  # the assignment changed: look again now
        self._runner: PairRunner | None = None
        self._thread = threading.Thread(target=self._loop, name=f"pair-{pair.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current batch commits (the run releases the pair's claim)."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def holds(self) -> bool:
        """Whether the pair runs here now (claimed, not waiting its turn)."""
        return self.health.state not in ("standby", "failed", "stopped", "starting")

    def reassigned(self) -> None:
        """Called by the daemon after the assignment changed: a pair now another daemon's is stopped
        after its current batch (its claim released), so that daemon takes it at once; a pair now this
        daemon's stops waiting in standby."""
        runner = self._runner
        if runner is not None and self.assigned() is not None:
            runner.stop.set()
        self._wake.set()

    # -- the thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        delay = _FIRST_BACKOFF
        while not self._stop.is_set():
            elsewhere = self.assigned()
            if elsewhere is not None:
                self.health.standby(elsewhere)
                self._wait(1.0)
                continue
            began = time.monotonic()
            error = self._run_once()
            if self._stop.is_set():
                break
            if error is None:
                delay = _FIRST_BACKOFF
                continue
            if time.monotonic() - began > _HEALTHY_RUN:
                delay = _FIRST_BACKOFF
            pause = delay * random.uniform(0.5, 1.0)
            logger.error("pair %s failed: %s; starting it again in %.0f s", self.pair.name, error, pause)
            self.health.failed(error, f"starting again in {pause:.0f} s")
            self._wait(pause)
            delay = min(delay * 2, self.max_backoff)
            self.health.restarts += 1
        self.health.stopped()

    def _run_once(self) -> str | None:
        """Open, claim and run the pair until it stops; the error (masked) when it failed."""
        try:
            runner = PairRunner(self.pair, stop=self._stop, observer=self.health)
        except Exception as exc:
            record_failure(self.pair, exc)
            return _why(exc)
        self._runner = runner
        try:
            while not self._stop.is_set():
                try:
                    runner.run(once=False)
                    return None
                except ClaimHeldError as exc:  # another process runs it: wait for its claim to end
                    if self.assigned() is not None:
                        return None
                    self.health.standby(first_line(exc).split(": not started")[0])
                    self._wait(min(self.pair.claim_timeout / 3, 5.0))
            return None
        except ClaimLostError as exc:
            logger.warning("%s", first_line(exc))
            self.health.standby("lost the pair to another process")
            return None
        except Exception as exc:
            return _why(exc)
        finally:
            self._runner = None
            runner.close()

    def _wait(self, seconds: float) -> None:
        """Wait, showing signs of life each second (a waiting worker is not a hung one), until the time is
        up, the worker is stopped or the assignment changed."""
        end = time.monotonic() + seconds
        self._wake.clear()
        while not self._stop.is_set() and not self._wake.is_set() and time.monotonic() < end:
            self.health.alive()
            self._wake.wait(min(1.0, max(end - time.monotonic(), 0.0)))
