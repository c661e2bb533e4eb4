"""PostgreSQL as a source (capture `logical`, pgoutput): PG -> PG and PG -> SQLite."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal

import psycopg
import pytest

import workload

LEDGER = """
CREATE TABLE entries (id BIGINT PRIMARY KEY, account INTEGER NOT NULL, amount NUMERIC(18,2) NOT NULL,
    currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at TIMESTAMP);
CREATE TABLE parties (code VARCHAR(10) NOT NULL, region INTEGER NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (code, region));
"""


def execute(url: str, sql: str, params=None) -> list:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def logical_pair(ws, source: str, target: str, name: str, tables: str = "[entries, parties]", **options) -> None:
    extra = "".join(f"    {k}: {v}\n" for k, v in options.items())
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  {name}:\n    source: src\n"
                         f"    target: dst\n    capture: logical\n    tables: {tables}\n{extra}", encoding="utf-8")


def cdc_ok(ws, *args):
    result = ws.cdc(*args, str(ws.config))
    assert result.returncode == 0, result.stderr
    return result


def rows(url: str, table: str, order: str) -> list:
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        found = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
        conn.close()
        return [tuple(Decimal(repr(v)).normalize() if isinstance(v, float) else v for v in r) for r in found]
    return [tuple(v.normalize() if isinstance(v, Decimal) else (str(v) if isinstance(v, dt.datetime) else v)
                  for v in r) for r in execute(url, f"SELECT * FROM {table} ORDER BY {order}")]


def slot(url: str, name: str):
    return execute(url, "SELECT restart_lsn - '0/0'::pg_lsn, confirmed_flush_lsn - '0/0'::pg_lsn, "
                        "pg_current_wal_lsn() - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                   (f"cdc_{name}",))[0]


@pytest.fixture
def pg_to_pg(ws, pg_databases):
    source, target = pg_databases(), pg_databases()
    execute(source, LEDGER)
    return ws, source, target


def test_exact_types_from_postgresql_to_postgresql(pg_to_pg):
    ws, source, target = pg_to_pg
    execute(source, "CREATE TABLE docs (id UUID PRIMARY KEY, amount NUMERIC(30,10), at TIMESTAMPTZ, day DATE, "
                    "body JSONB, raw BYTEA, flag BOOLEAN, note TEXT)")
    logical_pair(ws, source, target, "types", tables="[docs]")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    first = (uuid.uuid4(), Decimal("12345678901234567890.0123456789"), dt.datetime(2024, 3, 31, 22, 30, tzinfo=dt.timezone.utc),
             dt.date(2024, 2, 29), '{"konto": 1500, "tekst": "Blåbær ☕"}', b"\x00\xff\x10", True, "Blåbærsyltetøy AS")
    execute(source, "INSERT INTO docs VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", first)
    cdc_ok(ws, "run", "--once")  # the snapshot
    second = (uuid.uuid4(), Decimal("-0.0000000001"), dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
              dt.date(1999, 12, 31), '[1, 2.5, "x"]', b"", False, "Ærlig ☕")
    execute(source, "INSERT INTO docs VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", second)
    execute(source, "UPDATE docs SET amount = amount + 1, note = note || ' endret' WHERE id = %s", (first[0],))
    cdc_ok(ws, "run", "--once")  # the stream
    assert execute(source, "SELECT * FROM docs ORDER BY id") == execute(target, "SELECT * FROM docs ORDER BY id")
    types = dict(execute(target, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'docs'"))
    assert types == {"id": "uuid", "amount": "numeric", "at": "timestamp with time zone", "day": "date",
                     "body": "jsonb", "raw": "bytea", "flag": "boolean", "note": "text"}
    assert "[  OK] target synchronous_commit = on" in cdc_ok(ws, "doctor").stdout
    database = target.rsplit("/", 1)[1]
    execute(target, f'ALTER DATABASE "{database}" SET synchronous_commit = off')
    doctor = ws.cdc("doctor", str(ws.config))
    assert doctor.returncode == 1 and "[FAIL] target synchronous_commit = off: a crash can lose commits" in doctor.stdout


def large_text_changes(url: str, count: int, seed: int, log: list) -> int:
    """Inserts and updates of large (TOASTed) texts, most updates leaving the text unchanged."""
    rng, done = random.Random(seed), 0
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(1, count + 1):
            with conn.transaction():
                if i % 5 == 1:
                    conn.execute("INSERT INTO docs VALUES (%s, 0, %s)", (i, f"Bilag {i} æøå " * rng.randint(2000, 9000)))
                elif i % 5 == 4:
                    conn.execute("UPDATE docs SET body = body || ' tillegg' WHERE id = %s", ((i - 1) // 5 * 5 + 1,))
                else:  # every statement touches exactly one row: the last document inserted
                    conn.execute("UPDATE docs SET counter = counter + 1 WHERE id = %s", ((i - 1) // 5 * 5 + 1,))
                log.append((conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0], 1))
            done += 1
            time.sleep(0.01)
    return done


def test_random_changes_with_sigkill_postgresql_to_postgresql(pg_to_pg):
    ws, source, target = pg_to_pg
    execute(source, "CREATE TABLE docs (id INT PRIMARY KEY, counter INT NOT NULL, body TEXT NOT NULL)")
    logical_pair(ws, source, target, "kill", tables="[entries, parties, docs]", batch_size=7, poll_interval=0.05)
    workload.run(source, 500, seed=41)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    before = slot(source, "kill")
    done, changes, logs = threading.Event(), [], ([], [])
    writers = [threading.Thread(target=lambda: changes.append(workload.run(source, 6000, seed=42, pause=0.01,
                                                                             log=logs[0]))),
               threading.Thread(target=lambda: changes.append(large_text_changes(source, 300, seed=43, log=logs[1])))]
    for writer in writers:
        writer.start()
    watcher = threading.Thread(target=lambda: ([w.join() for w in writers], done.set()))
    watcher.start()
    ws.kill_while(lambda: not done.is_set(), 5, 0.8, 1.8)
    watcher.join()
    cdc_ok(ws, "run", "--once")
    for table, order in (("entries", "id"), ("parties", "code, region"), ("docs", "id")):
        assert rows(source, table, order) == rows(target, table, order), table
    assert_each_transaction_once(target, logs, sum(changes))
    # restart_lsn moves when decoding passes a running-transactions record: CHECKPOINT writes one.
    execute(source, "CHECKPOINT")
    cdc_ok(ws, "run", "--once")
    after = slot(source, "kill")
    assert after[0] > before[0] and after[1] > before[1], "the slot must advance with the checkpoint"


def assert_each_transaction_once(target: str, logs: tuple[list, ...], total: int) -> None:
    """Each writer's transactions: a first run seen by the initial snapshot, then every later one
    streamed with exactly one audit row per change (no gap, no double, nothing else)."""
    audited = dict(execute(target, "SELECT source_txid, count(*) FROM cdc_audit_log WHERE op <> 'snapshot' "
                                   "GROUP BY source_txid"))
    assert sum(n for log in logs for _, n in log) == total
    streamed = 0
    for log in logs:
        flags = [xid in audited for xid, _ in log]
        assert flags == sorted(flags), "a transaction after a streamed one is missing from the audit"
        for xid, count in log:
            if xid in audited:
                assert audited[xid] == count, f"transaction {xid}: {audited[xid]} audit rows for {count} changes"
                streamed += 1
    assert streamed == len(audited), "audit rows for transactions no writer made"
    assert streamed > 0


def test_postgresql_to_sqlite_with_unchanged_toast(ws, pg_url):
    execute(pg_url, LEDGER + "CREATE TABLE notes (id INT PRIMARY KEY, counter INT, body TEXT);")
    target = f"sqlite:///{ws.root / 'ledger.db'}"
    logical_pair(ws, pg_url, target, "toast", tables="[entries, notes]")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    big = "Blåbærsyltetøy " * 20_000  # ~300 kB: stored out of line (TOAST), compressed
    execute(pg_url, "INSERT INTO notes VALUES (1, 0, %s)", (big,))
    cdc_ok(ws, "run", "--once")
    execute(pg_url, "UPDATE notes SET counter = counter + 1 WHERE id = 1")  # body is unchanged TOAST
    execute(pg_url, "INSERT INTO entries VALUES (1, 1500, 0.10, 'NOK', 'Blåbærsyltetøy AS', '2024-01-31 23:59:59')")
    cdc_ok(ws, "run", "--once")
    assert rows(target, "notes", "id") == [(1, 1, big)]
    assert rows(target, "entries", "id") == [(1, 1500, Decimal("0.1"), "NOK", "Blåbærsyltetøy AS", "2024-01-31 23:59:59")]


def test_idle_pair_releases_wal_on_heartbeat(ws, pg_url):
    execute(pg_url, LEDGER + "CREATE TABLE busy (id SERIAL PRIMARY KEY, filler TEXT);")
    logical_pair(ws, pg_url, f"sqlite:///{ws.root / 't.db'}", "idle")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    for _ in range(20):  # WAL from a table the pair does not capture
        execute(pg_url, "INSERT INTO busy (filler) SELECT repeat('x', 1000) FROM generate_series(1, 500)")
    execute(pg_url, "CHECKPOINT")  # logs running transactions, which lets restart_lsn move
    restart, confirmed, current = slot(pg_url, "idle")
    assert current - confirmed > 5_000_000 and current - restart > 5_000_000
    for _ in range(5):  # restart_lsn follows once decoding passes a moment with no transaction open
        cdc_ok(ws, "run", "--once")
        restart, confirmed, current_after = slot(pg_url, "idle")
        if restart >= current - 1_000_000:
            break
        execute(pg_url, "CHECKPOINT")
    assert confirmed >= current and restart >= current - 1_000_000, (restart, confirmed, current)
    status = cdc_ok(ws, "status").stdout
    assert "bytes of WAL behind" in status
    assert "checkpoint  0/" in status  # an LSN as PostgreSQL writes it
    doctor = ws.cdc("doctor", str(ws.config))
    assert doctor.returncode == 0, doctor.stdout
    for line in ("[  OK] wal_level = logical", "[  OK] entries: REPLICA IDENTITY DEFAULT (primary key)",
                 "[  OK] slot cdc_idle: holds", "[INFO] entries: 3 column(s) may be TOASTed",
                 "of max_wal_senders 20 in use (a run needs one)"):
        assert line in doctor.stdout, doctor.stdout


def test_dropped_slot_and_dropped_column_stop_with_clear_messages(ws, pg_url):
    execute(pg_url, LEDGER)
    logical_pair(ws, pg_url, f"sqlite:///{ws.root / 't.db'}", "drift")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    execute(pg_url, "ALTER TABLE entries ADD COLUMN extra TEXT")  # a new nullable column: tolerated
    execute(pg_url, "INSERT INTO entries VALUES (1, 1500, 1.00, 'NOK', 'a', NULL, 'ignored')")
    assert "1 changes applied" in cdc_ok(ws, "run", "--once").stdout
    # Dropped while the pair runs: the relation message no longer has the column.
    process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    execute(pg_url, "ALTER TABLE entries DROP COLUMN memo")
    execute(pg_url, "INSERT INTO entries VALUES (2, 1500, 2.00, 'NOK', NULL, 'x')")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "Traceback" not in err
    # Dropped while it streams (the relation message), or before it got there on a busy machine (start-up check).
    assert ("source table entries: column 'memo' was dropped or renamed while pair drift ran" in err
            or "source table entries has no column 'memo', which target table entries has" in err), err
    # Dropped while it was stopped: found when the pair starts.
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "source table entries has no column 'memo', which target table entries has" in result.stderr
    assert rows(f"sqlite:///{ws.root / 't.db'}", "entries", "id")[-1][0] == 1  # nothing after it applied
    execute(pg_url, "ALTER TABLE entries ADD COLUMN memo VARCHAR(200)")  # the DBA puts it back
    execute(pg_url, "SELECT pg_drop_replication_slot('cdc_drift')")
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 1
    assert "replication slot cdc_drift does not exist" in result.stderr and "--resnapshot" in result.stderr
    execute(pg_url, "INSERT INTO entries VALUES (3, 1920, 3.00, 'NOK', NULL, 'x', 'lost with the slot')")
    cdc_ok(ws, "install")
    cdc_ok(ws, "run", "--once", "--resnapshot")
    assert [r[0] for r in rows(f"sqlite:///{ws.root / 't.db'}", "entries", "id")] == [1, 2, 3]


def test_table_without_primary_key_needs_key_and_full_identity(ws, pg_url):
    execute(pg_url, "CREATE TABLE journal (voucher INT NOT NULL, line INT NOT NULL, amount NUMERIC(18,2))")
    (ws.root / "map.yaml").write_text("tables:\n  journal:\n    key: [voucher, line]\n", encoding="utf-8")
    ws.config.write_text(f"connections:\n  src: {pg_url}\n  dst: sqlite:///t.db\npairs:\n  pk:\n    source: src\n"
                         "    target: dst\n    mapping: map.yaml\n", encoding="utf-8")
    result = ws.cdc("install", str(ws.config))
    assert result.returncode == 1
    assert "run ALTER TABLE journal REPLICA IDENTITY FULL" in result.stderr
    execute(pg_url, "ALTER TABLE journal REPLICA IDENTITY FULL")
    for command in ("install", "init"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    execute(pg_url, "INSERT INTO journal VALUES (1, 1, 10.00), (1, 2, -10.00); DELETE FROM journal WHERE line = 1;")
    cdc_ok(ws, "run", "--once")
    assert rows(f"sqlite:///{ws.root / 't.db'}", "journal", "voucher, line") == [(1, 2, Decimal("-10"))]
    result = cdc_ok(ws, "uninstall")
    assert "removed replication slot cdc_pk, publication cdc_pk" in result.stdout
    assert execute(pg_url, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'cdc_pk'") == [(0,)]


def test_wal_level_replica_is_explained(ws):
    from pgserver import LocalCluster

    cluster = LocalCluster({"wal_level": "replica", "max_wal_senders": "10"})
    try:
        execute(cluster.url(), LEDGER)
        logical_pair(ws, cluster.url(), "sqlite:///t.db", "replica")
        result = ws.cdc("install", str(ws.config))
        assert result.returncode == 1
        assert ("wal_level is 'replica'; logical capture needs 'logical': run ALTER SYSTEM SET wal_level = logical; "
                "and restart PostgreSQL") in result.stderr
        doctor = ws.cdc("doctor", str(ws.config))
        assert doctor.returncode == 1
        assert ("[FAIL] wal_level = replica: set it with ALTER SYSTEM SET wal_level = logical; and restart "
                "PostgreSQL") in doctor.stdout
        assert "[WARN] replication slot cdc_replica does not exist yet: run `cdc install CONFIG`" in doctor.stdout
    finally:
        cluster.remove()


def test_large_transactions_take_the_copy_path(pg_to_pg):
    ws, source, target = pg_to_pg
    execute(source, "CREATE TABLE docs (id INT PRIMARY KEY, body JSONB, amount NUMERIC(12,2))")
    logical_pair(ws, source, target, "bulk", tables="[entries, docs]", batch_size=5000)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    execute(source, "INSERT INTO docs SELECT g, jsonb_build_object('n', g, 'tekst', 'æøå'), g / 100.0 "
                    "FROM generate_series(1, 1000) g")
    execute(source, "INSERT INTO entries SELECT g, 1500, g / 100.0, 'NOK', 'Blåbær', NULL FROM generate_series(1, 800) g")
    # One transaction: every row updated twice (the same key twice in one COPY run), then 300 deleted.
    # 'infinity' has no Python datetime: binary COPY cannot carry it, the run goes again row by row.
    execute(source, "BEGIN; UPDATE entries SET amount = amount + 1; "
                    "UPDATE entries SET memo = 'to ganger', booked_at = CASE WHEN id = 7 THEN 'infinity'::timestamp END; "
                    "DELETE FROM entries WHERE id > 500; UPDATE docs SET body = body || '{\"x\": 1}'; COMMIT;")
    result = cdc_ok(ws, "run", "--once")
    assert "4700 changes applied" in result.stdout
    assert rows(source, "docs", "id") == rows(target, "docs", "id")
    entries = "SELECT id, account, amount, currency, memo, booked_at::text FROM entries ORDER BY id"
    assert execute(source, entries) == execute(target, entries)
    assert execute(target, "SELECT booked_at::text FROM entries WHERE id = 7") == [("infinity",)]
    assert execute(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'") == [(4700,)]


def test_sigkill_during_a_bulk_snapshot_resumes_without_doubles(pg_to_pg):
    ws, source, target = pg_to_pg
    execute(source, "INSERT INTO entries SELECT g, 1500, g / 100.0, 'NOK', 'Blåbær ' || g, NULL "
                    "FROM generate_series(1, 300000) g")
    logical_pair(ws, source, target, "bulksnap", snapshot_chunk=5000)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    seen = []
    for _ in range(3):  # each run killed as soon as the copy has moved on: mid-copy, however slow the machine
        count = seen[-1] if seen else 0
        run = subprocess.Popen([sys.executable, "-m", "cdc", "run", "--once", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while run.poll() is None and execute(target, "SELECT count(*) FROM entries")[0][0] == count:
            time.sleep(0.01)
        run.kill()
        run.wait()
        seen.append(execute(target, "SELECT count(*) FROM entries")[0][0])
    assert any(0 < count < 300000 for count in seen) and seen == sorted(seen), seen
    cdc_ok(ws, "run", "--once")
    assert rows(source, "entries", "id") == rows(target, "entries", "id")
    counted = execute(target, "SELECT sum((after::jsonb ->> 'rows')::int) FROM cdc_audit_log "
                              "WHERE op = 'snapshot' AND target_table = 'entries'")
    assert counted == [(300000,)]  # every chunk exactly once


def test_bulk_snapshot_falls_back_to_rows_when_the_target_refuses_one(pg_to_pg):
    ws, source, target = pg_to_pg
    execute(source, "INSERT INTO entries SELECT g, 1500, g, 'NOK', CASE WHEN g = 7 THEN NULL ELSE 'ok' END, NULL "
                    "FROM generate_series(1, 50) g")
    # The DBA's own ledger table: same types, but memo is required.
    execute(target, LEDGER.replace("memo VARCHAR(200)", "memo VARCHAR(200) NOT NULL"))
    # Whole before images: conflicts are found by them, not by row hashes (which the copy stores row by row).
    execute(source, "ALTER TABLE entries REPLICA IDENTITY FULL")
    logical_pair(ws, source, target, "fallback", on_error="park")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    result = cdc_ok(ws, "run", "--once")
    assert "copying the chunk row by row" in result.stderr
    assert execute(target, "SELECT count(*) FROM entries") == [(49,)]
    assert execute(target, "SELECT key, column_name FROM cdc_dead_letters") == [("[7]", "memo")]


def test_timestamp_capture_from_postgresql(ws, pg_url):
    execute(pg_url, "CREATE TABLE products (sku TEXT PRIMARY KEY, price NUMERIC(12,2) NOT NULL, "
                    "updated_at TIMESTAMPTZ NOT NULL, deleted BOOLEAN NOT NULL DEFAULT false);"
                    "INSERT INTO products VALUES ('A-1', 89.90, '2024-05-01 10:00:00+02', false);")
    ws.config.write_text(f"connections:\n  src: {pg_url}\n  dst: sqlite:///t.db\npairs:\n  ts:\n    source: src\n"
                         "    target: dst\n    capture: timestamp\n    tables: [products]\n"
                         "    timestamp: {column: updated_at, soft_delete: deleted, overlap_seconds: 30}\n",
                         encoding="utf-8")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    # Same timestamp as the watermark, and 10 s older: both inside the overlap window.
    execute(pg_url, "INSERT INTO products VALUES ('A-2', 45.00, '2024-05-01 10:00:00+02', false), "
                    "('A-3', 12.50, '2024-05-01 09:59:50+02', false)")
    assert "2 changes applied" in cdc_ok(ws, "run", "--once").stdout
    assert "0 changes applied" in cdc_ok(ws, "run", "--once").stdout
    execute(pg_url, "UPDATE products SET deleted = true, updated_at = '2024-05-02 08:00:00+02' WHERE sku = 'A-1'")
    cdc_ok(ws, "run", "--once")
    assert rows(f"sqlite:///{ws.root / 't.db'}", "products", "sku") == [
        ("A-2", Decimal("45"), "2024-05-01 08:00:00+00:00", 0), ("A-3", Decimal("12.5"), "2024-05-01 07:59:50+00:00", 0)]


def test_a_transaction_larger_than_a_batch_is_streamed_in_parts_and_applied_whole(pg_to_pg):
    ws, source, target = pg_to_pg
    execute(source, "INSERT INTO entries SELECT g, 1500, 1.00, 'NOK', NULL, NULL FROM generate_series(1, 40000) g")
    logical_pair(ws, source, target, "huge", batch_size=500)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    execute(source, "UPDATE entries SET amount = amount + 1")  # one transaction of 40,000 changes
    rng = random.Random(11)
    for _ in range(3):  # SIGKILL while the parts are being applied: never half a transaction
        ws.run_and_kill(rng.uniform(0.8, 1.6), once=True)
        assert execute(target, "SELECT DISTINCT amount FROM entries") in ([(Decimal("1.00"),)], [(Decimal("2.00"),)])
    result = cdc_ok(ws, "run", "--once")
    assert rows(source, "entries", "id") == rows(target, "entries", "id")
    assert execute(target, "SELECT count(*) FROM cdc_audit_log WHERE op = 'update'") == [(40000,)]
    assert "in 0 target transactions" in result.stdout or "40000 changes applied in 1 target" in result.stdout


def concurrent_updates(url: str, transactions: int, seed: int) -> int:
    """Updates of random existing rows, racing another writer for the same rows; returns rows changed."""
    rng, changed = random.Random(seed), 0
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(transactions):
            ids = [r[0] for r in conn.execute("SELECT id FROM entries ORDER BY random() LIMIT 3")]
            try:
                with conn.transaction():
                    done = sum(conn.execute("UPDATE entries SET amount = amount + 0.01, memo = %s WHERE id = %s",
                                            (f"rask {rng.random():.6f}", row_id)).rowcount for row_id in ids)
            except psycopg.errors.DeadlockDetected:
                done = 0  # the other writer holds these rows in another order: rolled back, nothing to count
            changed += done
            time.sleep(0.005)
    return changed


def test_trigger_capture_with_racing_writers_and_sigkill(pg_to_pg):
    ws, source, target = pg_to_pg
    logical_pair(ws, source, target, "trig", batch_size=50, poll_interval=0.05)
    ws.config.write_text(ws.config.read_text().replace("capture: logical", "capture: trigger"))
    workload.run(source, 800, seed=51)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")  # the snapshot, before the writers start: every later change is audited
    changes = []
    writers = [threading.Thread(target=lambda: changes.append(workload.run(source, 3000, seed=52, pause=0.005))),
               threading.Thread(target=lambda: changes.append(concurrent_updates(source, 400, seed=53)))]
    for writer in writers:
        writer.start()
    rng = random.Random(6)
    while any(w.is_alive() for w in writers):
        ws.run_and_kill(rng.uniform(0.8, 1.6))
    cdc_ok(ws, "run", "--once")
    for table, order in (("entries", "id"), ("parties", "code, region")):
        assert rows(source, table, order) == rows(target, table, order), table
    assert execute(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'") == [(sum(changes),)]
    assert execute(source, "SELECT count(*) FROM _cdc_changelog") == [(0,)]  # purged once applied
    doctor = cdc_ok(ws, "doctor").stdout
    for table in ("entries", "parties"):
        assert f"[  OK] {table}: capture triggers installed" in doctor, doctor
    # A transaction left open holds capture back: doctor names it (threshold lowered for the test).
    from cdc import commands
    from cdc.adapters.postgres import trigger

    with psycopg.connect(source) as idle:
        idle.execute("UPDATE entries SET memo = 'venter' WHERE id = (SELECT min(id) FROM entries)")
        xid = idle.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        time.sleep(1.2)
        trigger.OLD_TRANSACTION_SECONDS = 1
        lines = "\n".join(commands.doctor(str(ws.config))[0].lines)
        trigger.OLD_TRANSACTION_SECONDS = 300
        idle.rollback()
    assert f"[WARN] transaction {xid} (pid " in lines and "nothing committed after it started is applied" in lines
    assert "removed trigger on entries, trigger on parties, changelog _cdc_changelog" in cdc_ok(ws, "uninstall").stdout


def test_initial_snapshot_joins_the_slot_without_overlap(pg_to_pg):
    """Changes made between `cdc install` and the first run are in the snapshot, not streamed again."""
    ws, source, target = pg_to_pg
    logical_pair(ws, source, target, "join", tables="[entries]")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    execute(source, "INSERT INTO entries SELECT g, 1500, g / 100.0, 'NOK', 'før', NULL FROM generate_series(1, 50) g")
    execute(source, "UPDATE entries SET amount = amount + 1 WHERE id <= 10")
    cdc_ok(ws, "run", "--once")
    assert rows(source, "entries", "id") == rows(target, "entries", "id")
    assert execute(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'") == [(0,)]
    execute(source, "UPDATE entries SET memo = 'etter' WHERE id = 3")
    cdc_ok(ws, "run", "--once")
    assert execute(target, "SELECT op, key FROM cdc_audit_log WHERE op <> 'snapshot'") == [("update", "[3]")]
    assert execute(target, "SELECT memo FROM entries WHERE id = 3") == [("etter",)]


def test_generated_columns_are_read_from_the_table_under_logical_capture(pg_to_pg):
    """pgoutput does not send generated columns (before PostgreSQL 18): each change reads their
    values from the table, as for an unchanged TOAST value; the pair used to stop at the first
    update saying the column was dropped."""
    ws, source, target = pg_to_pg
    execute(source, "CREATE TABLE lines (id INT PRIMARY KEY, qty NUMERIC(12,3) NOT NULL, price NUMERIC(12,2) NOT NULL, "
                    "amount NUMERIC(24,5) GENERATED ALWAYS AS (qty * price) STORED)")
    execute(source, "INSERT INTO lines (id, qty, price) VALUES (1, 2, 10.50), (2, 1, 3.10)")
    copied = copy_then_stream(ws, source, target, "lines",
                              "INSERT INTO lines (id, qty, price) VALUES (3, 0.5, 99.99); UPDATE lines SET qty = 4 "
                              "WHERE id = 1; DELETE FROM lines WHERE id = 2")
    assert [r[3] for r in copied] == [Decimal("42"), Decimal("49.995")]


def copy_then_stream(ws, source: str, target: str, table: str, changes: str) -> list:
    """A logical pair of ``table`` (keyed by id) copied, then ``changes`` streamed: the target's rows,
    checked equal to the source's."""
    logical_pair(ws, source, target, table, tables=f"[{table}]")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    execute(source, changes)
    cdc_ok(ws, "run", "--once")
    assert rows(source, table, "id") == rows(target, table, "id")
    return rows(target, table, "id")


