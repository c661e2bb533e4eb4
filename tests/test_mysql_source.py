"""MySQL/MariaDB as a source (capture `binlog`) and as a target: MariaDB <-> PostgreSQL, MariaDB -> MariaDB."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

UTC = dt.timezone.utc


def mexec(url: str, statement: str, params=None, many: bool = False) -> list:
    """Run SQL on MariaDB (autocommit); the rows it returns."""
    parts = sa.engine.make_url(url)
    with pymysql.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password or "",
                         database=parts.database, autocommit=True, charset="utf8mb4") as conn:
        with conn.cursor() as cursor:
            cursor.execute("SET time_zone = '+00:00'")
            if many:
                cursor.executemany(statement, params)
            else:
                for single in ([statement] if params is not None else statement.split(";\n")):
                    if single.strip():
                        cursor.execute(single, params)
            return list(cursor.fetchall()) if cursor.description else []


def pexec(url: str, statement: str, params=None) -> list:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def pair_config(ws, source: str, target: str, name: str, capture: str = "binlog", tables: str = "[entries]",
                extra: str = "", **options) -> None:
    more = "".join(f"    {k}: {v}\n" for k, v in options.items())
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  {name}:\n    source: src\n"
                         f"    target: dst\n    capture: {capture}\n    tables: {tables}\n{more}{extra}",
                         encoding="utf-8")


def cdc_ok(ws, *args):
    result = ws.cdc(*args, str(ws.config))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


ENTRIES = """CREATE TABLE entries (id BIGINT PRIMARY KEY, account INT NOT NULL, amount DECIMAL(18,2) NOT NULL,
    currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at DATETIME(6)) ENGINE=InnoDB"""


def test_mariadb_to_postgresql_snapshot_and_binlog(ws, mysql_url, pg_url):
    mexec(mysql_url, ENTRIES)
    mexec(mysql_url, "INSERT INTO entries VALUES (%s, %s, %s, %s, %s, %s)", [
        (1, 1500, Decimal("1234567890123.45"), "NOK", "Blåbærsyltetøy ☕", dt.datetime(2024, 3, 31, 23, 30)),
        (2, 1920, Decimal("-0.01"), "NOK", None, None)], many=True)
    pair_config(ws, mysql_url, pg_url, "shop", source_timezone="Europe/Oslo")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    assert "snapshot 2 rows, 0 changes applied" in cdc_ok(ws, "run", "--once").stdout  # the snapshot
    mexec(mysql_url, "INSERT INTO entries VALUES (3, 2700, 0.10, 'EUR', 'Ærlig 🧾', '2024-07-01 12:00:00')")
    mexec(mysql_url, "UPDATE entries SET amount = amount + 1, memo = 'endret' WHERE id = 1")
    mexec(mysql_url, "DELETE FROM entries WHERE id = 2")
    result = cdc_ok(ws, "run", "--once")
    assert "3 changes applied" in result.stdout, result.stdout
    assert pexec(pg_url, "SELECT id, account, amount, currency, memo, booked_at FROM entries ORDER BY id") == [
        (1, 1500, Decimal("1234567890124.45"), "NOK", "endret",
         dt.datetime(2024, 3, 31, 21, 30, tzinfo=UTC)),  # 23:30 in Oslo (summer time) is 21:30 UTC
        (3, 2700, Decimal("0.10"), "EUR", "Ærlig 🧾", dt.datetime(2024, 7, 1, 10, 0, tzinfo=UTC))]
    audit = pexec(pg_url, "SELECT op, key, source_txid FROM cdc_audit_log WHERE op <> 'snapshot' ORDER BY id")
    assert [(op, key) for op, key, _ in audit] == [("insert", "[3]"), ("update", "[1]"), ("delete", "[2]")]
    assert len({txid for _, _, txid in audit}) == 3  # each change its own transaction (GTID)
    # Nothing pending: another run applies nothing and keeps the checkpoint.
    assert "0 changes applied" in cdc_ok(ws, "run", "--once").stdout


@pytest.mark.parametrize("capture", ["binlog", "trigger"])
def test_types_between_mariadb_and_postgresql(ws, mysql_databases, pg_databases, capture):
    """Every type the issue names, MariaDB -> PostgreSQL and back (PostgreSQL -> MariaDB)."""
    source, middle, back = mysql_databases(), pg_databases(), mysql_databases()
    mexec(source, """CREATE TABLE things (id INT PRIMARY KEY, price DECIMAL(30,10) NOT NULL, active TINYINT(1),
        big BIGINT UNSIGNED, local_at DATETIME, stamp TIMESTAMP NULL, day DATE, note TEXT, doc JSON, raw BLOB,
        state ENUM('open','paid','void'), tags SET('a','b','c')) ENGINE=InnoDB""")
    row = (1, Decimal("12345678901234567890.0123456789"), 1, 2**63 + 5, dt.datetime(2024, 1, 31, 8, 0),
           dt.datetime(2024, 6, 1, 12, 0, 0), dt.date(2024, 2, 29), "æøå ÆØÅ 🧾☕", '{"konto": 1500, "tekst": "Blåbær"}',
           b"\x00\xff\x10", "paid", "c,a")
    mexec(source, "INSERT INTO things VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
    (ws.config.parent / "things.yaml").write_text(
        "tables:\n  things:\n    columns:\n      id: id\n      price: price\n"
        "      active: {from: active, transforms: [boolean]}\n      big: big\n      local_at: local_at\n"
        "      stamp: stamp\n      day: day\n      note: note\n      doc: doc\n      raw: raw\n"
        "      state: state\n      tags: tags\n", encoding="utf-8")
    ws.config.write_text(f"connections:\n  src: {source}\n  mid: {middle}\n  back: {back}\npairs:\n"
                         f"  there:\n    source: src\n    target: mid\n    capture: {capture}\n    mapping: things.yaml\n"
                         f"  home:\n    source: mid\n    target: back\n    capture: logical\n    tables: [things]\n",
                         encoding="utf-8")
    pexec(middle, "CREATE TABLE things (id INT PRIMARY KEY, price NUMERIC(30,10) NOT NULL, active BOOLEAN, "
                  "big NUMERIC(20,0), local_at TIMESTAMPTZ, stamp TIMESTAMPTZ, day DATE, note TEXT, doc JSONB, "
                  "raw BYTEA, state TEXT, tags TEXT)")
    mexec(back, """CREATE TABLE things (id INT PRIMARY KEY, price DECIMAL(30,10) NOT NULL, active BOOLEAN,
        big BIGINT UNSIGNED, local_at DATETIME, stamp TIMESTAMP NULL, day DATE, note TEXT, doc JSON, raw BLOB,
        state ENUM('open','paid','void'), tags SET('a','b','c')) ENGINE=InnoDB""")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once", "--pair", "there")
    mexec(source, "UPDATE things SET note = CONCAT(note, ' 🎉'), price = price + 1 WHERE id = 1")
    mexec(source, "INSERT INTO things VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
          (2, Decimal("-0.0000000001"), 0, 0, None, None, None, "", '[1, 2.5, "x"]', b"", "void", ""))
    cdc_ok(ws, "run", "--once", "--pair", "there")
    got = pexec(middle, "SELECT * FROM things ORDER BY id")
    assert got[0] == (1, Decimal("12345678901234567891.0123456789"), True, Decimal(2**63 + 5),
                      dt.datetime(2024, 1, 31, 8, 0, tzinfo=UTC), dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC),
                      dt.date(2024, 2, 29), "æøå ÆØÅ 🧾☕ 🎉", {"konto": 1500, "tekst": "Blåbær"}, b"\x00\xff\x10",
                      "paid", "a,c")
    assert got[1] == (2, Decimal("-0.0000000001"), False, Decimal(0), None, None, None, "", [1, 2.5, "x"], b"",
                      "void", "")
    cdc_ok(ws, "run", "--once", "--pair", "home")
    assert mexec(back, "SELECT * FROM things ORDER BY id") == mexec(source, "SELECT * FROM things ORDER BY id")


def test_mysql_target_upserts_audit_and_checkpoint_in_one_transaction(ws, pg_url, mysql_url):
    """PostgreSQL -> MariaDB: rows, audit and checkpoint land together; a too-long value is parked alone."""
    pexec(pg_url, "CREATE TABLE entries (id BIGINT PRIMARY KEY, account INT NOT NULL, amount NUMERIC(18,2) NOT NULL, "
                  "currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at TIMESTAMPTZ)")
    mexec(mysql_url, ENTRIES.replace("VARCHAR(200)", "VARCHAR(10)"))
    pair_config(ws, pg_url, mysql_url, "ledger", capture="logical", on_error="park")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    pexec(pg_url, "INSERT INTO entries SELECT g, 1500, g / 100.0, 'NOK', 'kort', timestamptz '2024-01-01 00:00+01' "
                  "FROM generate_series(1, 500) g")
    pexec(pg_url, "UPDATE entries SET memo = 'altfor lang tekst' WHERE id = 7")
    result = cdc_ok(ws, "run", "--once")
    assert "1 parked" in result.stdout, result.stdout
    assert mexec(mysql_url, "SELECT count(*), sum(amount) FROM entries") == [(500, Decimal("1252.50"))]
    assert mexec(mysql_url, "SELECT memo, booked_at FROM entries WHERE id = 7") == [("kort", dt.datetime(2023, 12, 31, 23, 0))]
    assert mexec(mysql_url, "SELECT error, column_name FROM cdc_dead_letters") == [
        ("text of 17 characters does not fit 10; refusing to truncate", "memo")]
    assert mexec(mysql_url, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot' AND decision = 'applied'") == [(500,)]


PARTIES = """CREATE TABLE parties (code VARCHAR(10) NOT NULL, region INT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (code, region)) ENGINE=InnoDB"""


def same_rows(mysql: str, pg: str, table: str, order: str) -> tuple[list, list]:
    """Both sides' rows, timestamps as naive UTC, decimals normalised."""
    def norm(rows):
        return [tuple(v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, dt.datetime) and v.tzinfo else
                      v.normalize() if isinstance(v, Decimal) else v for v in r) for r in rows]
    return (norm(mexec(mysql, f"SELECT * FROM {table} ORDER BY {order}")),
            norm(pexec(pg, f"SELECT * FROM {table} ORDER BY {order}")))


