"""`cdc reconcile --repair` takes the pair's claim: it never writes while `cdc run` streams the pair
(a repair's stale read would overwrite a newer change for good), and a repair that lost the claim
writes nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from conftest import LEDGER_SCHEMA
from test_claims import running, wait_for
from test_postgres_source import execute, logical_pair, pg_to_pg  # noqa: F401 - pg_to_pg is a fixture

from cdc import reconcile, registry, state
from cdc.config import load_config

ROWS = 2000


def _pair(ws, claim_timeout: float = 30) -> None:
    """entries(id 1..ROWS) synced once, then drifted in the target (memo) so a repair has work."""
    values = ", ".join(f"({i}, {1000 + i % 7}, {i}.00, 'NOK', 'm{i}', NULL)" for i in range(1, ROWS + 1))
    ws.sql(ws.source, LEDGER_SCHEMA + f"INSERT INTO entries VALUES {values};")
    ws.write_config(f"""
        source: src
        target: dst
        capture: trigger
        tables: [entries]
        batch_size: 20
        poll_interval: 0.02
        claim_timeout: {claim_timeout}
    """)
    for command in ("init", "install", "run"):
        result = ws.cdc(command, *(["--once"] if command == "run" else []), str(ws.config))
        assert result.returncode == 0, result.stderr
    ws.sql(ws.target, "UPDATE entries SET memo = 'drift'")


class _Writer:
    """Updates source rows' amounts in a random order, each row once (a change lost is never healed by a
    later one), one short transaction each, until stopped. ``update(key, amount)``: one such
    transaction (SQLite's source file when None)."""

    def __init__(self, ws, update=None, pause: float = 0.002):
        self.ws, self.stop, self.count = ws, threading.Event(), 0
        self.update, self.pause = update, pause
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        update, conn = self.update, None
        if update is None:
            conn = sqlite3.connect(self.ws.source, timeout=30)

            def update(key: int, amount: str) -> None:
                with conn:
                    conn.execute("UPDATE entries SET amount = ? WHERE id = ?", (amount, key))

        rng = random.Random(7)
        ids = list(range(1, ROWS + 1))
        rng.shuffle(ids)
        try:
            for key in ids:
                if self.stop.is_set():
                    return
                update(key, f"{rng.randint(1, 99999)}.{key % 100:02d}")
                self.count += 1
                time.sleep(self.pause)
        finally:
            if conn is not None:
                conn.close()

    def finish(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.count


def _start_run(ws) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: running(ws), what="`cdc run` to claim the pair")
    return process


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, process.communicate()[1]


def _amounts(ws, db) -> dict[int, str]:
    if isinstance(db, str):  # a PostgreSQL URL
        return {i: str(a) for i, a in execute(db, "SELECT id, amount::text FROM entries")}
    return {i: str(a) for i, a in ws.query(db, "SELECT id, CAST(amount AS TEXT) FROM entries")}


def _lost(ws, source_db=None, target_db=None) -> list[int]:
    """Rows whose amount in the target is not the source's once the run has had time to apply all."""
    deadline = time.monotonic() + 30
    while True:
        source, target = _amounts(ws, source_db or ws.source), _amounts(ws, target_db or ws.target)
        if source == target or time.monotonic() > deadline:
            return sorted(i for i in source if source[i] != target.get(i))
        time.sleep(0.2)


def test_a_repair_while_the_pair_runs_is_refused_and_loses_nothing(ws):
    """A background `cdc run` streams a writer's changes; a repair now exits 3 naming the run (host,
    pid, since) instead of writing rows it read before the run applied newer ones. Before the claim,
    the repair wrote its stale reads over changes the run had applied: amounts lost for good."""
    _pair(ws)
    run = _start_run(ws)
    writer = _Writer(ws)
    try:
        time.sleep(0.5)
        repair = ws.cdc("reconcile", "--repair", "--settle", "0", str(ws.config))
        time.sleep(0.5)
        writer.finish()
        lost = _lost(ws)
        assert not lost, f"{len(lost)} change(s) overwritten by the repair's stale reads: ids {lost[:20]}"
        assert repair.returncode == 3, repair.stdout + repair.stderr
        assert (f"pair p is running elsewhere (host {os.uname().nodename}, pid {run.pid}, since "
                in repair.stderr), repair.stderr
        assert "cdc reconcile --repair --wait" in repair.stderr and "Traceback" not in repair.stderr
        assert len(repair.stderr.strip().splitlines()) == 1, repair.stderr
        assert ws.query(ws.target, "SELECT count(*) FROM cdc_audit_log WHERE reason = 'repair'") == [(0,)]
        _stop(run)
    finally:
        writer.stop.set()
        if run.poll() is None:
            run.kill()


def test_a_repair_while_a_postgresql_logical_pair_streams_is_refused_and_loses_nothing(pg_to_pg):
    """The same on PostgreSQL -> PostgreSQL with logical capture: the repair exits 3 while `cdc run`
    streams; before the claim it overwrote changes the run had applied."""
    ws, source, target = pg_to_pg
    values = ", ".join(f"({i}, {1000 + i % 7}, {i}.00, 'NOK', 'm{i}', NULL)" for i in range(1, ROWS + 1))
    execute(source, f"INSERT INTO entries VALUES {values}")
    logical_pair(ws, source, target, "p", tables="[entries]", batch_size=20, poll_interval=0.02)
    for command in ("init", "install", "run"):
        result = ws.cdc(command, *(["--once"] if command == "run" else []), str(ws.config))
        assert result.returncode == 0, result.stderr
    execute(target, "UPDATE entries SET memo = 'drift'")
    run = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: execute(target, "SELECT count(*) FROM cdc_leases WHERE state = 'running'") == [(1,)],
             what="`cdc run` to claim the pair")
    writer = _Writer(ws, lambda key, amount: execute(source, "UPDATE entries SET amount = %s WHERE id = %s",
                                                     (amount, key)))
    try:
        time.sleep(0.5)
        repair = ws.cdc("reconcile", "--repair", "--settle", "0", str(ws.config))
        time.sleep(0.5)
        writer.finish()
        lost = _lost(ws, source, target)
        assert not lost, f"{len(lost)} change(s) overwritten by the repair's stale reads: ids {lost[:20]}"
        assert repair.returncode == 3, repair.stdout + repair.stderr
        assert f"pair p is running elsewhere (host {os.uname().nodename}, pid {run.pid}, since " in repair.stderr
        assert execute(target, "SELECT count(*) FROM cdc_audit_log WHERE reason = 'repair'") == [(0,)]
        _stop(run)
    finally:
        writer.stop.set()
        if run.poll() is None:
            run.kill()