def test_a_partitioned_table_is_captured_under_its_own_name(pg_to_pg):
    """Its changes come from its partitions: the publication publishes them as the table's own, so
    `cdc install`, `cdc status` and `cdc run` agree that capture covers it."""
    ws, source, target = pg_to_pg
    execute(source, "CREATE TABLE bilag (id INT, year INT, amount NUMERIC(14,2), PRIMARY KEY (id, year)) "
                    "PARTITION BY LIST (year); CREATE TABLE bilag_2025 PARTITION OF bilag FOR VALUES IN (2025); "
                    "CREATE TABLE bilag_2026 PARTITION OF bilag FOR VALUES IN (2026)")
    execute(source, "INSERT INTO bilag VALUES (1, 2025, 10.00), (2, 2026, 20.00)")
    copied = copy_then_stream(ws, source, target, "bilag", "INSERT INTO bilag VALUES (3, 2026, 30.00); "
                              "UPDATE bilag SET amount = 11.00 WHERE id = 1; DELETE FROM bilag WHERE id = 2")
    assert copied == [(1, 2025, Decimal("11")), (3, 2026, Decimal("30"))]
    assert ws.cdc("status", str(ws.config)).returncode == 0


def test_truncate_under_trigger_capture_stops_the_pair(pg_to_pg):
    """TRUNCATE fires no row trigger: a statement trigger logs it and the pair stops there, as logical
    capture does, instead of keeping every row the source no longer has."""
    ws, source, target = pg_to_pg
    execute(source, "INSERT INTO entries VALUES (1, 1500, 1.00, 'NOK', 'a', NULL), (2, 1500, 2.00, 'NOK', 'b', NULL)")
    logical_pair(ws, source, target, "trunc", tables="[entries]")
    ws.config.write_text(ws.config.read_text().replace("capture: logical", "capture: trigger"))
    for command in ("init", "install", "run"):
        cdc_ok(ws, command, *(["--once"] if command == "run" else []))
    execute(source, "TRUNCATE entries; INSERT INTO entries VALUES (5, 1500, 5.00, 'NOK', 'etter', NULL)")
    run = ws.cdc("run", "--once", str(ws.config))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "pair trunc: TRUNCATE of entries at the source" in run.stderr and "--resnapshot" in run.stderr, run.stderr
    assert [r[0] for r in rows(target, "entries", "id")] == [1, 2]  # nothing after it applied
    assert ws.cdc("status", str(ws.config)).returncode == 1
    cdc_ok(ws, "run", "--once", "--resnapshot")
    repair = ws.cdc("reconcile", "--repair", str(ws.config))
    assert "repair applied 0 upsert(s) and 2 delete(s)" in repair.stdout, repair.stdout + repair.stderr
    assert rows(target, "entries", "id") == rows(source, "entries", "id")


