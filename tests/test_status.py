"""`cdc status` and the exit codes tell the truth: a failed pair next to a healthy one, parked changes,
a run killed without a word, and the lag in seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from test_claims import wait_for

TWO_PAIRS = """\
connections:
  src: sqlite:///source.db
  dst: sqlite:///target.db
  src2: sqlite:///source2.db
  dst2: sqlite:///target2.db
pairs:
  good:
    source: src
    target: dst
    tables: [entries]
    poll_interval: 0.1
  bad:
    source: src2
    target: dst2
    tables: [entries]
    poll_interval: 0.1
    on_error: {on_error}
"""
SCHEMA = "CREATE TABLE entries (id INTEGER PRIMARY KEY, amount NUMERIC(18,2) NOT NULL, memo TEXT);"


def two_pairs(ws, on_error: str = "stop"):
    ws.source2, ws.target2 = ws.root / "source2.db", ws.root / "target2.db"
    ws.sql(ws.source, SCHEMA)
    ws.sql(ws.source2, SCHEMA)
    ws.config.write_text(TWO_PAIRS.format(on_error=on_error), encoding="utf-8")
    for command in ("init", "install"):
        result = ws.cdc(command, str(ws.config))
        assert result.returncode == 0, result.stderr
    # The ledger refuses memos longer than 5 characters: a row the bad pair cannot write.
    ws.sql(ws.target2, "DROP TABLE entries; CREATE TABLE entries (id INTEGER PRIMARY KEY, amount NUMERIC(18,2) "
                       "NOT NULL, memo TEXT CHECK (length(memo) <= 5));")


def status(ws, *args):
    result = ws.cdc("status", "--json", *args, str(ws.config))
    return result.returncode, {row["pair"]: row for row in json.loads(result.stdout)}


def test_a_failed_pair_next_to_a_healthy_one_is_visible_and_the_run_exits_non_zero(ws):
    two_pairs(ws)
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 10.00, 'ok')")
    ws.sql(ws.source2, "INSERT INTO entries VALUES (1, 10.00, 'far too long')")
    log = ws.root / "run.log"
    with open(log, "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                                   stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        wait_for(lambda: "pair bad stopped" in log.read_text(), what="the bad pair to fail")
        ws.sql(ws.source, "INSERT INTO entries VALUES (2, 20.00, 'ok too')")
        wait_for(lambda: len(ws.rows(ws.target, "entries")) == 2, what="the good pair to go on")
        assert process.poll() is None, "the healthy pair keeps the process running"
        code, rows = status(ws)
        assert code == 1
        assert rows["bad"]["state"] == "failed" and "table entries key [1]" in rows["bad"]["error"]
        assert "CHECK constraint failed" in rows["bad"]["error"] and not rows["bad"]["healthy"]
        assert rows["good"]["state"] == "running" and rows["good"]["healthy"] and rows["good"]["lag_seconds"] == 0
        text = ws.cdc("status", "--pair", "bad", str(ws.config))
        assert text.returncode == 1 and "failed: table entries key [1]" in text.stdout, text.stdout
        assert ws.cdc("status", "--pair", "good", str(ws.config)).returncode == 0
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        assert process.returncode == 1, "a run in which a pair failed exits non-zero (Restart=on-failure)"
        assert "error: table entries key [1]" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    code, rows = status(ws)
    assert rows["good"]["state"] == "stopped" and rows["bad"]["state"] == "failed" and code == 1


def test_run_exits_non_zero_when_its_last_pair_stops(ws):
    two_pairs(ws)
    ws.sql(ws.source2, "INSERT INTO entries VALUES (1, 10.00, 'far too long')")
    result = subprocess.run([sys.executable, "-m", "cdc", "run", "--pair", "bad", str(ws.config)], cwd=ws.root,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "CHECK constraint failed" in result.stderr
    code, rows = status(ws, "--pair", "bad")
    assert code == 1 and rows["bad"]["state"] == "failed"
    # The row fixed at the source, a later good run clears the failure.
    ws.sql(ws.source2, "UPDATE entries SET memo = 'kort' WHERE id = 1")
    assert ws.cdc("run", "--once", "--pair", "bad", str(ws.config)).returncode == 0
    code, rows = status(ws, "--pair", "bad")
    assert code == 0 and rows["bad"]["state"] == "stopped" and rows["bad"]["error"] is None


def test_parked_changes_make_status_exit_non_zero(ws):
    two_pairs(ws, on_error="park")
    ws.sql(ws.source2, "INSERT INTO entries VALUES (1, 10.00, 'far too long'); INSERT INTO entries VALUES (2, 1, 'ok')")
    result = ws.cdc("run", "--once", "--pair", "bad", str(ws.config))
    assert result.returncode == 0 and "1 parked" not in result.stdout  # the snapshot parks without a count
    code, rows = status(ws, "--pair", "bad")
    assert code == 1 and rows["bad"]["dead_letters"] == 1 and not rows["bad"]["healthy"]
    text = ws.cdc("status", "--pair", "bad", str(ws.config)).stdout
    assert "dead letters 1 parked" in text


def test_a_killed_run_is_not_reported_as_running_and_lag_counts_seconds(ws):
    two_pairs(ws)
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 10.00, 'ok')")
    assert ws.cdc("run", "--once", "--pair", "good", str(ws.config)).returncode == 0
    process = subprocess.Popen([sys.executable, "-m", "cdc", "run", "--pair", "good", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: status(ws, "--pair", "good")[1]["good"]["state"] == "running", what="the run to start")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    code, rows = status(ws, "--pair", "good")
    assert rows["good"]["state"] == "not running" and "ended without a word" in rows["good"]["holder"]
    # Changes waiting while nothing runs: the lag grows from the last applied change's commit time.
    ws.sql(ws.source, "UPDATE entries SET amount = 11.00 WHERE id = 1")
    time.sleep(1.5)
    code, rows = status(ws, "--pair", "good")
    assert rows["good"]["pending"] == 1 and rows["good"]["lag_seconds"] is None  # nothing streamed yet: no time
    assert ws.cdc("run", "--once", "--pair", "good", str(ws.config)).returncode == 0
    ws.sql(ws.source, "UPDATE entries SET amount = 12.00 WHERE id = 1")
    time.sleep(1.5)
    code, rows = status(ws, "--pair", "good")
    assert code == 0 and rows["good"]["pending"] == 1 and rows["good"]["lag_seconds"] >= 1.5
    assert ws.cdc("run", "--once", "--pair", "good", str(ws.config)).returncode == 0
    assert status(ws, "--pair", "good")[1]["good"]["lag_seconds"] == 0
