"""The daemon issue's own check: three pairs (SQLite, PostgreSQL and MariaDB sources) under steady random
writes; each database server stopped and started in turn, the daemon SIGKILLed twice and started again,
then SIGTERM: every target equals its source row by row, the audit has one row per change, /metrics
showed the lag rising and falling, and /healthz went unhealthy and healthy again."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa

import workload
from test_daemon import Service, services, wait_for  # noqa: F401
from test_mysql_source import ENTRIES, PARTIES, mexec
from test_postgres_source import LEDGER, cdc_ok, execute

pytestmark = pytest.mark.slow


def query(url: str, sql: str) -> list[tuple]:
    from cdc.config import load_url

    engine = sa.create_engine(load_url(url) if "://" in url else f"sqlite:///{url}")
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql)]
    finally:
        engine.dispose()


def _value(v):
    if isinstance(v, int) and not isinstance(v, bool):  # SQLite keeps a whole NUMERIC as an integer
        v = Decimal(v)
    if isinstance(v, float):
        v = Decimal(repr(v))
    if isinstance(v, Decimal):
        return str(v.normalize())
    if isinstance(v, dt.datetime):
        return v.replace(tzinfo=None).isoformat(" ")
    if isinstance(v, str) and v.endswith("+00:00"):  # a SQLite target keeps a UTC time as text with its zone
        return v.removesuffix("+00:00")
    return v


def table_rows(url: str, table: str, order: str) -> list[tuple]:
    return [tuple(_value(v) for v in r) for r in query(url, f"SELECT * FROM {table} ORDER BY {order}")]


class Writer:
    """Random changes to one source in small transactions until stopped; paused while its server is down."""

    def __init__(self, url, seed: int, log: bool):
        self.url, self.seed, self.log = url, seed, [] if log else None
        self.changes = 0
        self.go, self.idle, self.done = threading.Event(), threading.Event(), threading.Event()
        self.go.set()
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        rng = random.Random(self.seed)
        while not self.done.is_set():
            if not self.go.is_set():
                self.idle.set()
                self.go.wait(0.2)
                continue
            self.idle.clear()
            self.changes += workload.run(self.url, rng.randint(5, 30), seed=rng.randrange(10**9), pause=0.01,
                                         log=self.log)

    def pause(self) -> None:
        self.go.clear()
        self.idle.wait(60)
        assert self.idle.is_set()

    def resume(self) -> None:
        self.go.set()

    def finish(self) -> int:
        self.done.set()
        self.go.set()
        self.thread.join(60)
        return self.changes


class Watcher:
    """Scrapes /healthz and /metrics of whichever daemon runs now, twice a second (and when asked)."""

    def __init__(self):
        self.service: Service | None = None
        self.codes: list[int] = []
        self.lags: dict[str, list[float]] = {}
        self.states: list[str] = []  # the pairs' states at each sample, when they changed (for a failure's message)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.wait(0.5):
            self.scrape()

    def scrape(self) -> None:
        """One sample of the daemon's health and of every pair's lag (one /metrics read for all)."""
        service = self.service
        if service is None or not service.up():
            return
        try:
            code, body = service.health()
            _, metrics = service.get("/metrics")
        except OSError:
            return
        with self._lock:
            self.codes.append(code)
            states = " ".join(f"{p['pair']}:{p['state']}" for p in body["pairs"])
            if not self.states or self.states[-1] != states:
                self.states.append(states)
            for line in metrics.splitlines():
                if line.startswith("cdc_replication_lag_seconds{"):
                    pair = line.split('pair="', 1)[1].split('"', 1)[0]
                    self.lags.setdefault(pair, []).append(float(line.rsplit(" ", 1)[1]))

    def mark(self) -> dict[str, int]:
        with self._lock:
            return {pair: len(samples) for pair, samples in self.lags.items()}

    def rose(self, since: dict[str, int], pairs: tuple[str, ...], seconds: float = 3) -> bool:
        """Whether each of ``pairs`` showed a lag of ``seconds`` or more in a sample after ``since``."""
        with self._lock:
            return all(max(self.lags.get(p, [])[since.get(p, 0):], default=0) >= seconds for p in pairs)


def rose_and_fell(samples: list[float]) -> bool:
    top = max(samples, default=0)
    return top >= 3 and samples.index(top) < len(samples) - 1 and min(samples[samples.index(top):]) < 1


def test_three_pairs_survive_server_restarts_and_daemon_kills(ws, own_pg_server, own_mysql_server, services):
    pg, my = own_pg_server, own_mysql_server
    admin = pg.url()
    for name in ("lite_target", "pg_source"):
        execute(admin, f"CREATE DATABASE {name}")
    for name in ("pg_target", "maria_source"):
        mexec(my.url(), f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    pg_source, maria_source = pg.url("pg_source"), my.url("maria_source")
    execute(pg_source, LEDGER)
    mexec(maria_source, ENTRIES)
    mexec(maria_source, PARTIES)
    from conftest import LEDGER_SCHEMA

    lite_source, maria_target = ws.root / "lite-source.db", ws.root / "maria-target.db"
    ws.sql(lite_source, LEDGER_SCHEMA)
    options = "    tables: [entries, parties]\n    batch_size: 25\n    poll_interval: 0.1\n    claim_timeout: 5\n"
    ws.config.write_text(
        f"connections:\n  lite_src: sqlite:///{lite_source.name}\n  lite_dst: {pg.url('lite_target')}\n"
        f"  pg_src: {pg_source}\n  pg_dst: {my.url('pg_target')}\n"
        f"  maria_src: {maria_source}\n  maria_dst: sqlite:///{maria_target.name}\n"
        "pairs:\n"
        f"  lite:\n    source: lite_src\n    target: lite_dst\n    capture: trigger\n{options}"
        f"  pg:\n    source: pg_src\n    target: pg_dst\n    capture: logical\n{options}"
        f"  maria:\n    source: maria_src\n    target: maria_dst\n    capture: binlog\n{options}"
        "daemon:\n  max_backoff: 4\n", encoding="utf-8")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    # Rows for the snapshot, written after install (the SQLite changelog counts them from 1).
    first = {"lite": workload.run(lite_source, 200, seed=1), "pg": workload.run(pg_source, 200, seed=2),
             "maria": workload.run(maria_source, 200, seed=3)}
    watcher = Watcher()

    def start() -> Service:
        service = Service(ws)
        services.append(service)
        watcher.service = service
        wait_for(lambda: service.up() and service.health()[0] == 200, 120, "the daemon to be healthy")
        return service

    def risen(since: dict[str, int], pairs: tuple[str, ...]) -> None:
        """Wait until /metrics showed each of ``pairs`` 3 s or more behind (the server stays down till then)."""
        deadline = time.monotonic() + 60
        while not watcher.rose(since, pairs):
            if time.monotonic() > deadline:
                pytest.fail(f"the lag of {' and '.join(pairs)} did not rise to 3 s while a database was away: "
                            f"samples {watcher.lags}, states {watcher.states}")
            time.sleep(0.2)

    service = start()
    wait_for(lambda: {p["state"] for p in service.health()[1]["pairs"]} == {"idle"}, 120, "the snapshots to finish")
    writers = {"lite": Writer(lite_source, 11, False), "pg": Writer(pg_source, 12, True),
               "maria": Writer(maria_source, 13, True)}
    try:
        time.sleep(3)
        # PostgreSQL goes away: pair lite's target and pair pg's source.
        writers["pg"].pause()
        since = watcher.mark()
        pg.stop()
        wait_for(lambda: service.health()[0] == 503, 60, "/healthz to say a pair cannot work")
        # Pair lite's source goes on while its target is away, pair pg's source is away: their lags rise.
        risen(since, ("lite", "pg"))
        pg.start()
        writers["pg"].resume()
        wait_for(lambda: service.health()[0] == 200, 120, "healthy after PostgreSQL came back")
        # MariaDB goes away: pair pg's target and pair maria's source.
        writers["maria"].pause()
        since = watcher.mark()
        my.stop()
        wait_for(lambda: service.health()[0] == 503, 60, "/healthz to say a pair cannot work")
        risen(since, ("pg", "maria"))
        my.start()
        writers["maria"].resume()
        wait_for(lambda: service.health()[0] == 200, 120, "healthy after MariaDB came back")
        # The daemon SIGKILLed twice, and started again each time.
        for pause in (2.5, 1.5):
            time.sleep(pause)
            service.kill()
            service = start()
        time.sleep(2)
    finally:
        counts = {name: writer.finish() for name, writer in writers.items()}
    sources = {"lite": str(lite_source), "pg": pg_source, "maria": maria_source}
    targets = {"lite": pg.url("lite_target"), "pg": my.url("pg_target"), "maria": str(maria_target)}
    for name in sources:
        for table, order in (("entries", "id"), ("parties", "code, region")):
            deadline = time.monotonic() + 120
            while (have := table_rows(targets[name], table, order)) != (want := table_rows(sources[name], table, order)):
                if time.monotonic() > deadline:
                    missing, extra = set(want) - set(have), set(have) - set(want)
                    pytest.fail(f"pair {name} table {table}: {len(missing)} source rows missing or different in the "
                                f"target, e.g. {sorted(missing, key=str)[:3]}; {len(extra)} target rows not in the "
                                f"source, e.g. {sorted(extra, key=str)[:3]}")
                time.sleep(0.5)
    wait_for(lambda: all((service.metric("cdc_replication_lag_seconds", pair=p) or 0) < 1 for p in sources), 60,
             "the lag to fall")
    wait_for(lambda: service.health()[0] == 200, 60, "/healthz to say all is well")
    watcher.stop.set()
    watcher.thread.join()
    watcher.scrape()  # the last sample, taken now that the lags are down
    assert service.stop() == 0
    assert 503 in watcher.codes and watcher.codes[-1] == 200, "/healthz went unhealthy and healthy again"
    for name in ("lite", "pg", "maria"):  # the whole series on failure (an assertion's repr would be cut short)
        if not rose_and_fell(watcher.lags.get(name, [])):
            pytest.fail(f"pair {name}: the lag did not rise to 3 s and fall again; samples {watcher.lags}\n"
                        f"states seen {watcher.states}\n{services[0].logged()[:8000]}")
    # One audit row per change: SQLite's changelog ids after the snapshot's, with no gap and no double ...
    positions = [p for (p,) in query(targets["lite"], "SELECT CAST(source_position AS INTEGER) FROM cdc_audit_log "
                                                      "WHERE op <> 'snapshot' ORDER BY 1")]
    assert positions == list(range(first["lite"] + 1, first["lite"] + counts["lite"] + 1))
    # ... and each PostgreSQL and MariaDB transaction with as many audit rows as it had changes.
    for name in ("pg", "maria"):
        audited = dict(query(targets[name], "SELECT source_txid, count(*) FROM cdc_audit_log WHERE op <> 'snapshot' "
                                            "GROUP BY source_txid"))
        written = dict(writers[name].log)
        assert sum(written.values()) == counts[name]
        assert {str(k): v for k, v in audited.items()} == {str(k): v for k, v in written.items()}, name