def test_trigger_capture_on_an_idle_pair_does_not_wait_for_the_poll_interval(pg_to_pg):
    """The idle wait looks at the changelog's id sequence every 0.2 s: with poll_interval 30 a change
    still arrives within seconds."""
    ws, source, target = pg_to_pg
    logical_pair(ws, source, target, "idle", tables="[entries]", poll_interval=30)
    ws.config.write_text(ws.config.read_text().replace("capture: logical", "capture: trigger"))
    for command in ("init", "install", "run"):
        cdc_ok(ws, command, *(["--once"] if command == "run" else []))
    process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        execute(source, "INSERT INTO entries VALUES (6, 1500, 6.00, 'NOK', 'først', NULL)")
        deadline = time.monotonic() + 120
        while not execute(target, "SELECT 1 FROM entries WHERE id = 6") and time.monotonic() < deadline:
            time.sleep(0.1)  # started (slowly, on a busy machine) and streaming
        time.sleep(2)  # read again, nothing: waiting
        execute(source, "INSERT INTO entries VALUES (7, 1500, 7.00, 'NOK', 'mens den venter', NULL)")
        deadline = time.monotonic() + 10
        while not execute(target, "SELECT 1 FROM entries WHERE id = 7") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert execute(target, "SELECT count(*) FROM entries WHERE id = 7") == [(1,)], "waited for poll_interval"
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0, process.stderr.read()


