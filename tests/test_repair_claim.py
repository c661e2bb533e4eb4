"""`cdc reconcile --repair` takes the pair's claim: it never writes while `cdc run` streams the pair
(a repair's stale read would overwrite a newer change for good), and a repair that lost the claim
writes nothing."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

from conftest import LEDGER_SCHEMA
from test_claims import running, wait_for

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
    later one), one short transaction each, until stopped."""

    def __init__(self, ws):
        self.ws, self.stop, self.count = ws, threading.Event(), 0
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        conn = sqlite3.connect(self.ws.source, timeout=30)
        rng = random.Random(7)
        ids = list(range(1, ROWS + 1))
        rng.shuffle(ids)
        try:
            for key in ids:
                if self.stop.is_set():
                    return
                with conn:
                    conn.execute("UPDATE entries SET amount = ? WHERE id = ?", (f"{rng.randint(1, 99999)}.{key % 100:02d}", key))
                self.count += 1
                time.sleep(0.002)
        finally:
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
    return {i: str(a) for i, a in ws.query(db, "SELECT id, CAST(amount AS TEXT) FROM entries")}


def test_a_repair_while_the_pair_runs_is_refused_and_loses_nothing(ws):
    """A background `cdc run` streams a writer's changes; a repair now exits 3 naming the run (host,
    pid, since) instead of writing rows it read before the run applied newer ones. On the code before
    the claim, the repair wrote its stale reads over changes the run had applied: amounts lost for good."""
    _pair(ws)
    run = _start_run(ws)
    writer = _Writer(ws)
    try:
        time.sleep(0.5)
        repair = ws.cdc("reconcile", "--repair", "--settle", "0", str(ws.config))
        time.sleep(0.5)
        writer.finish()
        # The run applies what is left; then every amount the writer set is in the target.
        wait_for(lambda: _amounts(ws, ws.target) == _amounts(ws, ws.source), timeout=60,
                 what="the run to apply every change (a change a repair overwrote is never applied again)")
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
