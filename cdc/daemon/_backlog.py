"""What the daemon reads beside the pairs' work, every so often: each source's backlog and each target's
open dead letters and conflicts, as `cdc status` reads them, for /metrics."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

import sqlalchemy as sa

from .. import state
from ..config import Pair
from ..errors import CdcError, first_line
from ..pipeline import open_source, open_target

logger = logging.getLogger(__name__)
#: "252 bytes of binlog behind", "1,204 bytes of WAL behind": the number and what it counts.
_DESCRIBED = re.compile(r"^\s*([\d,]+)\s+(\w+)")


@dataclass
class Sample:
    """One pair's reading: backlog (a number and what it counts, None when unknown), open letters/conflicts."""

    backlog: float | None = None
    unit: str = "changes"
    dead_letters: int | None = None
    conflicts: int | None = None


def _backlog(pending: int | str | None) -> tuple[float | None, str]:
    if isinstance(pending, int):
        return float(pending), "changes"
    match = _DESCRIBED.match(pending or "")
    if match is None:
        return None, "changes"
    return float(match.group(1).replace(",", "")), match.group(2)


def sample(pair: Pair) -> Sample:
    """Read the pair's target state and its source's backlog after the checkpoint (fresh connections,
    closed again: the pair's own are busy in its worker). Raises CdcError or SQLAlchemy's errors."""
    reading = Sample()
    target = open_target(pair.target)
    try:
        with target.reading() as conn:
            checkpoint = state.read_checkpoint(conn, pair.name)
            reading.dead_letters, reading.conflicts = state.open_counts(conn, pair.name)
    finally:
        target.close()
    if checkpoint is not None and checkpoint.snapshot is None:
        source, _ = open_source(pair)
        try:
            reading.backlog, reading.unit = _backlog(source.pending(checkpoint.position))
        finally:
            source.close()
    return reading


class Sampler:
    """Samples every pair ``pairs()`` names each ``every`` seconds in a thread of its own."""

    def __init__(self, pairs: Callable[[], Iterable[Pair]], samples: dict[str, Sample], every: float = 30.0):
        self.pairs, self.every = pairs, every
        self.samples = samples  # filled here, read by /metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cdc-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        wait = 2.0  # the first reading soon after start-up, then every ``every`` seconds
        while not self._stop.wait(wait):
            wait = self.every
            for pair in list(self.pairs()):
                if self._stop.is_set():
                    return
                try:
                    self.samples[pair.name] = sample(pair)
                except (CdcError, sa.exc.SQLAlchemyError, OSError) as exc:
                    self.samples.pop(pair.name, None)  # unknown now: no stale figure
                    logger.debug("pair %s: backlog not read: %s", pair.name, first_line(exc))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