def test_trigger_capture_applies_two_writers_of_one_row_in_commit_order_across_reads(pg_to_pg):
    """A transaction with an older id that writes a row after a younger one committed it (it waited
    for the row, as OLTP transactions do) commits last: its value must win in the target even when
    a third, older transaction still runs at the read between them (the younger one is then above
    the oldest running transaction id)."""
    import psycopg

    ws, source, target = pg_to_pg
    logical_pair(ws, source, target, "order", tables="[entries]")
    ws.config.write_text(ws.config.read_text().replace("capture: logical", "capture: trigger"))
    execute(source, "INSERT INTO entries VALUES (1, 1500, 10.00, 'NOK', 'start', NULL), "
                    "(2, 1500, 1.00, 'NOK', 'other', NULL)")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    older, middle, younger = (psycopg.connect(source) for _ in range(3))
    try:
        older.execute("UPDATE entries SET amount = 2.00 WHERE id = 2")  # takes the oldest transaction id
        middle.execute("UPDATE entries SET amount = 3.00 WHERE id = 2 AND false")  # a running transaction
        middle.execute("SELECT pg_current_xact_id()")  # with an id between the other two
        younger.execute("UPDATE entries SET memo = 'younger' WHERE id = 1")
        younger.commit()
        older.execute("UPDATE entries SET memo = 'older, committed last' WHERE id = 1")
        older.commit()
        cdc_ok(ws, "run", "--once")  # the middle transaction still runs
        middle.commit()
        cdc_ok(ws, "run", "--once")
    finally:
        for conn in (older, middle, younger):
            conn.close()
    assert rows(source, "entries", "id") == rows(target, "entries", "id")


