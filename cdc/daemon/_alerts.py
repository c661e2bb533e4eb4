"""Webhook alerts: a small JSON document POSTed when a pair fails, recovers, parks changes or lags.

Each is sent once per change of state (not once per retry), from a thread of its own, retried with
back-off when the webhook fails, and never holds a secret: its text passes the same scrubbing as
every line the CLI prints (see cdc._secrets).
"""

from __future__ import annotations

import logging
import queue
import random
import socket
import threading
import time
import urllib.error
import urllib.request

import orjson

from .. import _secrets
from ..config import Alert, mask_url
from ._health import PairHealth

logger = logging.getLogger(__name__)
#: Attempts per alert before it is given up (logged); the waits between them double from 1 s.
ATTEMPTS = 6
#: A pair that keeps parking changes gets one `parked` alert per this many seconds, not one per batch.
PARKED_QUIET = 900.0


def _text(health: PairHealth, event: str, lag: float | None = None) -> str:
    pair = f"cdc-sync pair {health.pair} on {socket.gethostname()}"
    if event == "failed":
        return f"{pair} FAILED ({health.state}): {health.error}"
    if event == "recovered":
        return f"{pair} recovered: {health.state} again"
    if event == "parked":
        return f"{pair} parked changes ({health.parked} so far): see `cdc dead-letters list` and `cdc conflicts list`"
    if event == "lagging":
        return f"{pair} lags {lag:.0f} s behind its source"
    return f"{pair}: lag back to {lag:.0f} s"


class Alerts:
    """Sends the config's alerts; ``event`` may be called from any thread and never blocks."""

    def __init__(self, alerts: tuple[Alert, ...]):
        self.alerts = alerts
        self._queue: queue.Queue = queue.Queue()
        self._lagging: set[tuple[int, str]] = set()
        self._parked: dict[str, float] = {}  # when each pair's last `parked` alert went
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send_all, name="cdc-alerts", daemon=True)
        if alerts:
            self._thread.start()

    def event(self, health: PairHealth, event: str) -> None:
        """A pair's state changed (``failed``, ``recovered``, ``parked``): alert whoever asked for it."""
        if event == "parked":
            now = time.monotonic()
            if now - self._parked.get(health.pair, -PARKED_QUIET) < PARKED_QUIET:
                return
            self._parked[health.pair] = now
        for alert in self.alerts:
            if event in alert.events:
                self._post(alert, health, event, _text(health, event))

    def check_lag(self, health: PairHealth) -> None:
        """Alert once when the pair's lag passes an alert's threshold, and once when it is back under."""
        lag = health.lag_seconds()
        for i, alert in enumerate(self.alerts):
            if "lagging" not in alert.events or lag is None:
                continue
            key, over = (i, health.pair), lag > alert.lag_seconds
            if over and key not in self._lagging:
                self._lagging.add(key)
                self._post(alert, health, "lagging", _text(health, "lagging", lag))
            elif not over and key in self._lagging:
                self._lagging.discard(key)
                self._post(alert, health, "lag recovered", _text(health, "lag recovered", lag))

    def _post(self, alert: Alert, health: PairHealth, event: str, text: str) -> None:
        summary = health.summary()
        document = {"text": _secrets.scrub(mask_url(text)), "pair": health.pair, "event": event,
                    "state": summary["state"], "error": _secrets.scrub(mask_url(summary["error"] or "")) or None,
                    "lag_seconds": summary["lag_seconds"], "host": socket.gethostname()}
        self._queue.put((alert, orjson.dumps(document)))

    def _send_all(self) -> None:
        while not self._stop.is_set():
            try:
                alert, body = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self._send(alert, body)

    def _send(self, alert: Alert, body: bytes) -> None:
        delay = 1.0
        for attempt in range(1, ATTEMPTS + 1):
            request = urllib.request.Request(alert.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    answer.read()
                return
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", None) or exc
                logger.warning("alert to %s failed (attempt %d of %d): %s", alert.masked(), attempt, ATTEMPTS,
                               _secrets.scrub(str(reason)))
            if self._stop.wait(delay * random.uniform(0.5, 1.5)):
                return
            delay = min(delay * 2, 60.0)
        logger.error("alert to %s given up after %d attempts", alert.masked(), ATTEMPTS)

    def close(self, wait: float = 5.0) -> None:
        """Send what is queued for up to ``wait`` seconds, then stop."""
        if not self.alerts:
            return
        deadline = time.monotonic() + wait
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._stop.set()
        self._thread.join(timeout=1.0)