def test_a_repair_waits_for_the_run_and_changes_made_meanwhile_are_applied_after(ws):
    """`--wait`: the repair waits while the run streams, repairs once it stops, while the writer goes
    on; the changes made during the repair (after its reads) are applied by the next run, over the
    repaired rows: the target ends equal to the source row by row."""
    _pair(ws)
    run = _start_run(ws)
    writer = _Writer(ws, pause=0.01)  # 2,000 changes take 20 s at least: they go on through the repair
    log = ws.root / "repair.log"
    try:
        with open(log, "w") as err:
            repair = subprocess.Popen([sys.executable, "-m", "cdc", "reconcile", "--repair", "--wait", "--settle", "0",
                                       "--format", "json", str(ws.config)], cwd=ws.root, stdout=subprocess.PIPE,
                                      stderr=err, text=True)
        wait_for(lambda: "waiting" in log.read_text(), what="the repair to say it waits")
        assert "is running elsewhere" in log.read_text() and repair.poll() is None
        assert ws.query(ws.target, "SELECT count(*) FROM cdc_audit_log WHERE reason = 'repair'") == [(0,)]
        _stop(run)
        out, _ = repair.communicate(timeout=180)
        assert repair.returncode == 1, log.read_text()  # differences found, and repaired
        assert json.loads(out)["repair"]["applied"] > 0, out
        assert writer.thread.is_alive(), "the writer stopped before the repair ended: nothing changed meanwhile"
        changed = writer.finish()
        assert changed > 100, changed
    finally:
        writer.stop.set()
        for process in (run, repair):
            if process.poll() is None:
                process.kill()
    drained = ws.cdc("run", "--once", str(ws.config))
    assert drained.returncode == 0, drained.stderr
    assert ws.rows(ws.target, "entries", "id") == ws.rows(ws.source, "entries", "id")
    assert ws.query(ws.target, "SELECT state FROM cdc_leases") == [("stopped",)]


