"""Four sessions of small transactions at once while `cdc run` streams as a service: SIGKILLed and
restarted on observed progress, or its target server stopped and started again; in every capture
mode the target ends equal to the source row by row, with exactly one audit row per change."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

import workload
from conftest import LEDGER_SCHEMA
from test_postgres_source import LEDGER, assert_each_transaction_once, execute, rows
from test_mysql_source import ENTRIES, PARTIES, mexec, same_rows

#: Seconds the writers write at least (longer when `cdc run` has not been killed three times yet).
LOAD_SECONDS = 10
#: Seconds each writer waits between its transactions: about 40 transactions/s per writer at most,
#: enough to keep every capture busy and little enough for the old code to catch up within a minute.
WRITER_PAUSE = 0.05
WRITERS = 4
#: Changes the writers may be ahead of the pair's checkpoint: they wait beyond it, so that a slow
#: machine (or slow capture code) does not make each restart's first commit, and the catch-up at
#: the end, take longer and longer; a fast one never waits.
MAX_BACKLOG = 600
TABLES = (("entries", "id"), ("parties", "code, region"))

#: mode: (source database, capture, whether the audit's source_txid is the source transaction's id)
MODES = {
    "postgresql-logical": ("postgresql", "logical", True),
    "postgresql-trigger": ("postgresql", "trigger", True),
    "mariadb-binlog": ("mariadb", "binlog", True),
    "mariadb-trigger": ("mariadb", "trigger", False),  # source_txid is the epoch the transaction ended in
    "sqlite-trigger": ("sqlite", "trigger", False),
}


def make_source(request, ws, kind: str):
    """A fresh source database of ``kind`` with the ledger tables: its URL (a Path for SQLite)."""
    if kind == "postgresql":
        source = request.getfixturevalue("pg_databases")()
        execute(source, LEDGER)
        return source
    if kind == "mariadb":
        source = request.getfixturevalue("mysql_databases")()
        mexec(source, ENTRIES)
        mexec(source, PARTIES)
        return source
    ws.sql(ws.source, LEDGER_SCHEMA)
    return ws.source


def url(db) -> str:
    return db if isinstance(db, str) else f"sqlite:///{db}"


def write_config(ws, source, target, capture: str) -> None:
    ws.config.write_text(f"connections:\n  src: {url(source)}\n  dst: {url(target)}\npairs:\n  busy:\n"
                         f"    source: src\n    target: dst\n    capture: {capture}\n    tables: [entries, parties]\n"
                         f"    batch_size: 100\n    poll_interval: 0.05\n", encoding="utf-8")


def prepared(ws, source, target, capture: str) -> tuple[int, list]:
    """The shared rows, capture installed and the initial snapshot taken: every later change streams."""
    shared = workload.shared_rows(source)
    write_config(ws, source, target, capture)
    for command in (("init",), ("install",), ("run", "--once")):
        result = ws.cdc(*command, str(ws.config))
        assert result.returncode == 0, f"cdc {' '.join(command)}: {result.stderr}"
    return shared


def target_query(target, sql: str) -> list:
    if isinstance(target, str):
        return execute(target, sql)
    conn = sqlite3.connect(target, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def applied(target) -> int:
    """The changes the pair's checkpoint says it applied."""
    return target_query(target, "SELECT coalesce(max(changes_applied), 0) FROM cdc_checkpoints")[0][0]


