"""SQLite -> PostgreSQL: exact types, random workload, a target restart, bad connection (SIGKILL: tests/compliance)."""

from __future__ import annotations

import datetime as dt
import random
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal

import sqlalchemy as sa

import workload
from conftest import LEDGER_SCHEMA


def normal(value):
    """One representation for both sides: SQLite stores NUMERIC as float/int, PostgreSQL as Decimal."""
    if isinstance(value, float):
        return Decimal(repr(value)).normalize()
    if isinstance(value, Decimal):
        return value.normalize()
    if isinstance(value, dt.datetime):
        return str(value)
    return value


def pg_rows(url: str, table: str, order: str) -> list[tuple]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return [tuple(normal(v) for v in row) for row in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY {order}")]
    finally:
        engine.dispose()


def audited_positions(url: str) -> list[int]:
    """The source positions (changelog ids) of the audited changes, in order."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return [p for (p,) in conn.exec_driver_sql(
                "SELECT source_position::bigint FROM cdc_audit_log WHERE op <> 'snapshot' ORDER BY 1")]
    finally:
        engine.dispose()


def sqlite_rows(ws, table: str, order: str) -> list[tuple]:
    return [tuple(normal(v) for v in row) for row in ws.rows(ws.source, table, order)]


def pg_pair(ws, pg_url: str, **options) -> None:
    ws.sql(ws.source, LEDGER_SCHEMA)
    extra = "".join(f"{k}: {v}\n" for k, v in options.items())
    ws.write_config(f"source: src\ntarget: ledger\ncapture: trigger\ntables: [entries, parties]\n{extra}",
                    extra_connections=f"  ledger: {pg_url}\n")
    for command in ("init", "install"):
        result = ws.cdc(command, str(ws.config))
        assert result.returncode == 0, result.stderr


def assert_equal(ws, pg_url):
    for table, order in (("entries", "id"), ("parties", "code, region")):
        assert sqlite_rows(ws, table, order) == pg_rows(pg_url, table, order), table


def test_exact_types_and_random_changes_into_postgresql(ws, pg_url):
    pg_pair(ws, pg_url, batch_size=200)
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 1500, '0.10', 'NOK', 'Blåbærsyltetøy AS', '2024-01-31 23:59:59');"
                      "INSERT INTO entries VALUES (2, 3000, '1234567890123.45', 'NOK', 'Kaffe ☕', NULL);"
                      "INSERT INTO entries VALUES (3, 2700, '-0.01', 'NOK', '', '2024-02-29 00:00:00');")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, amount, memo FROM entries ORDER BY id").all()
        types = dict(conn.exec_driver_sql("SELECT column_name, data_type FROM information_schema.columns "
                                          "WHERE table_name = 'entries'").all())
    engine.dispose()
    assert [(i, str(a), m) for i, a, m in rows] == [(1, "0.10", "Blåbærsyltetøy AS"), (2, "1234567890123.45", "Kaffe ☕"),
                                                    (3, "-0.01", "")]
    assert types["id"] == "bigint" and types["amount"] == "numeric" and types["booked_at"].startswith("timestamp")
    changes = workload.run(ws.source, 3000, seed=3)
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 0, result.stderr
    assert_equal(ws, pg_url)
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'").scalar() == changes
    engine.dispose()


def test_wrong_password_and_unreachable_host_are_clear_and_masked(ws, pg_server):
    ws.sql(ws.source, LEDGER_SCHEMA)
    url = sa.engine.make_url(pg_server)
    wrong = url.set(username="nobody", password="s3cret-pw").render_as_string(hide_password=False)
    for target in (wrong, "postgresql://ledger:s3cret-pw@127.0.0.1:1/regnskap"):
        ws.write_config("source: src\ntarget: ledger\ntables: [entries]", extra_connections=f"  ledger: {target}\n")
        result = ws.cdc("init", str(ws.config))
        assert result.returncode == 1, result.stdout
        assert "s3cret-pw" not in result.stdout + result.stderr and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: target ledger: connection failed: "), result.stderr


def test_check_and_doctor_report_every_pair_when_one_database_cannot_be_reached(ws):
    """An unreachable target (one pair) or source (another) is that pair's failure: the pairs
    after it are still checked, and the command exits non-zero naming each, password masked."""
    ws.sql(ws.source, LEDGER_SCHEMA)
    ws.config.write_text(
        "connections:\n"
        "  src: sqlite:///source.db\n"
        "  dst: sqlite:///target.db\n"
        "  other: sqlite:///other.db\n"
        "  ledger: postgresql://ledger:s3cret-pw@127.0.0.1:1/regnskap\n"
        "pairs:\n"
        "  down:\n    source: src\n    target: ledger\n    tables: [entries]\n"
        "  gone:\n    source: ledger\n    target: other\n    capture: trigger\n    tables: [entries]\n"
        "  up:\n    source: src\n    target: dst\n    tables: [entries]\n", encoding="utf-8")
    assert ws.cdc("init", "--pair", "up", str(ws.config)).returncode == 0
    check = ws.cdc("check", str(ws.config))
    doctor = ws.cdc("doctor", str(ws.config))
    for result in (check, doctor):
        out = result.stdout + result.stderr
        assert result.returncode == 1, out
        assert "s3cret-pw" not in out and "Traceback" not in out
        assert out.count("target ledger: connection failed: ") >= 1 and "source ledger: connection failed: " in out
    assert "config OK" not in check.stdout
    up = check.stdout[check.stdout.index("pair up:"):]
    assert "entries -> entries key (id)" in up and "state tables: current" in up, check.stdout
    assert check.stderr.startswith("error: target ledger: connection failed: "), check.stderr
    lines = doctor.stdout.splitlines()
    assert any(line.startswith("pair up:") for line in lines), doctor.stdout
    assert "[FAIL] target ledger: connection failed: " in doctor.stdout
    assert "[FAIL] source ledger: connection failed: " in doctor.stdout


def test_a_target_trigger_that_raises_parks_the_row_and_the_pair_goes_on(ws, pg_url):
    """A PostgreSQL trigger's RAISE EXCEPTION refuses the row as a constraint would: with on_error park
    the change is parked naming table and key, and the others are applied (it stopped the pair)."""
    pg_pair(ws, pg_url, on_error="park")
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE FUNCTION no_666() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN IF NEW.amount = 666 "
                             "THEN RAISE EXCEPTION 'amount 666 is not allowed'; END IF; RETURN NEW; END$$")
        conn.exec_driver_sql("CREATE TRIGGER no_666 BEFORE INSERT OR UPDATE ON entries FOR EACH ROW EXECUTE FUNCTION "
                             "no_666()")
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 1920, 10, 'NOK', 'ok', NULL);"
                      "INSERT INTO entries VALUES (2, 1920, 666, 'NOK', 'refused', NULL);"
                      "INSERT INTO entries VALUES (3, 1920, 30, 'NOK', 'ok', NULL)")
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    with engine.connect() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM entries ORDER BY id")]
        letters = conn.exec_driver_sql("SELECT key, error FROM cdc_dead_letters").all()
    engine.dispose()
    assert ids == [1, 3]
    assert [k for k, _ in letters] == ["[2]"] and "amount 666 is not allowed" in letters[0][1], letters


def test_target_server_restarted_while_streaming(ws):
    from pgserver import LocalCluster

    cluster = LocalCluster()
    try:
        admin = sa.create_engine(cluster.url().replace("postgresql://", "postgresql+psycopg://"),
                                 isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE ledger")
        admin.dispose()
        url = cluster.url("ledger")
        pg_pair(ws, url, batch_size=5, poll_interval=0.05)
        process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        changes = []
        writer = threading.Thread(target=lambda: changes.append(workload.run(ws.source, 2500, seed=31, pause=0.01)))
        writer.start()
        deadline = time.monotonic() + 120
        while not audited_positions(url):  # streaming, however slowly a busy machine started it
            assert time.monotonic() < deadline and process.poll() is None, "cdc run did not start streaming"
            time.sleep(0.1)
        cluster.stop("immediate")  # a crash of the target server mid-batch
        time.sleep(2)
        cluster.start()
        writer.join()
        assert process.poll() is None, f"cdc run must survive the restart: {process.communicate()[1]}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if sqlite_rows(ws, "entries", "id") == pg_rows(url, "entries", "id"):
                    break
            except sa.exc.OperationalError:
                pass
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert "retrying" in err  # it saw the outage and said so
        assert_equal(ws, url)
        positions = audited_positions(url)
        assert positions == list(range(positions[0], positions[0] + len(positions)))
        assert len(positions) == changes[0] or positions[0] > 1  # every change after the snapshot, once
    finally:
        cluster.remove()