def test_a_run_is_refused_while_a_repair_holds_the_pair(ws):
    """A repair holds the claim as a run does: `cdc run` exits 3 saying the pair is being repaired, and
    `cdc status` says so."""
    _pair(ws)
    with reconcile.claimed(load_config(str(ws.config)).pairs["p"]):
        second = ws.cdc("run", "--once", str(ws.config))
        status = ws.cdc("status", str(ws.config))
    assert second.returncode == 3, second.stderr
    assert (f"pair p is being repaired elsewhere (host {os.uname().nodename}, pid {os.getpid()}, since "
            in second.stderr), second.stderr
    assert "`cdc run --wait`" in second.stderr and "Traceback" not in second.stderr
    assert "streaming, repairing" in status.stdout, status.stdout
    assert ws.query(ws.target, "SELECT state FROM cdc_leases") == [("stopped",)]


@pytest.mark.parametrize("purpose, doing, state_word", [
    ("retry", "having dead letters retried", "retrying letters"),
    ("discard", "having dead letters discarded", "discarding"),
    ("resolve", "having a conflict resolved", "resolving")])
def test_the_dead_letter_and_conflict_commands_hold_the_pair_under_their_own_name(ws, purpose, doing, state_word):
    """They write under the pair's claim as a repair does; `cdc run` and `cdc status` name what holds it
    (they said "being repaired"), and a second such command is refused naming its own --wait."""
    _pair(ws)
    pair = load_config(str(ws.config)).pairs["p"]
    with reconcile.claimed(pair, purpose=purpose):
        second = ws.cdc("run", "--once", str(ws.config))
        status = ws.cdc("status", str(ws.config))
        with pytest.raises(state.ClaimHeldError) as again:
            with reconcile.claimed(pair, purpose=purpose):
                pass
    assert second.returncode == 3 and f"pair p is {doing} elsewhere (host" in second.stderr, second.stderr
    assert f"streaming, {state_word}" in status.stdout, status.stdout
    assert "nothing changed" in str(again.value) and f"`{state.claims.COMMANDS[purpose]} --wait`" in str(again.value)
    assert ws.query(ws.target, "SELECT state FROM cdc_leases") == [("stopped",)]


def test_a_repair_that_lost_the_pair_writes_nothing(ws):
    """A repair paused past the claim timeout loses the pair to a run; its write is fenced out whole."""
    _pair(ws, claim_timeout=1)
    pair = load_config(str(ws.config)).pairs["p"]
    report = reconcile.reconcile(pair, settle=0)
    assert report.tables[0].different == ROWS
    target = registry.adapter_for(pair.target.url).target(pair.target.url)
    try:
        target.take_claim("p", pair.claim_timeout, purpose="repair")
        plan = reconcile.repair_plan(pair, report)
        time.sleep(1.5)  # no heartbeat: the claim expires, as for a paused process
        taken = ws.cdc("run", "--once", str(ws.config))
        assert taken.returncode == 0, taken.stderr
        with pytest.raises(state.ClaimLostError, match="another process took the pair"):
            reconcile.apply_repair(pair, plan, target)
    finally:
        target.close()
    assert ws.query(ws.target, "SELECT count(*) FROM entries WHERE memo = 'drift'") == [(ROWS,)]
    assert ws.query(ws.target, "SELECT count(*) FROM cdc_audit_log WHERE reason = 'repair'") == [(0,)]


def test_a_repair_leaves_a_failed_pair_failed(ws):
    """The repair's claim row is put back as found: a pair that failed still shows its error."""
    _pair(ws)
    ws.sql(ws.target, "UPDATE cdc_leases SET state = 'failed', error = 'target: disk full', error_at = '2026-01-01'")
    repaired = ws.cdc("reconcile", "--repair", "--settle", "0", str(ws.config))
    assert repaired.returncode == 1 and "repair applied 2000 upsert(s)" in repaired.stdout, repaired.stderr
    assert ws.query(ws.target, "SELECT count(*) FROM entries WHERE memo = 'drift'") == [(0,)]
    status = ws.cdc("status", str(ws.config))
    assert status.returncode == 1 and "failed: target: disk full" in status.stdout, status.stdout