def assert_each_transaction_once(pg: str, log: list, total: int) -> None:
    """The writer's transactions: a first run seen by the snapshot, then every later one applied
    with exactly one audit row per change, and nothing else."""
    audited = dict(pexec(pg, "SELECT source_txid, count(*) FROM cdc_audit_log WHERE op <> 'snapshot' "
                             "GROUP BY source_txid"))
    assert sum(n for _, n in log) == total
    flags = [gtid in audited for gtid, _ in log]
    assert flags == sorted(flags), "a transaction after an applied one is missing from the audit"
    streamed = [(gtid, n) for gtid, n in log if gtid in audited]
    wrong = [(gtid, n, audited[gtid]) for gtid, n in streamed if audited[gtid] != n]
    assert not wrong, f"transactions applied twice or in part (gtid, changes, audit rows): {wrong[:10]}"
    assert len(streamed) == len(audited) and streamed, "audit rows for transactions no writer made"


def pair_state(ws) -> dict:
    """The pair's row of `cdc status --json` (whatever its exit code)."""
    import orjson

    shown = ws.cdc("status", "--json", str(ws.config))
    row = orjson.loads(shown.stdout)[0]
    assert shown.returncode == (0 if row["healthy"] else 1), shown.stderr
    return row


def test_random_changes_with_sigkill_and_a_source_restart(ws, mysql_server, mysql_url, pg_url):
    import signal
    import subprocess
    import sys
    import threading

    import workload

    import os

    server = mysql_server[1]
    if server is None:
        pytest.skip("restarts only the test's own MariaDB server")
    # CDC_TEST_MYSQL_CHANGES=20000 runs the full-size check (about 10 minutes).
    total = int(os.environ.get("CDC_TEST_MYSQL_CHANGES", "4000"))
    first_phase = total * 3 // 8
    mexec(mysql_url, ENTRIES)
    mexec(mysql_url, PARTIES)
    workload.run(mysql_url, 300, seed=61)
    pair_config(ws, mysql_url, pg_url, "shop", tables="[entries, parties]", batch_size=7, poll_interval=0.05)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    log, changes = [], []
    # Phase 1: the pair streams while the writer writes; then MariaDB crashes and comes back.
    process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    changes.append(workload.run(mysql_url, first_phase, seed=62, pause=0.005, log=log))
    deadline = time.monotonic() + 120  # streaming (not still starting, on a busy machine) when the server goes
    while not pexec(pg_url, "SELECT count(*) FROM pg_tables WHERE tablename = 'cdc_checkpoints'")[0][0] or \
            not pexec(pg_url, "SELECT count(*) FROM cdc_checkpoints WHERE snapshot IS NULL")[0][0]:
        assert time.monotonic() < deadline and process.poll() is None, "cdc run did not start streaming"
        time.sleep(0.2)
    server.stop(kill=True)
    # While it retries, `cdc status` says so and exits 1 (not "running", 0).
    deadline = time.monotonic() + 60
    while (shown := pair_state(ws))["state"] != "retrying":
        assert time.monotonic() < deadline and process.poll() is None, f"status never showed the retry: {shown}"
        time.sleep(0.3)
    assert shown["healthy"] is False and shown["error"], shown
    server.start()
    deadline = time.monotonic() + 60
    while (shown := pair_state(ws))["state"] != "running":
        assert time.monotonic() < deadline and process.poll() is None, f"status never showed the recovery: {shown}"
        time.sleep(0.3)
    assert process.poll() is None, "cdc run must survive the source restart"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "retrying" in err, err  # it saw the outage and said so
    # Phase 2: more changes while `cdc run` is SIGKILLed at random moments.
    writer = threading.Thread(target=lambda: changes.append(workload.run(mysql_url, total - first_phase, seed=63,
                                                                         pause=0.005, log=log)))
    writer.start()
    ws.kill_while(writer.is_alive, 7, 0.8, 1.8)
    writer.join()
    cdc_ok(ws, "run", "--once")
    for table, order in (("entries", "id"), ("parties", "code, region")):
        source_rows, target_rows = same_rows(mysql_url, pg_url, table, order)
        assert source_rows == target_rows, table
    assert_each_transaction_once(pg_url, log, sum(changes))


