"""A SQLite database file that does not exist is never created by a command that only reads.

`status`, `doctor`, `audit`, `reconcile` and `run` used to open a missing target file, which SQLite
then created empty: the next command found a database without state tables, and a typo in a path
became a second, empty ledger. Only `cdc init` creates the target file; a missing source file is
never created by any command.
"""

from __future__ import annotations

import pytest

SCHEMA = "CREATE TABLE entries (id INTEGER PRIMARY KEY, memo TEXT); INSERT INTO entries VALUES (1, 'a');"
MISSING_TARGET = "target database {path} does not exist (connection dst): `cdc init CONFIG` creates it"


@pytest.fixture
def pair(ws):
    ws.sql(ws.source, SCHEMA)
    ws.write_config("""
        source: src
        target: dst
        tables: [entries]
    """)
    return ws


@pytest.mark.parametrize("command", [("status",), ("status", "--json"), ("doctor",), ("audit",), ("reconcile",),
                                     ("run", "--once"), ("reconcile", "--repair")])
def test_a_command_that_reads_does_not_create_a_missing_target_file(pair, command):
    result = pair.cdc(*command, str(pair.config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert MISSING_TARGET.format(path=pair.target) in result.stdout + result.stderr
    assert not pair.target.exists()


def test_status_names_the_missing_target_for_its_pair(pair):
    result = pair.cdc("status", str(pair.config))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == ("pair p (trigger): unknown, state unknown: target cannot be read: "
                                             + MISSING_TARGET.format(path=pair.target)
                                             + "; or correct the path in the config (a running pair retries while "
                                             "its target is away: see its log, or the daemon's /healthz)")


def test_doctor_reports_the_missing_target_and_goes_on_with_the_source(pair):
    result = pair.cdc("doctor", str(pair.config))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"  [FAIL] {MISSING_TARGET.format(path=pair.target)}" in result.stdout
    assert not pair.target.exists()


def test_init_creates_the_target_and_then_every_command_reads_it(pair):
    assert pair.cdc("init", str(pair.config)).returncode == 0
    assert pair.target.exists()
    assert pair.cdc("install", str(pair.config)).returncode == 0
    assert pair.cdc("run", "--once", str(pair.config)).returncode == 0
    for command in (("status",), ("audit",), ("reconcile", "--settle", "0")):
        result = pair.cdc(*command, str(pair.config))
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("command", [("status",), ("doctor",), ("audit",), ("reconcile",), ("run", "--once"),
                                     ("install",), ("uninstall",), ("check",)])
def test_no_command_creates_a_missing_source_file(pair, command):
    for setup in ("init", "install", "run"):
        assert pair.cdc(setup, *(["--once"] if setup == "run" else []), str(pair.config)).returncode == 0
    pair.source.rename(pair.root / "moved.db")
    result = pair.cdc(*command, str(pair.config))
    assert "Traceback" not in result.stderr
    if command != ("audit",):  # the audit trail is read from the target alone
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"source database {pair.source} does not exist (connection src)" in result.stdout + result.stderr
    assert not pair.source.exists()


def test_init_with_a_missing_source_creates_no_target_either(ws):
    ws.write_config("""
        source: src
        target: dst
        tables: [entries]
    """)
    result = ws.cdc("init", str(ws.config))
    assert result.returncode == 1 and f"source database {ws.source} does not exist" in result.stderr
    assert not ws.source.exists() and not ws.target.exists()


# -- a target table that does not exist -------------------------------------------------------------
MISSING_TABLE = ("pair p: target table accounts does not exist: run `cdc init CONFIG` to create it, "
                 "then `cdc run` copies what the source has")


def test_a_table_added_without_init_stops_run_and_status_at_once(pair):
    """`tables:` gains a table and only `cdc install` runs: `run` used to retry "database is locked"
    for minutes and `status` said all was well."""
    for setup in ("init", "install", "run"):
        assert pair.cdc(setup, *(["--once"] if setup == "run" else []), str(pair.config)).returncode == 0
    pair.sql(pair.source, "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO accounts VALUES (7, 'x');")
    pair.config.write_text(pair.config.read_text().replace("[entries]", "[entries, accounts]"))
    assert pair.cdc("install", str(pair.config)).returncode == 0
    status = pair.cdc("status", str(pair.config))
    assert status.returncode == 1 and f"problem     {MISSING_TABLE}" in status.stdout, status.stdout
    run = pair.cdc("run", "--once", str(pair.config), timeout=60)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1] == f"error: {MISSING_TABLE}", run.stderr
    assert "retrying" not in run.stderr
    assert pair.cdc("init", str(pair.config)).returncode == 0
    assert pair.cdc("run", "--once", str(pair.config)).returncode == 0
    assert pair.rows(pair.target, "accounts") == [(7, "x")]
    assert pair.cdc("status", str(pair.config)).returncode == 0


def test_a_run_that_cannot_start_after_a_killed_run_says_why(pair):
    """The killed run's claim row still says `running`; the failure is recorded over it."""
    for setup in ("init", "install"):
        assert pair.cdc(setup, str(pair.config)).returncode == 0
    assert pair.run_and_kill(1.5)
    assert pair.query(pair.target, "SELECT state FROM cdc_leases") == [("running",)]
    pair.sql(pair.target, "DROP TABLE entries")
    run = pair.cdc("run", "--once", str(pair.config), timeout=60)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == f"error: {MISSING_TABLE.replace('accounts', 'entries')}"
    status = pair.cdc("status", str(pair.config))
    assert status.returncode == 1 and MISSING_TABLE.replace("accounts", "entries") in status.stdout, status.stdout


def test_a_dropped_target_table_made_again_by_init_is_copied_again(pair):
    """`cdc status` says to run `cdc init`; the table it makes is empty, so the next run must copy the
    source's rows into it, not stream into it as if it held them."""
    for setup in ("init", "install", "run"):
        assert pair.cdc(setup, *(["--once"] if setup == "run" else []), str(pair.config)).returncode == 0
    pair.sql(pair.source, "INSERT INTO entries VALUES (2, 'b'), (3, 'c')")
    assert pair.cdc("run", "--once", str(pair.config)).returncode == 0
    pair.sql(pair.target, "DROP TABLE entries")
    pair.sql(pair.source, "UPDATE entries SET memo = 'a2' WHERE id = 1")
    status = pair.cdc("status", str(pair.config))
    assert status.returncode == 1 and "target table entries does not exist" in status.stdout, status.stdout
    init = pair.cdc("init", str(pair.config))
    assert init.returncode == 0 and "the next `cdc run` copies entries again" in init.stdout, init.stdout + init.stderr
    assert "snapshot 3 rows" in pair.cdc("run", "--once", str(pair.config)).stdout
    assert pair.rows(pair.target, "entries") == pair.rows(pair.source, "entries") == [(1, "a2"), (2, "b"), (3, "c")]
    assert pair.cdc("status", str(pair.config)).returncode == 0


def test_a_change_captured_without_a_column_the_mapping_reads_stops_the_pair(pair):
    """A column added at the source without `cdc install`: the old triggers log images without it,
    which must never reach the target as NULL."""
    for setup in ("init", "install", "run"):
        assert pair.cdc(setup, *(["--once"] if setup == "run" else []), str(pair.config)).returncode == 0
    pair.sql(pair.source, "ALTER TABLE entries ADD COLUMN amount NUMERIC; UPDATE entries SET amount = 100 WHERE id = 1")
    pair.sql(pair.target, "ALTER TABLE entries ADD COLUMN amount NUMERIC")
    pair.sql(pair.source, "INSERT INTO entries VALUES (2, 'b', 200)")
    # The triggers no longer match the table: status and run say so before anything is applied.
    status = pair.cdc("status", str(pair.config))
    assert status.returncode == 1 and "is not covered by trigger capture" in status.stdout, status.stdout
    doctor = pair.cdc("doctor", str(pair.config))
    assert doctor.returncode == 1 and "its triggers log other columns than the table has now" in doctor.stdout, \
        doctor.stdout
    run = pair.cdc("run", "--once", str(pair.config))
    assert run.returncode == 1 and "is not covered by trigger capture" in run.stderr, run.stderr
    assert pair.cdc("install", str(pair.config)).returncode == 0
    # The changes logged before the install lack the column: the pair stops on them rather than write NULL.
    run = pair.cdc("run", "--once", str(pair.config))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stdout + run.stderr
    assert "the captured change has no column amount, which the mapping reads" in run.stderr, run.stderr
    assert "Run `cdc install CONFIG`" in run.stderr and "--resnapshot" in run.stderr
    assert (2, "b", None) not in pair.rows(pair.target, "entries")
    assert pair.cdc("status", str(pair.config)).returncode == 1
    assert pair.cdc("run", "--once", "--resnapshot", str(pair.config)).returncode == 0
    pair.sql(pair.source, "UPDATE entries SET amount = 300 WHERE id = 2")
    assert pair.cdc("run", "--once", str(pair.config)).returncode == 0
    assert pair.rows(pair.target, "entries") == pair.rows(pair.source, "entries") == [(1, "a", 100), (2, "b", 300)]


def test_a_column_renamed_and_added_again_under_its_name_is_not_covered(pair):
    """SQLite rewrites the trigger to log the renamed column under the old name: the values of the new
    column would never reach the target."""
    for setup in ("init", "install", "run"):
        assert pair.cdc(setup, *(["--once"] if setup == "run" else []), str(pair.config)).returncode == 0
    pair.sql(pair.source, "ALTER TABLE entries RENAME COLUMN memo TO legacy_memo; ALTER TABLE entries ADD COLUMN memo TEXT; "
                          "UPDATE entries SET memo = 'fixed' WHERE id = 1")
    doctor = pair.cdc("doctor", str(pair.config))
    assert doctor.returncode == 1 and "its triggers log other columns than the table has now" in doctor.stdout, \
        doctor.stdout
    status = pair.cdc("status", str(pair.config))
    assert status.returncode == 1 and "trigger capture does not cover it" in status.stdout, status.stdout
    run = pair.cdc("run", "--once", str(pair.config))
    assert run.returncode == 1 and "trigger capture does not cover it" in run.stderr, run.stderr
    assert pair.rows(pair.target, "entries") == [(1, "a")]
