"""SQLite -> SQLite end to end through the real CLI: random workloads, capture set-up, SIGTERM (exact values and
whole transactions, for every adapter: tests/compliance)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import workload


def audit_count(ws, where: str = "op != 'snapshot'") -> int:
    return ws.query(ws.target, f"SELECT count(*) FROM cdc_audit_log WHERE {where}")[0][0]


def assert_equal(ws):
    for table, order in (("entries", "id"), ("parties", "code, region")):
        assert ws.rows(ws.source, table, order) == ws.rows(ws.target, table, order), table


def test_5000_random_changes_arrive_exactly_once(ledger):
    ws = ledger
    workload.run(ws.source, 300, seed=1)
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    snapshot_audit = audit_count(ws)
    assert snapshot_audit == 0
    changes = workload.run(ws.source, 5000, seed=2)
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 0, result.stderr
    assert_equal(ws)
    assert audit_count(ws) == changes == 5000
    # The changelog is purged once applied, and status has nothing pending.
    assert ws.query(ws.source, "SELECT count(*) FROM _cdc_changelog") == [(0,)]
    assert '"pending": 0' in ws.cdc("status", "--json", str(ws.config)).stdout


def test_uninstall_removes_capture_and_nothing_else(ws):
    ws.sql(ws.source, "CREATE TABLE entries (id INTEGER PRIMARY KEY, amount NUMERIC(18,2));"
                      "CREATE TRIGGER users_own AFTER INSERT ON entries BEGIN SELECT 1; END;")
    ws.write_config("source: src\ntarget: dst\ntables: [entries]")
    before = ws.query(ws.source, "SELECT type, name FROM sqlite_master ORDER BY name")
    assert ws.cdc("install", str(ws.config)).returncode == 0
    installed = ws.query(ws.source, "SELECT name FROM sqlite_master WHERE name LIKE '_cdc%'")
    assert len(installed) >= 6  # changelog, epoch, consumers, three triggers
    result = ws.cdc("uninstall", str(ws.config))
    assert result.returncode == 0 and "removed" in result.stdout
    after = ws.query(ws.source, "SELECT type, name FROM sqlite_master ORDER BY name")
    # sqlite_sequence is SQLite's own and cannot be dropped; none of its rows is ours.
    assert [row for row in after if row[1] != "sqlite_sequence"] == before
    assert ws.query(ws.source, "SELECT count(*) FROM sqlite_sequence") == [(0,)]


def test_two_pairs_share_a_changelog_without_losing_each_others_changes(ws):
    ws.sql(ws.source, "CREATE TABLE entries (id INTEGER PRIMARY KEY, amount NUMERIC(18,2));")
    ws.config.write_text("connections:\n  src: sqlite:///source.db\n  a: sqlite:///a.db\n  b: sqlite:///b.db\n"
                         "pairs:\n  to_a: {source: src, target: a, tables: [entries]}\n"
                         "  to_b: {source: src, target: b, tables: [entries]}\n", encoding="utf-8")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, '5.00'); INSERT INTO entries VALUES (2, '6.00');")
    assert ws.cdc("run", "--once", "--pair", "to_a", str(ws.config)).returncode == 0
    assert ws.query(ws.source, "SELECT count(*) FROM _cdc_changelog") == [(2,)]  # to_b has not read them
    assert ws.cdc("run", "--once", "--pair", "to_b", str(ws.config)).returncode == 0
    assert ws.rows(ws.root / "a.db", "entries") == ws.rows(ws.root / "b.db", "entries") == [(1, 5), (2, 6)]
    assert ws.query(ws.source, "SELECT count(*) FROM _cdc_changelog") == [(0,)]


def test_sigterm_finishes_the_batch_and_exits_0(ledger):
    import signal
    import subprocess
    import sys
    import time

    ws = ledger
    process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ws.query(ws.target, "SELECT 1 FROM cdc_checkpoints WHERE snapshot IS NULL"):
            assert time.monotonic() < deadline and process.poll() is None, "the snapshot did not finish"
            time.sleep(0.1)
        changes = workload.run(ws.source, 500, seed=5, pause=0.002)
        while time.monotonic() < deadline:  # streaming: wait until it has caught up
            applied = ws.query(ws.target, "SELECT coalesce(max(changes_applied), 0) FROM cdc_checkpoints")[0][0]
            if applied == changes:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "changes applied" in out
    assert_equal(ws)
    assert audit_count(ws) == changes


def test_replace_through_a_unique_column_is_warned_of_and_captured_with_recursive_triggers(ws):
    """REPLACE removes the row holding the UNIQUE value; SQLite fires that row's delete trigger only
    under PRAGMA recursive_triggers, so doctor names the constraint and the way to capture it."""
    ws.sql(ws.source, "CREATE TABLE acct (id INTEGER PRIMARY KEY, konto TEXT UNIQUE, name TEXT); "
                      "INSERT INTO acct VALUES (1, '1920', 'Bank'), (2, '3000', 'Salg');")
    ws.write_config("""
        source: src
        target: dst
        tables: [acct]
    """)
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    doctor = ws.cdc("doctor", str(ws.config))
    assert "[WARN] acct: UNIQUE (konto): a REPLACE or INSERT OR REPLACE that removes another row through it is " \
           "captured only when the writing connection sets PRAGMA recursive_triggers = ON" in doctor.stdout, doctor.stdout
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    ws.sql(ws.source, "PRAGMA recursive_triggers = ON; REPLACE INTO acct VALUES (7, '3000', 'Salgsinntekt');")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    assert ws.rows(ws.target, "acct") == ws.rows(ws.source, "acct") == [(1, "1920", "Bank"), (7, "3000", "Salgsinntekt")]


def test_a_read_with_nothing_new_writes_nothing_to_the_source(ledger):
    """An idle pair reads once a poll interval: with no changelog row after its position it seals no
    epoch (a write that would wait in line for the lock with the application's writers)."""
    ws = ledger
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 1500, '1.00', 'NOK', NULL, NULL)")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    epoch = ws.query(ws.source, "SELECT n FROM _cdc_epoch")
    for _ in range(2):
        assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    assert ws.query(ws.source, "SELECT n FROM _cdc_epoch") == epoch
    ws.sql(ws.source, "UPDATE entries SET amount = '2.00' WHERE id = 1")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    assert ws.rows(ws.target, "entries") == ws.rows(ws.source, "entries")


def test_a_change_on_an_idle_pair_does_not_wait_for_the_poll_interval(ledger):
    """The idle wait looks at the changelog's newest id every 0.2 s: with poll_interval 30 a change
    still arrives within seconds, not after up to 30."""
    ws = ledger
    ws.config.write_text(ws.config.read_text() + "    poll_interval: 30\n")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ws.sql(ws.source, "INSERT INTO entries VALUES (6, 1500, '6.00', 'NOK', 'først', NULL)")
        deadline = time.monotonic() + 120
        while not ws.query(ws.target, "SELECT 1 FROM entries WHERE id = 6") and time.monotonic() < deadline:
            time.sleep(0.1)  # started (slowly, on a busy machine) and streaming
        time.sleep(2)  # read again, nothing: waiting
        ws.sql(ws.source, "INSERT INTO entries VALUES (7, 1500, '7.00', 'NOK', 'mens den venter', NULL)")
        deadline = time.monotonic() + 10
        while not ws.query(ws.target, "SELECT 1 FROM entries WHERE id = 7") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ws.query(ws.target, "SELECT count(*) FROM entries WHERE id = 7") == [(1,)], "waited for poll_interval"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read()