def test_binlog_settings_purged_binlog_and_altered_table(ws, mysql_url, pg_url):
    mexec(mysql_url, ENTRIES)
    mexec(mysql_url, "INSERT INTO entries VALUES (1, 1500, 1.00, 'NOK', 'a', NULL)")
    pair_config(ws, mysql_url, pg_url, "faults", on_error="stop")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    doctor = cdc_ok(ws, "doctor").stdout
    for line in ("[  OK] binlog_format = ROW", "[  OK] binlog_row_image = FULL", "[  OK] the user has REPLICATION SLAVE",
                 "[  OK] entries: primary key (id)", "[  OK] target synchronous_commit = on"):
        assert line in doctor, doctor
    cdc_ok(ws, "run", "--once")
    # A new nullable column the mapping does not use is tolerated.
    mexec(mysql_url, "ALTER TABLE entries ADD COLUMN extra INT NULL")
    mexec(mysql_url, "INSERT INTO entries VALUES (2, 1500, 2.00, 'NOK', 'b', NULL, 7)")
    cdc_ok(ws, "run", "--once")
    assert pexec(pg_url, "SELECT id, amount FROM entries ORDER BY id") == [(1, Decimal("1.00")), (2, Decimal("2.00"))]
    # A dropped column stops the pair, naming table and column, with nothing after it applied.
    mexec(mysql_url, "ALTER TABLE entries DROP COLUMN memo")
    mexec(mysql_url, "INSERT INTO entries VALUES (3, 1500, 3.00, 'NOK', NULL, 7)")
    stopped = ws.cdc("run", "--once", str(ws.config))
    assert stopped.returncode != 0 and "entries" in stopped.stderr and "'memo'" in stopped.stderr, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert pexec(pg_url, "SELECT count(*) FROM entries") == [(2,)]
    # A purged binlog: a clear error naming the file and the way out.
    mexec(mysql_url, "ALTER TABLE entries ADD COLUMN memo VARCHAR(200) NULL AFTER currency")
    checkpoint = pexec(pg_url, "SELECT position FROM cdc_checkpoints")[0][0]
    mexec(mysql_url, "FLUSH BINARY LOGS")
    current = mexec(mysql_url, "SHOW MASTER STATUS")[0][0]
    for _ in range(50):  # MariaDB keeps a file until its binlog checkpoint has moved on
        mexec(mysql_url, f"PURGE BINARY LOGS TO '{current}'")
        if mexec(mysql_url, "SHOW BINARY LOGS")[0][0] == current:
            break
        time.sleep(0.2)
    purged = ws.cdc("run", "--once", str(ws.config))
    assert purged.returncode != 0 and "Traceback" not in purged.stderr
    assert "binlog file" in purged.stderr and "purged" in purged.stderr and "--resnapshot" in purged.stderr, purged.stderr
    assert checkpoint.split('"file":"')[1].split('"')[0] in purged.stderr
    cdc_ok(ws, "run", "--once", "--resnapshot")
    assert pexec(pg_url, "SELECT count(*) FROM entries") == [(3,)]
    # TRUNCATE of a captured table is not replicated: the pair stops and says so.
    mexec(mysql_url, "TRUNCATE TABLE entries")
    truncated = ws.cdc("run", "--once", str(ws.config))
    assert truncated.returncode != 0 and "TRUNCATE at the source" in truncated.stderr, truncated.stderr
    assert pexec(pg_url, "SELECT count(*) FROM entries") == [(3,)]


