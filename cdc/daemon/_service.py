"""`cdc daemon`: every pair of a config, each in a worker of its own, as a long-running service."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Any

import sqlalchemy as sa

from .. import _secrets
from .._service_config import _password
from ..config import Config, DaemonOptions, Pair, load_config, mask_url
from ..errors import CdcError, first_line
from ..pipeline import tune_gc
from ._alerts import Alerts
from ._backlog import Sampler
from ._health import PairHealth
from ._http import Endpoints
from ._members import Membership
from ._notify import Notifier
from ._worker import Worker

logger = logging.getLogger("cdc.daemon")
_TICK = 0.5
#: Seconds between the INFO lines that sum up each pair's work.
SUMMARY_EVERY = 60.0
_UNSET: Any = object()


class Daemon:
    """Runs the pairs of ``config_path`` until ``stop`` is set (SIGTERM/SIGINT set it when serving from
    the main thread; SIGHUP reloads the config).

    ``state``: a shared state database URL (overrides the config's ``daemon.state``): daemons sharing
    it take the pairs by lease (see _members). ``listen``: (host, port) or None, overriding
    ``daemon.listen``. ``environ``: where NOTIFY_SOCKET and WATCHDOG_USEC are read (os.environ).
    """

    def __init__(self, config_path: str, *, pair: str | None = None, state: str | None = None, listen: Any = _UNSET,
                 stop: threading.Event | None = None, environ: dict[str, str] | None = None):
        self.config_path, self.pair_name = config_path, pair
        self.stop = stop or threading.Event()
        self._reload_wanted = threading.Event()
        self.config = self._load()
        options = self.config.daemon
        self.options = dataclasses.replace(options, state=state or options.state,
                                           **({} if listen is _UNSET else {"listen": listen}))
        #: Settings fixed for the daemon's life (a reload cannot move them); those the command line gave
        #: are not the config's to change at all.
        self._fixed = {name: getattr(self.options, name) for name in ("listen", "state", "lease_seconds")}
        self._overridden = {name for name, given in (("listen", listen is not _UNSET), ("state", bool(state)))
                            if given}
        if state:
            _secrets.remember(_password(state))
        self.notifier = Notifier(environ)
        self.alerts = Alerts(self.options.alerts)
        self.membership = Membership(self.options.state, self.options.lease_seconds) if self.options.state else None
        self.state_error: str | None = None
        self.workers: dict[str, Worker] = {}
        self.endpoints: Endpoints | None = None
        self.sampler: Sampler | None = None
        self._stopping = False
        self._hung: set[str] = set()
        self._last_ping = 0.0

    def _load(self) -> Config:
        config = load_config(self.config_path)
        config.select(self.pair_name)  # an unknown --pair is a ConfigError now, not at the first reload
        return config

    def _pairs(self, config: Config) -> dict[str, Pair]:
        return {p.name: p for p in config.select(self.pair_name)}

    # -- serving --------------------------------------------------------------------------------
    def serve(self) -> int:
        """Start every pair, report READY, supervise until stopped; 0 when every pair stopped cleanly
        within ``daemon.stop_timeout``, 1 when one had to be left (its open transaction rolls back)."""
        tune_gc()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
            signal.signal(signal.SIGINT, lambda *_: self.stop.set())
            signal.signal(signal.SIGHUP, lambda *_: self._reload_wanted.set())
        for pair in self._pairs(self.config).values():  # made first: /healthz shows every pair from the start
            self._start(pair, run=False)
        if self.options.listen is not None:
            samples: dict = {}
            self.endpoints = Endpoints(self.options.listen, self.healths, self.info, samples)
            self.sampler = Sampler(lambda: [w.pair for w in list(self.workers.values()) if w.holds], samples)
        self._beat()
        for worker in self.workers.values():
            worker.start()
        where = f"http://{self.endpoints.address[0]}:{self.endpoints.address[1]}" if self.endpoints else "nowhere"
        logger.info("daemon started: %d pair(s) (%s); /healthz and /metrics on %s%s", len(self.workers),
                    ", ".join(self.workers), where,
                    f"; sharing pairs through state database {mask_url(self.options.state)}" if self.membership else "")
        self.notifier.send(READY="1", STATUS=self.status_line())
        try:
            self._supervise()
        finally:
            code = self._shut_down()
        return code

    def _supervise(self) -> None:
        last_beat = last_summary = time.monotonic()
        status = ""
        applied = {name: 0 for name in self.workers}
        while not self.stop.wait(_TICK):
            moment = time.monotonic()
            if self._reload_wanted.is_set():
                self._reload_wanted.clear()
                self._reload()
            if self.membership is not None and moment - last_beat >= self.membership.beat_every:
                self._beat()
                last_beat = moment
            for worker in list(self.workers.values()):
                self.alerts.check_lag(worker.health)
            self._ping()
            line = self.status_line()
            if line != status:
                self.notifier.send(STATUS=line)
                status = line
            if moment - last_summary >= SUMMARY_EVERY:
                applied = self._summarise(applied, moment - last_summary)
                last_summary = moment

    def _ping(self) -> None:
        """WATCHDOG=1 every third of WatchdogSec, unless a worker hangs (then systemd restarts the daemon)."""
        watchdog, moment = self.notifier.watchdog, time.monotonic()
        if watchdog and not self._find_hung() and moment - self._last_ping >= watchdog / 3:
            self.notifier.send(WATCHDOG="1")
            self._last_ping = moment

    def _shut_down(self) -> int:
        self._stopping = True
        self.notifier.send(STOPPING="1", STATUS="stopping: finishing the current batches")
        logger.info("stopping: each pair finishes and commits its current batch")
        for worker in self.workers.values():
            worker.stop()
        deadline = time.monotonic() + self.options.stop_timeout
        left = [name for name, worker in self.workers.items()
                if not worker.join(max(deadline - time.monotonic(), 0.0))]
        if self.membership is not None:
            self.membership.leave()
        if self.endpoints is not None:
            self.endpoints.close()
        if self.sampler is not None:
            self.sampler.close()
        self.alerts.close()
        self.notifier.close()
        if left:
            logger.error("pair(s) %s did not stop within daemon.stop_timeout (%g s): their open transactions are "
                         "rolled back by the database, nothing of them is committed; the next start goes on from "
                         "their checkpoints", ", ".join(left), self.options.stop_timeout)
            return 1
        logger.info("stopped")
        return 0

    # -- pairs ----------------------------------------------------------------------------------
    def _start(self, pair: Pair, run: bool = True) -> None:
        health = PairHealth(pair.name, pair.poll_interval, self.alerts.event, hung_after=self.options.hung_after)

        def assigned() -> str | None:
            return self.membership.assigned(pair.name) if self.membership is not None else None

        worker = Worker(pair, health, assigned, self.options.max_backoff)
        self.workers[pair.name] = worker
        if run:
            worker.start()

    def _stop_workers(self, names: list[str]) -> None:
        for name in names:
            self.workers[name].stop()
        deadline = time.monotonic() + self.options.stop_timeout
        for name in names:
            while not self.workers[name].join(min(_TICK, max(deadline - time.monotonic(), 0.0))):
                self._ping()  # a reload waiting for a long batch is no hang
                if time.monotonic() >= deadline:
                    logger.error("pair %s did not stop within daemon.stop_timeout; it is left to finish", name)
                    break
            del self.workers[name]

    def _reload(self) -> None:
        """SIGHUP: read the config again; pairs whose definition changed restart, others run on. A config
        that does not load is refused and the old one keeps running."""
        self.notifier.send(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))
        try:
            config = self._load()
        except CdcError as exc:
            logger.error("config reload refused, the running config stays: %s", exc)
            self.notifier.send(READY="1", STATUS=f"reload refused: {first_line(exc)}")
            return
        old, new = self._pairs(self.config), self._pairs(config)
        gone = [name for name in old if name not in new]
        changed = [name for name in old if name in new and old[name] != new[name]]
        self._stop_workers([name for name in gone + changed if name in self.workers])
        for name in changed + [name for name in new if name not in old]:
            self._start(new[name])
        self._reload_options(config.daemon)
        self.config = config
        logger.info("config reloaded: %d pair(s) restarted, %d added, %d removed, %d unchanged", len(changed),
                    len([n for n in new if n not in old]), len(gone), len(old) - len(gone) - len(changed))
        self.notifier.send(READY="1", STATUS=self.status_line())

    def _reload_options(self, new: DaemonOptions) -> None:
        """The `daemon:` and `alerts:` settings of a reloaded config: alerts, stop_timeout, hung_after and
        max_backoff apply now; where to listen and the state database only at the next start (said)."""
        old = self.config.daemon
        if new.alerts != old.alerts:
            self.alerts.close()
            self.alerts = Alerts(new.alerts)
            for worker in self.workers.values():
                worker.health.on_change = self.alerts.event
        later = [name for name, running in self._fixed.items()
                 if name not in self._overridden and getattr(new, name) != running]
        if later:
            logger.warning("daemon.%s in the config differs from what this daemon runs with: %s when the daemon is "
                           "started again (systemctl restart)", ", daemon.".join(later),
                           "it takes effect" if len(later) == 1 else "they take effect")
        self.options = dataclasses.replace(self.options, stop_timeout=new.stop_timeout, hung_after=new.hung_after,
                                           max_backoff=new.max_backoff, alerts=new.alerts)
        for worker in self.workers.values():
            worker.max_backoff, worker.health.hung_after = new.max_backoff, new.hung_after

    def _beat(self) -> None:
        """Heartbeat in the shared state database; a pair whose assignment moved is handed over."""
        if self.membership is None:
            return
        try:
            before = list(self.membership.members)
            members = self.membership.beat([name for name, w in self.workers.items() if w.holds])
        except sa.exc.SQLAlchemyError as exc:
            error = mask_url(first_line(getattr(exc, "orig", None) or exc))
            if error != self.state_error:
                logger.error("state database %s: %s; until it answers, every daemon tries every pair (their claims "
                             "in the targets let each run in one place only), retrying", mask_url(self.options.state),
                             error)
            self.state_error = error
            if self.membership.reachable:
                self.membership.reachable = False
                for worker in self.workers.values():
                    worker.reassigned()
            return
        if self.state_error is not None:
            logger.info("state database reachable again")
        self.state_error = None
        if not self.membership.reachable:
            self.membership.reachable, before = True, []
        if members != before:
            logger.info("daemons sharing the pairs: %s", ", ".join(members))
            for worker in self.workers.values():
                worker.reassigned()

    # -- what is reported -----------------------------------------------------------------------
    def healths(self) -> list[PairHealth]:
        return [worker.health for worker in list(self.workers.values())]

    def info(self) -> dict[str, Any]:
        return {"daemon": self.membership.id if self.membership else f"{os.uname().nodename}:{os.getpid()}",
                "pid": os.getpid(), "stopping": self._stopping, "state_database_error": self.state_error,
                "daemons": list(self.membership.members) if self.membership else None,
                "held": sum(1 for w in list(self.workers.values()) if w.holds)}

    def status_line(self) -> str:
        """systemd's STATUS=: a few words per pair."""
        return _secrets.scrub("; ".join(h.short() for h in self.healths())) or "no pairs"

    def _find_hung(self) -> list[str]:
        hung = [h.pair for h in self.healths() if h.hung]
        for name in set(hung) - self._hung:
            logger.error("pair %s showed no sign of life for %g s (daemon.hung_after): a database call may hang; "
                         "watchdog pings stop, so systemd (WatchdogSec) restarts the daemon", name,
                         self.options.hung_after)
        self._hung = set(hung)
        return hung

    def _summarise(self, before: dict[str, int], seconds: float) -> dict[str, int]:
        now = {}
        for health in self.healths():
            total = sum(health.applied.values())
            now[health.pair] = total
            lag = health.lag_seconds()
            logger.info("pair %s: %s; %d change(s) applied in the last %.0f s (%d in all)%s%s", health.pair,
                        health.state, total - before.get(health.pair, 0), seconds, total,
                        f"; lag {lag:.1f} s" if lag is not None else "",
                        f"; {health.error}" if health.error else "", extra={"pair": health.pair})
        return now
