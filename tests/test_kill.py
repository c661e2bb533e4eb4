"""SIGKILL `cdc run` at random moments while it snapshots and applies; nothing is lost or doubled."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

import workload


def kill_repeatedly(ws, rng: random.Random, until: threading.Event, progress: list) -> int:
    """Start `cdc run` and SIGKILL it at random moments until ``until`` is set; returns the kills."""
    kills = 0
    while not until.is_set() or kills < 3:
        assert ws.run_and_kill(rng.uniform(0.5, 1.5)), "cdc run ended on its own"
        kills += 1
        progress.append(ws.query(ws.target, "SELECT coalesce(max(changes_applied), 0) FROM cdc_checkpoints")[0][0])
    return kills


def test_sigkill_during_snapshot_and_streaming_loses_and_doubles_nothing(ledger):
    ws = ledger
    ws.write_config("""
        source: src
        target: dst
        capture: trigger
        tables: [entries, parties]
        batch_size: 7
        snapshot_chunk: 40
        poll_interval: 0.05
    """)
    rng = random.Random(20241125)
    workload.run(ws.source, 2000, seed=11)  # the snapshot: about a thousand rows in small chunks
    done, progress, changes = threading.Event(), [], []
    writer = threading.Thread(target=lambda: (changes.append(workload.run(ws.source, 5000, seed=12, pause=0.008)),
                                              done.set()))
    writer.start()
    kills = kill_repeatedly(ws, rng, done, progress)
    writer.join()
    final = ws.cdc("run", "--once", str(ws.config))
    assert final.returncode == 0, final.stderr
    assert kills >= 3 and progress == sorted(progress) and 0 < progress[len(progress) // 2] < changes[0], \
        f"kills must land while changes are being applied: {progress}"
    for table, order in (("entries", "id"), ("parties", "code, region")):
        assert ws.rows(ws.source, table, order) == ws.rows(ws.target, table, order), table
    # Every change after the snapshot's start has exactly one audit row (earlier ones are in the snapshot).
    audited, distinct = ws.query(ws.target, "SELECT count(*), count(DISTINCT source_position) FROM cdc_audit_log "
                                            "WHERE op != 'snapshot'")[0]
    assert audited == distinct, "a source change was applied twice"
    positions = [p for (p,) in ws.query(ws.target, "SELECT CAST(source_position AS INTEGER) FROM cdc_audit_log "
                                                   "WHERE op != 'snapshot' ORDER BY 1")]
    # Changelog ids count every source change from 1; those up to the snapshot's start are in the
    # snapshot, every later one must be audited exactly once: a gap-free run up to the last change.
    assert positions == list(range(positions[0], 2000 + changes[0] + 1))


def test_sigkill_during_the_snapshot_resumes_where_it_stopped(ledger):
    ws = ledger
    ws.write_config("""
        source: src
        target: dst
        tables: [entries, parties]
        snapshot_chunk: 200
    """)
    conn = __import__("sqlite3").connect(ws.source)
    with conn:
        conn.executemany("INSERT INTO entries VALUES (?, 1500, ?, 'NOK', 'Blåbær', NULL)",
                         [(i, f"{i}.{i % 100:02d}") for i in range(1, 60_001)])
    conn.close()
    rng, chunks_seen = random.Random(7), []
    chunks = "SELECT count(*) FROM cdc_audit_log WHERE op = 'snapshot'"
    for _ in range(3):  # each run killed a few chunks after it has moved on, however fast or slow the machine
        before = chunks_seen[-1] if chunks_seen else 0
        wanted = before + rng.randint(1, 20)
        run = subprocess.Popen([sys.executable, "-m", "cdc", "run", "--once", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while run.poll() is None and (not ws.target.exists() or ws.query(ws.target, chunks)[0][0] < wanted):
            time.sleep(0.005)
        run.kill()
        run.wait()
        chunks_seen.append(ws.query(ws.target, chunks)[0][0])
    assert len(chunks_seen) >= 2 and chunks_seen == sorted(chunks_seen) and chunks_seen[-1] < 300, chunks_seen
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    assert ws.rows(ws.source, "entries", "id") == ws.rows(ws.target, "entries", "id")
    # No chunk was applied twice: the rows the snapshot audit counts add up to the table.
    counted = ws.query(ws.target, "SELECT sum(json_extract(after, '$.rows')) FROM cdc_audit_log "
                                  "WHERE op = 'snapshot' AND target_table = 'entries'")[0][0]
    assert counted == 60_000