def test_binlog_off_or_statement_format_is_explained(ws, pg_url):
    from mysqlserver import LocalMariaDB

    server = LocalMariaDB({"binlog-format": "STATEMENT"})
    try:
        mexec(server.url(), "CREATE DATABASE shop")
        url = server.url("shop")
        mexec(url, ENTRIES)
        pair_config(ws, url, pg_url, "stmt")
        cdc_ok(ws, "init")
        result = ws.cdc("install", str(ws.config))
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert "binlog_format = STATEMENT: binlog capture needs ROW; set binlog_format=ROW" in result.stderr, result.stderr
        doctor = ws.cdc("doctor", str(ws.config))
        assert doctor.returncode == 1 and "[FAIL] binlog_format = STATEMENT" in doctor.stdout, doctor.stdout
    finally:
        server.remove()


def test_timestamp_capture_from_mariadb(ws, mysql_url, pg_url):
    mexec(mysql_url, "CREATE TABLE products (sku VARCHAR(20) PRIMARY KEY, price DECIMAL(12,2) NOT NULL, "
                     "updated_at TIMESTAMP(6) NOT NULL, deleted TINYINT(1) NOT NULL DEFAULT 0) ENGINE=InnoDB")
    mexec(mysql_url, "INSERT INTO products VALUES ('A-1', 89.90, '2024-05-01 08:00:00', 0)")
    pair_config(ws, mysql_url, pg_url, "ts", capture="timestamp", tables="[products]",
                timestamp="{column: updated_at, soft_delete: deleted, overlap_seconds: 30}")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    # Same timestamp as the watermark, and 10 s older: both inside the overlap window.
    mexec(mysql_url, "INSERT INTO products VALUES ('A-2', 45.00, '2024-05-01 08:00:00', 0), "
                     "('A-3', 12.50, '2024-05-01 07:59:50', 0)")
    assert "2 changes applied" in cdc_ok(ws, "run", "--once").stdout
    assert "0 changes applied" in cdc_ok(ws, "run", "--once").stdout
    mexec(mysql_url, "UPDATE products SET deleted = 1, updated_at = '2024-05-02 06:00:00' WHERE sku = 'A-1'")
    cdc_ok(ws, "run", "--once")
    assert pexec(pg_url, "SELECT sku, price, updated_at FROM products ORDER BY sku") == [
        ("A-2", Decimal("45.00"), dt.datetime(2024, 5, 1, 8, 0, tzinfo=UTC)),
        ("A-3", Decimal("12.50"), dt.datetime(2024, 5, 1, 7, 59, 50, tzinfo=UTC))]


def test_sigkill_during_a_snapshot_resumes_without_doubles(ws, mysql_url, pg_url):
    """A 300,000-row snapshot in 300-row chunks (COPY text made by MariaDB, straight into the empty target), SIGKILLed
    again and again until a run gets through: every row arrives exactly once and the chunk audit
    rows add up to the table."""
    import json

    mexec(mysql_url, ENTRIES)
    mexec(mysql_url, "INSERT INTO entries SELECT seq, 1500 + seq % 7, seq / 100, 'NOK', CONCAT('Bilag ', seq, ' æøå'), "
                     "TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_300000")
    pair_config(ws, mysql_url, pg_url, "big", snapshot_chunk=300)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    kills = 0
    while ws.run_and_kill(1.2 + 0.2 * kills, once=True):  # longer each time: a slow start still progresses
        kills += 1
        assert kills < 30, "the snapshot makes no progress between kills"
    assert kills >= 2, "the snapshot finished before it could be killed"
    cdc_ok(ws, "run", "--once")
    source_rows, target_rows = same_rows(mysql_url, pg_url, "entries", "id")
    assert len(source_rows) == 300000 and source_rows == target_rows
    chunks = pexec(pg_url, "SELECT after FROM cdc_audit_log WHERE op = 'snapshot'")
    assert sum(json.loads(after)["rows"] for (after,) in chunks) == 300000


