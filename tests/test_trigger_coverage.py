"""Trigger capture is checked for real, not only as registered: `cdc status` and `cdc run` exit 1
when a streamed table's capture triggers are gone, attached to another table, or do not fire.

- A table restored from a dump (DROP TABLE + CREATE TABLE + INSERT) lost its triggers with the old
  table (SQLite, PostgreSQL, MariaDB): status and run name the table and `cdc install`; after
  `cdc install` and `cdc reconcile --table T --repair` the target equals the source.
- A table swapped by rename (`a` -> `a_old`, `a_new` -> `a`): the triggers follow `a_old` and go on
  logging under the name `a` (SQLite, MariaDB).
- PostgreSQL: a disabled capture trigger, or one enabled the ordinary way (it does not fire for
  session_replication_role = replica); `cdc install` makes it fire ALWAYS, so replica sessions
  are captured.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from test_added_tables import SCHEMAS, cdc_ok, databases, execute, kind, same, synced_pair, write_config


def status_json(ws) -> tuple[int, dict]:
    result = ws.cdc("status", "--json", str(ws.config))
    return result.returncode, json.loads(result.stdout)[0]


def accounts_ddl(db: str, name: str = "accounts") -> str:
    (ddl,) = [s for s in SCHEMAS[kind(db)].split(";") if "TABLE accounts" in s]
    return ddl.replace("TABLE accounts", f"TABLE {name}")


def assert_uncovered(ws, table: str = "accounts") -> None:
    """status and run exit 1 with one line naming the table, `cdc install` and the repair."""
    lost = f"table {table} of pair p streams, but trigger capture does not cover it: its changes are not captured. " \
           "Run `cdc install CONFIG`, then repair what changed meanwhile with " \
           f"`cdc reconcile CONFIG --pair p --table {table} --repair`"
    code, row = status_json(ws)
    assert code == 1 and not row["healthy"] and row["error"] == lost, row
    run = ws.cdc("run", "--once", str(ws.config))
    assert run.returncode == 1 and lost in run.stderr and "Traceback" not in run.stderr, run.stderr


def install_and_repair(ws, source: str, target: str) -> None:
    cdc_ok(ws, "install")
    repair = ws.cdc("reconcile", "--table", "accounts", "--repair", str(ws.config))
    assert repair.returncode == 1, repair.stdout + repair.stderr  # it found (and repaired) differences
    assert same(source, target, "accounts")
    assert "[  OK] accounts: capture triggers installed" in ws.cdc("doctor", str(ws.config)).stdout
    execute(source, "UPDATE accounts SET name = 'Etter reparasjon' WHERE id = 3")
    cdc_ok(ws, "run", "--once")
    assert same(source, target, "accounts") and same(source, target, "entries")
    assert status_json(ws)[0] == 0


@pytest.mark.parametrize("source_kind", ["sqlite", "postgresql", "mysql"])
def test_a_table_restored_from_a_dump_is_not_covered_until_install(ws, request, source_kind):
    source, target = databases(ws, request, source_kind)
    synced_pair(ws, source, target, "trigger", ["entries", "accounts"])
    assert status_json(ws)[0] == 0
    dump = execute(source, "SELECT * FROM accounts ORDER BY id")
    execute(source, f"DROP TABLE accounts; {accounts_ddl(source)}")
    execute(source, "INSERT INTO accounts VALUES (?, ?, ?)", many=[tuple(r) for r in dump])
    # Written after the restore, with no trigger to log them:
    execute(source, "UPDATE accounts SET name = 'Etter gjenoppretting' WHERE id = 5; DELETE FROM accounts WHERE id = 7")
    assert_uncovered(ws)
    doctor = ws.cdc("doctor", str(ws.config)).stdout
    assert "[FAIL] accounts:" in doctor and "run `cdc install CONFIG`" in doctor, doctor
    if source_kind != "mysql":  # MariaDB's doctor also compares each trigger with the table's columns
        assert "missing (table dropped and made again?): run `cdc install CONFIG`" in doctor, doctor
    assert not same(source, target, "accounts")
    install_and_repair(ws, source, target)


@pytest.mark.parametrize("source_kind", ["sqlite", "mysql"])
def test_a_table_swapped_by_rename_is_not_covered(ws, request, source_kind):
    source, target = databases(ws, request, source_kind)
    synced_pair(ws, source, target, "trigger", ["entries", "accounts"])
    execute(source, f"{accounts_ddl(source, 'accounts_new')}; INSERT INTO accounts_new SELECT * FROM accounts; "
                    "UPDATE accounts_new SET balance = 999.00 WHERE id = 4; "
                    "ALTER TABLE accounts RENAME TO accounts_old; ALTER TABLE accounts_new RENAME TO accounts")
    execute(source, "UPDATE accounts SET name = 'Byttet' WHERE id = 6")
    assert_uncovered(ws)
    doctor = ws.cdc("doctor", str(ws.config)).stdout
    assert "[FAIL] accounts:" in doctor, doctor
    if source_kind == "sqlite":
        assert "its triggers are attached to table accounts_old (the table was renamed and another put in its " \
               "place?): run `cdc install CONFIG`" in doctor, doctor
    install_and_repair(ws, source, target)


def test_postgresql_capture_trigger_must_fire_always(ws, pg_databases):
    source, target = pg_databases(), pg_databases()
    synced_pair(ws, source, target, "trigger", ["entries", "accounts"])
    enabled = "SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = 'accounts'::regclass AND tgname = '_cdc_capture'"
    assert execute(source, enabled) == [("A",)]
    # A session acting as a replica (a restore, a replication tool) is captured:
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE accounts SET name = 'Replika' WHERE id = 2")
        conn.execute("INSERT INTO accounts VALUES (21, 'Ny fra replika', 1.00)")
    cdc_ok(ws, "run", "--once")
    assert same(source, target, "accounts")

    execute(source, "ALTER TABLE accounts DISABLE TRIGGER _cdc_capture")
    execute(source, "UPDATE accounts SET name = 'Uten trigger' WHERE id = 8")
    assert_uncovered(ws)
    doctor = ws.cdc("doctor", str(ws.config))
    assert doctor.returncode == 1 and "[FAIL] accounts: trigger _cdc_capture is disabled: run `cdc install CONFIG`" \
        in doctor.stdout, doctor.stdout
    install_and_repair(ws, source, target)

    # Enabled the ordinary way (as `cdc install` did before): replica sessions would go unlogged.
    execute(source, "ALTER TABLE accounts ENABLE TRIGGER _cdc_capture")
    code, row = status_json(ws)
    assert code == 1 and "table accounts of pair p streams, but trigger capture does not cover it" in row["error"]
    assert "[FAIL] accounts: trigger _cdc_capture does not fire in sessions with session_replication_role = " \
           "replica: run `cdc install CONFIG`" in ws.cdc("doctor", str(ws.config)).stdout
    cdc_ok(ws, "install")
    cdc_ok(ws, "install")  # idempotent
    assert execute(source, enabled) == [("A",)]
    assert "[  OK] accounts: capture triggers installed" in ws.cdc("doctor", str(ws.config)).stdout


def test_an_added_table_without_its_triggers_is_not_copied(ws):
    source, target = str(ws.root / "source.db"), str(ws.root / "target.db")
    synced_pair(ws, source, target, "trigger", ["entries"])
    write_config(ws, source, target, "trigger", ["entries", "accounts"])
    for command in ("init", "install"):
        cdc_ok(ws, command)
    execute(source, "DROP TRIGGER _cdc_accounts_au")
    code, row = status_json(ws)
    assert code == 1 and row["error"] == "table accounts of pair p is not covered by trigger capture yet, so it " \
        "cannot be copied: run `cdc install CONFIG`, then `cdc run` copies it", row
    run = ws.cdc("run", "--once", str(ws.config))
    assert run.returncode == 1 and "table accounts of pair p is not covered by trigger capture, so its changes are " \
        "not captured (trigger _cdc_accounts_au missing (table dropped and made again?)): run `cdc install CONFIG`, " \
        "then `cdc run` copies it" in run.stderr, run.stderr
    assert execute(target, "SELECT count(*) FROM accounts")[0][0] == 0
    cdc_ok(ws, "install")
    assert "snapshot 20 rows" in cdc_ok(ws, "run", "--once").stdout
    assert same(source, target, "accounts")


@pytest.mark.parametrize("capture", ["trigger", "timestamp"])
def test_doctor_warns_of_a_sqlite_source_whose_readers_hold_off_the_applications_writes(ws, capture):
    """In a rollback-journal database a reading cdc (a copy, a reconcile, a paused run) made the
    application's commits fail with 'database is locked'; WAL lets them go on."""
    source, target = str(ws.root / "source.db"), str(ws.root / "target.db")
    synced_pair(ws, source, target, "trigger", ["entries"])
    if capture == "timestamp":
        execute(source, "ALTER TABLE entries ADD COLUMN changed TEXT")
        ws.config.write_text(ws.config.read_text().replace("capture: trigger", "capture: timestamp\n"
                                                           "    timestamp: {column: changed}"))
    doctor = ws.cdc("doctor", str(ws.config))
    assert "[WARN] journal_mode is delete: while cdc reads the database" in doctor.stdout, doctor.stdout
    execute(source, "PRAGMA journal_mode=WAL")
    doctor = ws.cdc("doctor", str(ws.config))
    assert "journal_mode is wal" in doctor.stdout and "journal_mode is delete" not in doctor.stdout, doctor.stdout