def audited(target) -> int:
    return target_query(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'")[0][0]


def both_sides(source, target, table: str, order: str) -> tuple[list, list]:
    if isinstance(source, str) and source.startswith("mysql"):
        return same_rows(source, target, table, order)
    return rows(url(source), table, order), rows(url(target), table, order)


def differing_tables(source, target) -> list[str]:
    return [table for table, order in TABLES if (sides := both_sides(source, target, table, order))[0] != sides[1]]


class Writers:
    """``WRITERS`` threads of ``workload.small_transactions`` on one source, each with its own log,
    held while they are ``MAX_BACKLOG`` changes ahead of the checkpoint in ``target``."""

    def __init__(self, source, target, shared: tuple[int, list], seed: int):
        self.stop, self.go, self.logs, self.errors = threading.Event(), threading.Event(), [], []
        self.logs = [[] for _ in range(WRITERS)]
        self.go.set()
        self.threads = [threading.Thread(target=self._write, args=(source, n, seed + n, shared))
                        for n in range(WRITERS)] + [threading.Thread(target=self._hold, args=(target,))]
        for thread in self.threads:
            thread.start()

    def _write(self, source, writer: int, seed: int, shared) -> None:
        try:
            workload.small_transactions(source, writer, seed, self.stop, shared, WRITER_PAUSE, self.logs[writer],
                                        self.go)
        except Exception as exc:  # noqa: BLE001 - reported by finish() in the test's thread
            self.errors.append(f"writer {writer}: {exc!r}")
            self.stop.set()

    def _hold(self, target) -> None:
        while not self.stop.wait(0.2):
            try:
                ahead = self.changes() - applied(target)
            except Exception:  # noqa: BLE001 - the target is down (restarting): keep the last decision
                continue
            (self.go.clear if ahead > MAX_BACKLOG else self.go.set)()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        assert not self.errors, self.errors

    def changes(self) -> int:
        return sum(len(changed) for log in self.logs for _, changed in log)


def serve(ws) -> subprocess.Popen:
    """`cdc run` as a service would run it, its diagnostics appended to run.log."""
    with open(ws.root / "run.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                                stdout=subprocess.DEVNULL, stderr=log)


def run_log(ws, lines: int = 30, since: int = 0) -> str:
    """The last ``lines`` lines of what `cdc run` wrote to run.log from its byte ``since`` on."""
    path = ws.root / "run.log"
    text = path.read_bytes()[since:].decode(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_for(predicate, timeout: float, what: str, ws, process: subprocess.Popen | None = None) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` s or when ``process`` ends."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process is None or process.poll() is None, \
            f"cdc run ended (exit {process.returncode}) while waiting for {what}:\n{run_log(ws)}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}:\n{run_log(ws)}"
        time.sleep(0.1)


def kill_on_progress(ws, target, writers: Writers, rng: random.Random) -> list[int]:
    """Start `cdc run` and SIGKILL it each time, a random moment after its checkpoint moved, until the
    load has lasted ``LOAD_SECONDS`` and it was killed three times; returns the checkpoints seen."""
    began, seen = time.monotonic(), [applied(target)]
    while time.monotonic() - began < LOAD_SECONDS or len(seen) <= 3:
        assert not writers.stop.is_set(), writers.errors
        process = serve(ws)
        try:
            wait_for(lambda: applied(target) > seen[-1], 120, f"the checkpoint to move past {seen[-1]} (kill "
                     f"{len(seen)})", ws, process)
            time.sleep(rng.uniform(0, 0.5))  # anywhere in its cycle: reading, applying, committing
        finally:
            process.kill()
            process.wait()
        seen.append(applied(target))
    return seen


def catch_up_and_stop(ws, source, target, writers: Writers, process: subprocess.Popen) -> None:
    """With the writers done, wait (up to three minutes) until the running service has applied every
    change, then SIGTERM it: it must stop cleanly. One that did not catch up fails the checks after."""
    expected, deadline = writers.changes(), time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, f"cdc run ended (exit {process.returncode}):\n{run_log(ws)}"
        if audited(target) >= expected and not differing_tables(source, target):
            break
        time.sleep(0.2)
    # Its pair claimed (its handlers in place): a SIGTERM before that would find the default action.
    wait_for(lambda: target_query(target, "SELECT count(*) FROM cdc_leases WHERE pid = %d AND state = 'running'"
                                  % process.pid)[0][0] == 1, 60, "cdc run to claim its pair", ws, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, f"cdc run did not stop cleanly on SIGTERM:\n{run_log(ws)}"


def assert_same_rows_and_one_audit_row_per_change(source, target, writers: Writers, per_transaction: bool = False):
    for table, order in TABLES:
        source_rows, target_rows = both_sides(source, target, table, order)
        missing, extra = set(source_rows) - set(target_rows), set(target_rows) - set(source_rows)
        assert source_rows == target_rows, \
            f"{table}: {len(source_rows)} source rows, {len(target_rows)} target rows; source only (or " \
            f"other values): {sorted(missing, key=str)[:5]}; target only: {sorted(extra, key=str)[:5]}"
    made = Counter((table, key) for log in writers.logs for _, changed in log for table, key in changed)
    found = Counter((table, tuple(json.loads(key))) for table, key in
                    target_query(target, "SELECT target_table, key FROM cdc_audit_log WHERE op <> 'snapshot'"))
    wrong = sorted(((key, made[key], found[key]) for key in made.keys() | found.keys() if made[key] != found[key]),
                   key=str)
    assert not wrong, f"{len(wrong)} rows whose audit rows differ from the changes made to them " \
                      f"((table, key), changes, audit rows): {wrong[:10]}; {sum(made.values())} changes made, " \
                      f"{sum(found.values())} audited"
    if per_transaction:
        assert_each_transaction_once(target, tuple([(txid, len(changed)) for txid, changed in log]
                                                   for log in writers.logs), writers.changes())


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_under_four_busy_writers_loses_and_doubles_nothing(request, ws, mode):
    kind, capture, per_transaction = MODES[mode]
    source = make_source(request, ws, kind)
    target = ws.target if kind == "sqlite" else request.getfixturevalue("pg_databases")()
    shared = prepared(ws, source, target, capture)
    rng = random.Random(f"busy {mode}")
    writers, process = Writers(source, target, shared, seed=rng.randrange(10**6)), None
    try:
        checkpoints = kill_on_progress(ws, target, writers, rng)
        writers.finish()
        assert checkpoints == sorted(checkpoints), f"the checkpoint went back: {checkpoints}"
        process = serve(ws)
        catch_up_and_stop(ws, source, target, writers, process)
    finally:
        writers.stop.set()
        if process is not None and process.poll() is None:
            process.kill()
    assert_same_rows_and_one_audit_row_per_change(source, target, writers, per_transaction)
    # Meaningful only if kills landed mid-load (the last may come once all is applied: a fast catch-up).
    assert sum(0 < c < writers.changes() for c in checkpoints) >= 3, \
        f"the kills must land while the load is applied: checkpoints {checkpoints}, {writers.changes()} changes"


@pytest.mark.parametrize("mode", ["postgresql-logical", "mariadb-binlog"])
def test_target_restart_while_streaming_under_four_busy_writers(request, ws, own_pg_server, mode):
    """The target's server goes down (fast shutdown) under load for about two seconds: `cdc run`
    retries rather than exits, and catches up once it is back."""
    kind, capture, _ = MODES[mode]
    source, target = make_source(request, ws, kind), own_pg_server.url()
    shared = prepared(ws, source, target, capture)
    rng = random.Random(f"restart {mode}")
    writers, process = Writers(source, target, shared, seed=rng.randrange(10**6)), serve(ws)
    began = time.monotonic()
    try:
        before = applied(target)
        wait_for(lambda: applied(target) > before, 60, "the first changes to be applied", ws, process)
        logged = (ws.root / "run.log").stat().st_size
        own_pg_server.stop("fast")
        try:
            outage = time.monotonic()
            wait_for(lambda: "retrying" in run_log(ws, 200, logged), 60, "cdc run to say it retries", ws, process)
            time.sleep(max(0.0, 2 - (time.monotonic() - outage)))  # the outage lasts about two seconds
        finally:
            own_pg_server.start()
        down_at = applied(target)
        wait_for(lambda: applied(target) > down_at, 60, "changes applied after the restart", ws, process)
        wait_for(lambda: time.monotonic() - began > LOAD_SECONDS, LOAD_SECONDS + 5, "the end of the load", ws,
                 process)
        writers.finish()
        catch_up_and_stop(ws, source, target, writers, process)
    finally:
        writers.stop.set()
        if process.poll() is None:
            process.kill()
    assert_same_rows_and_one_audit_row_per_change(source, target, writers, per_transaction=True)