def racing_updates(url: str, transactions: int, seed: int) -> int:
    """Updates of random existing rows in 3-row transactions, racing the workload for the same rows."""
    import random

    rng, changed = random.Random(seed), 0
    parts = sa.engine.make_url(url)
    with pymysql.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password or "",
                         database=parts.database, charset="utf8mb4") as conn, conn.cursor() as cursor:
        for _ in range(transactions):
            cursor.execute("SELECT id FROM entries ORDER BY RAND() LIMIT 3")
            ids = [r[0] for r in cursor.fetchall()]
            done = 0
            try:
                for row_id in ids:
                    done += cursor.execute("UPDATE entries SET amount = amount + 0.01, memo = %s WHERE id = %s",
                                           (f"rask {rng.random():.6f}", row_id))
                conn.commit()
                changed += done
            except pymysql.err.OperationalError as exc:
                conn.rollback()
                if exc.args[0] != 1213:  # a deadlock with the other writer: that transaction is simply lost
                    raise
            time.sleep(0.005)
    return changed


def test_trigger_capture_open_transaction_racing_writers_and_sigkill(ws, mysql_url, pg_url):
    import threading

    import workload

    mexec(mysql_url, ENTRIES)
    mexec(mysql_url, PARTIES)
    workload.run(mysql_url, 300, seed=71)
    pair_config(ws, mysql_url, pg_url, "trig", capture="trigger", tables="[entries, parties]", batch_size=50,
                poll_interval=0.05)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")  # the snapshot, before the writers start
    assert "entries: capture triggers installed, matching its columns" in cdc_ok(ws, "doctor").stdout

    # A transaction left open keeps its epoch from sealing: a change committed after it waits for it
    # (ids alone would skip the open one for good); the other writer is not held up meanwhile.
    parts = sa.engine.make_url(mysql_url)
    first = mexec(mysql_url, "SELECT min(id) FROM entries")[0][0]
    with pymysql.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password or "",
                         database=parts.database, charset="utf8mb4") as open_conn:
        with open_conn.cursor() as cursor:
            cursor.execute("UPDATE entries SET memo = 'venter' WHERE id = %s", (first,))
        # Another session in another time zone: TIMESTAMP/DATETIME logging must not depend on it.
        mexec(mysql_url, "SET time_zone = '+05:00';\nINSERT INTO entries VALUES (900001, 1500, 0.01, 'NOK', "
                         "'etter', '2024-01-01 00:00:00')")
        assert "0 changes applied" in cdc_ok(ws, "run", "--once").stdout
        open_conn.commit()
    assert "2 changes applied" in cdc_ok(ws, "run", "--once").stdout
    audit = pexec(pg_url, "SELECT key, source_txid FROM cdc_audit_log WHERE op = 'update' OR key = '[900001]'")
    assert len(audit) == 2 and audit[0][1] == audit[1][1]  # both ended in one epoch: applied together

    # Two writers racing for the same rows while `cdc run` is SIGKILLed at random moments.
    changes = []
    writers = [threading.Thread(target=lambda: changes.append(workload.run(mysql_url, 2500, seed=72, pause=0.005))),
               threading.Thread(target=lambda: changes.append(racing_updates(mysql_url, 300, seed=73)))]
    for writer in writers:
        writer.start()
    ws.kill_while(lambda: any(w.is_alive() for w in writers), 8, 0.8, 1.6)
    cdc_ok(ws, "run", "--once")
    for table, order in (("entries", "id"), ("parties", "code, region")):
        source_rows, target_rows = same_rows(mysql_url, pg_url, table, order)
        assert source_rows == target_rows, table
    audited = pexec(pg_url, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'")[0][0]
    assert audited == sum(changes) + 2
    assert mexec(mysql_url, "SELECT count(*) FROM _cdc_changelog") == [(0,)]  # purged once applied

    # An altered table: doctor names the stale triggers; `cdc install` again makes them match.
    mexec(mysql_url, "ALTER TABLE entries ADD COLUMN extra INT NULL")
    assert "entries: capture trigger(s) for insert, update, delete missing or made for other columns" in \
        ws.cdc("doctor", str(ws.config)).stdout
    cdc_ok(ws, "install")
    assert "entries: capture triggers installed, matching its columns" in cdc_ok(ws, "doctor").stdout
    assert "removed triggers on entries, triggers on parties, changelog _cdc_changelog" in \
        cdc_ok(ws, "uninstall").stdout
    assert mexec(mysql_url, "SELECT count(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()") \
        == [(0,)]


def test_snapshot_as_copy_text_made_by_mariadb(ws, mysql_url, pg_url, caplog):
    """An identity pair into PostgreSQL columns of matching types: the server writes COPY text,
    escapes and NULLs included, and PostgreSQL holds exactly what the row path would write; a
    chunk with a zero date falls back to rows, where that one row is parked by name."""
    mexec(mysql_url, """CREATE TABLE notes (id INT PRIMARY KEY, amount DECIMAL(12,2), big BIGINT UNSIGNED,
        at DATETIME(6), stamp TIMESTAMP(6) NULL, day DATE, code CHAR(3), body TEXT, raw BLOB) ENGINE=InnoDB""")
    odd = ["tab\there", "line\nbreak", "cr\rhere", "back\\slash", "\\N", "", None, "æøå 🧾", "\\\\t"]
    rows = [(i + 1, Decimal(f"{i}.{i % 10}5"), 2**63 + i, dt.datetime(2024, 1, 1, 12, 0, 0, 123456 * (i % 2)),
             dt.datetime(2024, 6, 1, 8, 30), dt.date(2024, 2, 29), "NO" if i % 2 else "SEK", body,
             bytes([i % 256, 0, 255]) if i % 3 else None) for i, body in enumerate(odd * 30)]
    mexec(mysql_url, "INSERT INTO notes VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", rows, many=True)
    pexec(pg_url, "CREATE TABLE notes (id INTEGER PRIMARY KEY, amount NUMERIC(12,2), big NUMERIC(20,0), "
                  "at TIMESTAMPTZ, stamp TIMESTAMPTZ, day DATE, code CHAR(3), body TEXT, raw BYTEA)")
    pair_config(ws, mysql_url, pg_url, "notes", tables="[notes]", snapshot_chunk=100, on_error="park")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    from cdc import config, pipeline

    runner = pipeline.PairRunner(config.load_config(ws.config).pairs["notes"])
    try:
        assert runner._bulk_ok("notes", runner.mappings["notes"]), "the COPY text path was not chosen"
    finally:
        runner.close()
    cdc_ok(ws, "run", "--once")
    want = [(i, a, Decimal(b), t.replace(tzinfo=UTC), s.replace(tzinfo=UTC), d, c.ljust(3), body, r)
            for i, a, b, t, s, d, c, body, r in rows]
    assert pexec(pg_url, "SELECT * FROM notes ORDER BY id") == want
    # A zero date: PostgreSQL refuses the chunk, the row path parks that row by name and goes on.
    mexec(mysql_url, "SET SESSION sql_mode = '';\nINSERT INTO notes (id, at) VALUES (100000, '0000-00-00 00:00:00')")
    mexec(mysql_url, "INSERT INTO notes (id, amount) VALUES (100001, 1.00)")
    pexec(pg_url, "DELETE FROM notes WHERE id > 200")
    cdc_ok(ws, "run", "--once", "--resnapshot")
    assert pexec(pg_url, "SELECT count(*) FROM notes") == [(len(rows) + 1,)]
    parked = pexec(pg_url, "SELECT key, column_name, error FROM cdc_dead_letters")
    assert parked == [("[100000]", "at", "'0000-00-00 00:00:00.000000' is not a timestamp")], parked


def stopped(ws, *needles: str) -> str:
    """`cdc run --once` fails with one line naming each needle; `cdc status` then exits 1."""
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert ws.cdc("status", str(ws.config)).returncode == 1
    return result.stderr


@pytest.mark.parametrize("statement, effect", [
    ("DROP TABLE IF EXISTS `entries` /* generated by server */", ("DROP TABLE", [("shop", "entries")])),
    ("DROP TABLE a, `d2`.`b`, c", ("DROP TABLE", [("shop", "a"), ("d2", "b"), ("shop", "c")])),
    ("DROP TEMPORARY TABLE entries", None),
    # Executable comments run their contents: as if written plainly.
    ("/*!40000 TRUNCATE TABLE entries */", ("TRUNCATE", [("shop", "entries")])),
    ("/*M!100000 TRUNCATE TABLE `entries` */", ("TRUNCATE", [("shop", "entries")])),
    ("/*!50003 RENAME TABLE a TO a_old, b TO a */", ("RENAME TABLE", [("shop", "a"), ("shop", "a_old"), ("shop", "b"),
                                                                     ("shop", "a")])),
    ("/* TRUNCATE TABLE entries */ SELECT 1", None),
    ("RENAME TABLE a TO a_old, `shop`.a_new TO a", ("RENAME TABLE", [("shop", "a"), ("shop", "a_old"),
                                                                    ("shop", "a_new"), ("shop", "a")])),
    ("ALTER TABLE a ADD COLUMN c INT, RENAME AS `we``ird`",
     ("ALTER TABLE ... RENAME", [("shop", "a"), ("shop", "we`ird")])),
    ("ALTER TABLE a RENAME COLUMN x TO y", None),
    ("ALTER TABLE p EXCHANGE PARTITION p0 WITH TABLE t",
     ("ALTER TABLE ... EXCHANGE PARTITION", [("shop", "p"), ("shop", "t")])),
    ("CREATE OR REPLACE TABLE e (id INT)", ("CREATE OR REPLACE TABLE", [("shop", "e")])),
    ("CREATE TABLE e (id INT)", None),
    ("DROP DATABASE IF EXISTS `d1`", ("DROP DATABASE", [("d1", "*")])),
    ("/* x */ INSERT LOW_PRIORITY IGNORE INTO `d1`.t (id) VALUES ('entries')", ("INSERT", [("d1", "t")])),
    ("INSERT INTO x SELECT * FROM entries", ("INSERT", [("shop", "x")])),
    ("REPLACE t SET id = 1", ("REPLACE", [("shop", "t")])),
    ("UPDATE IGNORE a JOIN d2.b ON a.id = b.id SET b.v = 1", ("UPDATE", [("shop", "a"), ("d2", "b")])),
    ("DELETE a FROM a, b WHERE a.id = b.id", ("DELETE", [("shop", "a"), ("shop", "a"), ("shop", "b")])),
    ("DELETE QUICK FROM t WHERE id IN (SELECT id FROM entries)", ("DELETE", [("shop", "t")])),
    ("WITH c AS (SELECT 1) UPDATE t JOIN c SET t.v = 1", ("UPDATE", [("shop", "t"), ("shop", "c")])),
    ("BEGIN", None), ("XA END X'78',X'',1", None), ("GRANT SELECT ON t TO u", None)])
def test_statements_name_the_tables_they_change(statement, effect):
    from cdc.adapters.mysql._statements import effect as read

    found = read(statement, "shop")
    assert (found if found is None else (found.action, [tuple(n) for n in found.tables])) == effect


def test_binlog_stops_on_drop_rename_and_restore_of_a_captured_table(ws, mysql_databases, pg_url):
    source, other = mysql_databases(), mysql_databases()
    database, other_database = (sa.engine.make_url(u).database for u in (source, other))
    mexec(source, ENTRIES)
    mexec(source, "INSERT INTO entries VALUES (1, 1500, 1.00, 'NOK', 'a', NULL)")
    pair_config(ws, source, pg_url, "ddl")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    # Other databases' tables named alike, and other tables of this one (our own kind included): no stop.
    mexec(other, ENTRIES + ";\nDROP TABLE entries")
    mexec(source, f"CREATE TABLE `{other_database}`.entries (id INT);\n"
                  f"DROP TABLE IF EXISTS `{other_database}`.`entries`;\nCREATE TABLE cdc_checkpoints_x LIKE entries;\n"
                  "RENAME TABLE cdc_checkpoints_x TO spare;\n"
                  "ALTER TABLE spare RENAME TO spare2;\nTRUNCATE spare2;\nDROP TABLE IF EXISTS spare2, not_there;\n"
                  "INSERT INTO entries VALUES (2, 1500, 2.00, 'NOK', 'b', NULL)")
    assert "1 changes applied" in cdc_ok(ws, "run", "--once").stdout
    # A mariadb-dump restore of the table: DROP TABLE, CREATE TABLE, INSERT.
    mexec(source, f"DROP TABLE IF EXISTS `{database}`.`entries`;\n{ENTRIES};\n"
                  "INSERT INTO entries VALUES (7, 1500, 7.00, 'NOK', 'restored', NULL)")
    stopped(ws, "pair ddl: DROP TABLE at the source of captured table entries", "--resnapshot")
    assert pexec(pg_url, "SELECT id FROM entries ORDER BY id") == [(1,), (2,)]
    cdc_ok(ws, "run", "--once", "--resnapshot")
    ws.cdc("reconcile", "--table", "entries", "--repair", str(ws.config))  # exit 1: it found differences
    assert pexec(pg_url, "SELECT id FROM entries ORDER BY id") == [(7,)]
    # A swap of the table for a new one.
    mexec(source, "CREATE TABLE entries_new LIKE entries;\n"
                  "INSERT INTO entries_new VALUES (8, 1500, 8.00, 'NOK', 'ny', NULL);\n"
                  "RENAME TABLE `entries` TO entries_old, entries_new TO `entries`")
    stopped(ws, "pair ddl: RENAME TABLE at the source of captured table entries", "--resnapshot")
    cdc_ok(ws, "run", "--once", "--resnapshot")
    ws.cdc("reconcile", "--table", "entries", "--repair", str(ws.config))  # exit 1: it found differences
    assert pexec(pg_url, "SELECT id FROM entries ORDER BY id") == [(8,)]
    # ALTER TABLE ... RENAME away and back.
    mexec(source, "ALTER TABLE entries ADD COLUMN extra INT NULL, RENAME TO gone;\nALTER TABLE gone RENAME entries")
    stopped(ws, "pair ddl: ALTER TABLE ... RENAME at the source of captured table entries", "--resnapshot")


def test_binlog_stops_on_dml_logged_as_a_statement(ws, mysql_url, pg_url):
    mexec(mysql_url, ENTRIES + ";\nCREATE TABLE notes (id INT PRIMARY KEY, body TEXT) ENGINE=InnoDB")
    mexec(mysql_url, "INSERT INTO entries VALUES (1, 1500, 1.00, 'NOK', 'a', NULL)")
    pair_config(ws, mysql_url, pg_url, "stmt")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    # A statement-format session writing a table the pair does not capture: no stop.
    mexec(mysql_url, "SET SESSION binlog_format = 'STATEMENT';\nINSERT INTO notes VALUES (1, 'entries')")
    cdc_ok(ws, "run", "--once")
    mexec(mysql_url, "SET SESSION binlog_format = 'STATEMENT';\nUPDATE `entries` SET memo = 'endret' WHERE id = 1")
    stopped(ws, "pair stmt: UPDATE of captured table entries was written to the binlog as a statement",
            "binlog_format=ROW", "--resnapshot")
    assert pexec(pg_url, "SELECT memo FROM entries") == [("a",)]
    cdc_ok(ws, "run", "--once", "--resnapshot")
    assert pexec(pg_url, "SELECT memo FROM entries") == [("endret",)]
    # Through a view, or a table whose trigger writes a captured table: the statement names no captured table.
    mexec(mysql_url, "CREATE VIEW ve AS SELECT * FROM entries;\n"
                     "CREATE TRIGGER notes_purge AFTER INSERT ON notes FOR EACH ROW DELETE FROM entries WHERE id = NEW.id")
    for statement, table in (("UPDATE ve SET memo = 'via view' WHERE id = 1", "ve"),
                             ("INSERT INTO notes VALUES (2, 'x')", "notes")):
        mexec(mysql_url, f"SET SESSION binlog_format = 'STATEMENT';\n{statement}")
        stopped(ws, f"of {table}, a view or a table with triggers in the pair's database", "--resnapshot")
        cdc_ok(ws, "run", "--once", "--resnapshot")
        assert [r[0] for r in pexec(pg_url, "SELECT memo FROM entries ORDER BY id")] == \
            [r[0] for r in mexec(mysql_url, "SELECT memo FROM entries ORDER BY id")]


def test_binlog_stops_on_an_xa_transaction_before_applying_it(ws, mysql_url, pg_url):
    mexec(mysql_url, ENTRIES)
    pair_config(ws, mysql_url, pg_url, "xa")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    mexec(mysql_url, "XA START 'x1';\nINSERT INTO entries VALUES (1, 1500, 1.00, 'NOK', 'fantom', NULL);\n"
                     "XA END 'x1';\nXA PREPARE 'x1'")
    try:
        stopped(ws, "pair xa: XA transaction 'x1'", "captured table entries", "not support XA", "--resnapshot")
        assert pexec(pg_url, "SELECT count(*) FROM entries") == [(0,)]
    finally:  # a prepared XA transaction outlives its session and would hold its locks on the shared server
        mexec(mysql_url, "XA ROLLBACK 'x1'")
    stopped(ws, "XA transaction 'x1'")  # still there in the binlog: only a re-copy moves past it
    cdc_ok(ws, "run", "--once", "--resnapshot")
    mexec(mysql_url, "INSERT INTO entries VALUES (2, 1500, 2.00, 'NOK', 'ekte', NULL)")
    cdc_ok(ws, "run", "--once")
    assert pexec(pg_url, "SELECT id FROM entries") == [(2,)]


@pytest.mark.parametrize("capture", ["binlog", "trigger"])
def test_cascading_foreign_keys_are_named_by_doctor_and_status(ws, mysql_url, pg_url, capture):
    mexec(mysql_url, "CREATE TABLE accounts (id INT PRIMARY KEY) ENGINE=InnoDB;\n"
                     "CREATE TABLE postings (id INT PRIMARY KEY, account INT, CONSTRAINT postings_account FOREIGN KEY "
                     "(account) REFERENCES accounts (id) ON DELETE CASCADE ON UPDATE SET NULL) ENGINE=InnoDB;\n"
                     "CREATE TABLE notes (id INT PRIMARY KEY, account INT, CONSTRAINT notes_account FOREIGN KEY "
                     "(account) REFERENCES accounts (id) ON DELETE RESTRICT) ENGINE=InnoDB")
    pair_config(ws, mysql_url, pg_url, "fk", capture=capture, tables="[accounts, postings, notes]")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    finding = ("postings: foreign key postings_account (to accounts) has ON DELETE CASCADE and ON UPDATE SET NULL: the "
               "child rows the database changes by it are not captured")
    doctor = ws.cdc("doctor", str(ws.config))
    assert doctor.returncode == 1 and f"[FAIL] {finding}" in doctor.stdout, doctor.stdout
    assert "RESTRICT or NO ACTION" in doctor.stdout
    assert "cdc reconcile CONFIG --table postings --repair" in doctor.stdout
    assert "notes_account" not in doctor.stdout
    status = ws.cdc("status", str(ws.config))
    assert status.returncode == 0 and f"warning     {finding}" in status.stdout, status.stdout


def test_trigger_capture_on_an_idle_pair_does_not_wait_for_the_poll_interval(ws, mysql_url, pg_url):
    """The idle wait looks at the changelog's newest id every 0.2 s: with poll_interval 30 a change
    still arrives within seconds."""
    import subprocess
    import sys

    mexec(mysql_url, ENTRIES)
    pair_config(ws, mysql_url, pg_url, "idle", capture="trigger", poll_interval=30)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for key, deadline in ((6, 120), (7, 10)):  # the first: started (slowly, on a busy machine) and streaming
            if key == 7:
                time.sleep(2)  # read again, nothing: waiting
            mexec(mysql_url, f"INSERT INTO entries VALUES ({key}, 1500, 7.00, 'NOK', 'mens den venter', NULL)")
            end = time.monotonic() + deadline
            while not pexec(pg_url, "SELECT 1 FROM entries WHERE id = %s", (key,)) and time.monotonic() < end:
                time.sleep(0.1)
            assert pexec(pg_url, "SELECT count(*) FROM entries WHERE id = %s", (key,)) == [(1,)], \
                f"change {key}: waited for poll_interval"
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0, process.stderr.read()


def test_trigger_seal_patience_grows_behind_a_long_transaction_and_shrinks_again(ws, mysql_url, pg_url):
    """A read seals the epoch after a short patience (an OLTP load's writers hold it for
    milliseconds); a wait in line that times out (a long transaction) makes the next reads ask
    longer before they queue ahead of writers, and a seal that then succeeds in line shortens it."""
    import threading

    from cdc.adapters.mysql import trigger
    from cdc.config import load_config
    from cdc.pipeline import open_source

    mexec(mysql_url, ENTRIES)
    pair_config(ws, mysql_url, pg_url, "seal", capture="trigger")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    source, _ = open_source(load_config(str(ws.config)).pairs["seal"])
    parts = sa.engine.make_url(mysql_url)
    try:
        assert source._patience == trigger.SEAL_PATIENCE
        mexec(mysql_url, "INSERT INTO entries VALUES (1, 1500, 1.00, 'NOK', NULL, NULL)")
        with pymysql.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password or "",
                             database=parts.database) as open_conn:
            with open_conn.cursor() as cursor:  # holds the epoch (a share lock) until it ends
                cursor.execute("UPDATE entries SET memo = 'lang' WHERE id = 1")
            assert source._seal(force=False) is None
            assert source._patience == 4 * trigger.SEAL_PATIENCE
            # It ends while the seal waits in line (after the patience, within the 1 s wait): sealed.
            ending = threading.Timer(4 * trigger.SEAL_PATIENCE + 0.4, open_conn.rollback)
            ending.start()
            before = mexec(mysql_url, "SELECT n FROM _cdc_epoch")[0][0]
            assert source._seal(force=False) == before
            ending.join()
        assert source._patience == 2 * trigger.SEAL_PATIENCE
        assert mexec(mysql_url, "SELECT n FROM _cdc_epoch")[0][0] == before + 1
    finally:
        source.close()