def test_trigger_capture_applies_a_backlog_one_batch_at_a_time(pg_to_pg):
    """A backlog larger than batch_size goes to the target in several transactions (each a
    checkpoint a run killed later goes on from), each of whole source transactions in commit order."""
    ws, source, target = pg_to_pg
    logical_pair(ws, source, target, "backlog", tables="[entries]", batch_size=7)
    ws.config.write_text(ws.config.read_text().replace("capture: logical", "capture: trigger"))
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    for n in range(1, 31):  # 30 transactions of 2 changes: a row and an update of the first row
        execute(source, f"INSERT INTO entries VALUES ({n}, 1500, {n}.00, 'NOK', 'row {n}', NULL); "
                        f"UPDATE entries SET memo = 'last writer {n}' WHERE id = 1")
    status = cdc_ok(ws, "status").stdout
    assert "60 changes" in status or "pending     60" in status, status
    run = cdc_ok(ws, "run", "--once")
    assert "60 changes applied in 8 target transactions" in run.stdout, run.stdout
    assert rows(source, "entries", "id") == rows(target, "entries", "id")
    assert "pending     0" in cdc_ok(ws, "status").stdout


def test_a_slot_made_again_while_the_run_streamed_stops_it(pg_to_pg):
    """The stream ends (its walsender is terminated) while the slot is dropped and made again by
    `cdc install`: starting the stream again on the new slot would skip what came in between."""
    ws, source, target = pg_to_pg
    logical_pair(ws, source, target, "again", tables="[entries]")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    from cdc.config import load_config
    from cdc.errors import SourceError
    from cdc.pipeline import open_source

    logical, _ = open_source(load_config(ws.config).pairs["again"])
    try:
        position = logical.current_position()
        list(logical.stream(position, 100))  # the stream runs
        execute(source, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'cdc_again'")
        for _ in range(100):
            if not execute(source, "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'cdc_again' AND active"):
                break
            time.sleep(0.05)
        execute(source, "SELECT pg_drop_replication_slot('cdc_again')")
        execute(source, "INSERT INTO entries VALUES (6000, 1500, 1.00, 'NOK', 'between', NULL)")
        cdc_ok(ws, "install")
        with pytest.raises(SourceError) as err:
            for _ in range(3):
                list(logical.stream(position, 100))
        assert "replication slot cdc_again was dropped and made again" in str(err.value)
        assert "`cdc run --resnapshot CONFIG`" in str(err.value)
    finally:
        logical.close()


def test_install_next_to_the_applications_writers_fails_none_of_their_transactions(pg_to_pg):
    """`cdc install` again (idempotent, after adding a table) while the application writes: it took the
    changelog's lock before the tables', the writers' triggers the other way round, and PostgreSQL
    aborted an application transaction as a deadlock (or the install, with exit 1)."""
    ws, source, target = pg_to_pg
    execute(source, "INSERT INTO entries SELECT g, 1500, 1.00, 'NOK', 'm', now() FROM generate_series(1, 10) g;"
                    "INSERT INTO parties SELECT 'P' || g, 1, 'n' FROM generate_series(1, 10) g")
    logical_pair(ws, source, target, "p")
    ws.config.write_text(ws.config.read_text().replace("capture: logical", "capture: trigger"))
    for command in ("init", "install"):
        cdc_ok(ws, command)
    stop, errors, done = threading.Event(), [], []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(source, autocommit=True) as conn:
            while not stop.is_set():
                try:
                    conn.execute("UPDATE entries SET amount = amount + 1 WHERE id = %s", (rng.randint(1, 10),))
                    conn.execute("UPDATE parties SET name = name || 'x' WHERE code = %s", (f"P{rng.randint(1, 10)}",))
                    done.append(1)
                except psycopg.Error as exc:
                    errors.append(str(exc))

    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(4)]
    for writer in writers:
        writer.start()
    try:
        installs = [ws.cdc("install", str(ws.config)) for _ in range(6)]
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    assert [r.returncode for r in installs] == [0] * 6, [r.stderr for r in installs if r.returncode]
    assert not errors and done, errors[:3]
    cdc_ok(ws, "run", "--once")
    assert rows(source, "entries", "id") == rows(target, "entries", "id")
    assert rows(source, "parties", "code") == rows(target, "parties", "code")
