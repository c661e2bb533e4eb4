"""Each pair's health as the daemon sees it: state, counters and lag, for /healthz, /metrics and alerts."""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..changes import ApplyResult
from .._observer import Observer

#: Every state a pair's worker may be in (cdc_pair_state has one series per state).
STATES = ("starting", "snapshotting", "streaming", "idle", "standby", "retrying", "failed", "stopped")
#: States in which a pair counts as healthy: doing its work, or waiting for its turn on purpose.
HEALTHY = ("starting", "snapshotting", "streaming", "idle", "standby", "stopped")
#: A caught-up read older than this many poll intervals no longer vouches that the pair is caught up.
_FRESH_POLLS = 5


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class PairHealth(Observer):
    """What one pair's worker reports; read by the HTTP handlers and the alerts in other threads.

    ``on_change(health, event)`` is called on the events alerts are sent for (``failed``, ``recovered``,
    ``parked``), outside the lock, from the worker's thread.
    """

    pair: str
    poll_interval: float = 1.0
    on_change: Callable[["PairHealth", str], None] | None = None
    hung_after: float = 600.0
    state: str = "starting"
    error: str | None = None
    detail: str | None = None  # standby: who holds the pair; failed: when it is tried again
    applied: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    conflicts: int = 0
    parked: int = 0
    errors: int = 0
    restarts: int = 0
    snapshot_rows: int = 0
    source_committed_at: dt.datetime | None = None  # of the last change applied
    checkpoint_at: dt.datetime | None = None  # wall time of the last commit
    caught_up_at: dt.datetime | None = None  # wall time of the last read that found nothing new
    last_alive: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- what the run reports (Observer) ------------------------------------------------------
    def alive(self) -> None:
        self.last_alive = time.monotonic()

    def copied(self, table: str, rows: int) -> None:
        with self._lock:
            self.snapshot_rows += rows
            self.checkpoint_at = _now()
        self._set("snapshotting")

    def committed(self, result: ApplyResult) -> None:
        with self._lock:
            for op, count in result.by_op.items():
                self.applied[op] = self.applied.get(op, 0) + count
            self.batches += 1
            self.conflicts += result.conflicts
            self.parked += result.parked
            self.checkpoint_at = _now()
            if result.committed_at is not None:
                self.source_committed_at = result.committed_at
        self._set("streaming")
        if result.parked and self.on_change:
            self.on_change(self, "parked")

    def caught_up(self) -> None:
        with self._lock:
            self.caught_up_at = _now()
        self._set("idle")

    def retrying(self, error: str) -> None:
        with self._lock:
            self.errors += 1
        self._set("retrying", error)

    def recovered(self) -> None:
        self._set("streaming")

    # -- what the worker reports -----------------------------------------------------------------
    def standby(self, detail: str) -> None:
        self._set("standby", None, detail)

    def failed(self, error: str, detail: str) -> None:
        with self._lock:
            self.errors += 1
        self._set("failed", error, detail)

    def stopped(self) -> None:
        self._set("stopped")

    def _set(self, state: str, error: str | None = None, detail: str | None = None) -> None:
        self.alive()
        with self._lock:
            was_bad = self.state in ("failed", "retrying")
            changed = self.state != state or self.error != error
            self.state, self.error, self.detail = state, error, detail
        if not changed or self.on_change is None:
            return
        if state in ("failed", "retrying") and not was_bad:
            self.on_change(self, "failed")
        elif was_bad and state in HEALTHY:
            self.on_change(self, "recovered")

    # -- what is read ---------------------------------------------------------------------------
    @property
    def hung(self) -> bool:
        """No sign of life for ``hung_after`` seconds: stuck, most likely in a database call."""
        # An idle pair is silent for its poll interval on purpose.
        return self.state != "stopped" and self.silent_for() > max(self.hung_after, 3 * self.poll_interval)

    @property
    def healthy(self) -> bool:
        return self.state in HEALTHY and not self.hung

    def lag_seconds(self, now: dt.datetime | None = None) -> float | None:
        """Seconds the target is behind the source: 0 right after a read found nothing new; else the
        time since the newer of the last applied change's source commit and the last caught-up read
        (rising while a database is away: at most that far behind). None before anything is known."""
        now = now or _now()
        with self._lock:
            caught, committed, state = self.caught_up_at, self.source_committed_at, self.state
        if state in ("standby", "stopped"):  # another process runs it: its lag is that one's to tell
            return None
        fresh = dt.timedelta(seconds=max(self.poll_interval * _FRESH_POLLS, 5.0))
        if state == "idle" and caught is not None and now - caught <= fresh:
            return 0.0
        known = [t for t in (caught, committed) if t is not None]
        if not known:
            return None
        return max((now - max(known)).total_seconds(), 0.0)

    def silent_for(self) -> float:
        """Seconds since the worker last showed a sign of life."""
        return time.monotonic() - self.last_alive

    def summary(self) -> dict[str, Any]:
        """The pair as /healthz shows it."""
        lag = self.lag_seconds()
        with self._lock:
            return {"pair": self.pair, "state": self.state, "healthy": self.state in HEALTHY and not self.hung,
                    "hung": self.hung, "error": self.error,
                    "detail": self.detail, "lag_seconds": None if lag is None else round(lag, 3),
                    "changes_applied": sum(self.applied.values()), "batches": self.batches, "parked": self.parked,
                    "conflicts": self.conflicts, "errors": self.errors, "restarts": self.restarts,
                    "last_checkpoint_at": self.checkpoint_at.isoformat() if self.checkpoint_at else None}

    def short(self) -> str:
        """A few words for systemd's STATUS= line."""
        lag = self.lag_seconds()
        text = f"{self.pair} {self.state}"
        return text + (f" lag {lag:.0f}s" if lag else "")
