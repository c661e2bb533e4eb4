"""A table whose mapping changes under a streaming pair is copied again; capture gaps and table-name
case are said, not skipped.

- The target of a table changes (`target: accounts` -> `target: konti`): the checkpoint records the
  mapping identity each table was copied under, so the new target table gets its own copy while the
  others stream, and `cdc status` says why before the run.
- Columns added to the mapping, a filter widened: the rows the target has are not what the mapping
  now writes, so the table is copied again (updates, never deletes).
- A table added to a logical pair but not yet in its publication: `cdc status` exits 1 naming the
  table and `cdc install`, as trigger capture does.
- SQLite table names in another letter case than stored: one config error, exit 2.
"""

from __future__ import annotations

import json

import pytest

from test_added_tables import (ACCOUNTS, ENTRIES, SCHEMAS, cdc_ok, checkpoint, databases, execute, fill, kind,
                               normalized, same, statuses, write_config)

MAPPING = "tables:\n  entries:\n  accounts:\n{accounts}"


def mapped_pair(ws, source: str, target: str, capture: str, accounts: str = "", **options) -> None:
    """entries and accounts (20 rows each) copied through a mapping file, then streaming."""
    execute(source, SCHEMAS[kind(source)])
    fill(source, ENTRIES, range(1, 21))
    fill(source, ACCOUNTS, range(1, 21))
    remap(ws, accounts)
    write_config(ws, source, target, capture, mapping="m.yaml", **options)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    assert "snapshot 40 rows" in cdc_ok(ws, "run", "--once").stdout


def remap(ws, accounts: str) -> None:
    (ws.root / "m.yaml").write_text(MAPPING.format(accounts=accounts), encoding="utf-8")


def status_json(ws) -> tuple[int, dict]:
    result = ws.cdc("status", "--json", str(ws.config))
    return result.returncode, json.loads(result.stdout)[0]


def stored_identity(target: str, table: str) -> dict:
    (tables,) = execute(target, "SELECT tables FROM cdc_checkpoints WHERE pair = 'p'")[0]
    return json.loads(tables)[table]


@pytest.mark.parametrize("source_kind, capture", [("sqlite", "trigger"), ("postgresql", "logical"),
                                                  ("mysql", "binlog")])
def test_a_changed_target_table_gets_the_rows_while_the_others_stream(ws, request, source_kind, capture):
    source, target = databases(ws, request, source_kind)
    mapped_pair(ws, source, target, capture)
    remap(ws, "    target: konti\n")
    # Changes while the mapping changes: to the table moved and to the one that stays.
    execute(source, "UPDATE accounts SET name = 'Endret før flytting' WHERE id = 5; DELETE FROM accounts WHERE id = 7; "
                    "INSERT INTO accounts VALUES (21, 'Ny konto ø', 21.50); UPDATE entries SET memo = 'Endret' WHERE id = 3")
    code, row = status_json(ws)
    assert row["tables"]["accounts"] == {"phase": "not copied yet",
                                         "reason": "its target changed from accounts to konti"}, row
    assert row["tables"]["entries"] == {"phase": "streaming"}
    text = ws.cdc("status", str(ws.config)).stdout
    assert "table accounts: not copied yet (its target changed from accounts to konti; the next `cdc run` copies it)" \
        in text, text

    old_rows = normalized(target, "SELECT * FROM accounts ORDER BY id")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    run = cdc_ok(ws, "run", "--once")
    assert "snapshot 20 rows" in run.stdout, run.stdout
    assert "table accounts was copied under another mapping (its target changed from accounts to konti; target " \
           "table accounts is no longer written and keeps its rows): copying it again into konti" in run.stderr
    query = "SELECT * FROM {} ORDER BY id"
    assert normalized(source, query.format("accounts")) == normalized(target, query.format("konti"))
    assert same(source, target, "entries")
    assert normalized(target, query.format("accounts")) == old_rows, "the old target table was written to"
    assert stored_identity(target, "accounts")["target"] == "konti"
    assert statuses(ws) == {"entries": {"phase": "streaming"}, "accounts": {"phase": "streaming"}}

    # From now on its changes go to konti.
    execute(source, "UPDATE accounts SET name = 'Etter flytting' WHERE id = 6; DELETE FROM accounts WHERE id = 8")
    assert "snapshot" not in cdc_ok(ws, "run", "--once").stdout
    assert normalized(source, query.format("accounts")) == normalized(target, query.format("konti"))
    assert normalized(target, query.format("accounts")) == old_rows


def test_columns_added_to_the_mapping_and_a_widened_filter_copy_the_table_again(ws):
    source, target = str(ws.root / "source.db"), str(ws.root / "target.db")
    narrow = ("    columns: {id: id, name: name}\n"
              "    filter: [{column: id, op: '<=', value: 10}]\n")
    mapped_pair(ws, source, target, "trigger", narrow)
    assert normalized(target, "SELECT id, name FROM accounts ORDER BY id") == \
        normalized(source, "SELECT id, name FROM accounts WHERE id <= 10 ORDER BY id")

    # The filter widened: rows 11..20 were never copied, and no change to them will ever come.
    remap(ws, "    columns: {id: id, name: name}\n    filter: [{column: id, op: '<=', value: 15}]\n")
    assert statuses(ws)["accounts"] == {"phase": "not copied yet", "reason": "its filter changed"}
    run = cdc_ok(ws, "run", "--once")
    assert "snapshot 20 rows" in run.stdout, run.stdout  # rows read; the filter keeps 15
    assert "target table accounts already has rows" in run.stderr
    assert normalized(target, "SELECT id, name FROM accounts ORDER BY id") == \
        normalized(source, "SELECT id, name FROM accounts WHERE id <= 15 ORDER BY id")

    # A column added to the mapping (and to the target table by the DBA): every row needs its value.
    execute(target, "ALTER TABLE accounts ADD COLUMN balance NUMERIC(18,2)")
    remap(ws, "    columns: {id: id, name: name, balance: balance}\n    filter: [{column: id, op: '<=', value: 15}]\n")
    assert statuses(ws)["accounts"] == {"phase": "not copied yet", "reason": "its columns or their transforms changed"}
    assert "snapshot 20 rows" in cdc_ok(ws, "run", "--once").stdout
    assert normalized(target, "SELECT * FROM accounts ORDER BY id") == \
        normalized(source, "SELECT id, name, balance FROM accounts WHERE id <= 15 ORDER BY id")
    assert statuses(ws) == {"entries": {"phase": "streaming"}, "accounts": {"phase": "streaming", "old_rows": True}}
    # Unchanged mapping: nothing copied again.
    assert "snapshot" not in cdc_ok(ws, "run", "--once").stdout
    # Column order and layout in the file do not count as a change.
    remap(ws, "    filter: [{column: id, op: '<=', value: 15}]\n    columns: {balance: balance, id: id, name: name}\n")
    assert "snapshot" not in cdc_ok(ws, "run", "--once").stdout


def test_a_checkpoint_that_recorded_table_names_only_still_sees_a_changed_target(ws):
    """Checkpoints written before mapping identities list the streamed tables by name: a table keeps
    its copy, unless its newest audit row names another target than the mapping's now."""
    source, target = str(ws.root / "source.db"), str(ws.root / "target.db")
    mapped_pair(ws, source, target, "trigger")
    execute(target, "UPDATE cdc_checkpoints SET tables = '[\"accounts\", \"entries\"]'")
    assert "snapshot" not in cdc_ok(ws, "run", "--once").stdout, "a table was copied again for nothing"
    execute(target, "UPDATE cdc_checkpoints SET tables = '[\"accounts\", \"entries\"]'")
    remap(ws, "    target: konti\n")
    assert statuses(ws, healthy=False)["accounts"]["reason"] == "its target changed from accounts to konti"  # no konti yet
    cdc_ok(ws, "init")
    assert "snapshot 20 rows" in cdc_ok(ws, "run", "--once").stdout
    assert normalized(source, "SELECT * FROM accounts ORDER BY id") == normalized(target, "SELECT * FROM konti ORDER BY id")
    assert checkpoint(target) == ({}, ["accounts", "entries"])


@pytest.mark.parametrize("source_kind, capture", [("sqlite", "trigger"), ("postgresql", "logical")])
def test_status_fails_naming_an_added_table_capture_does_not_cover(ws, request, source_kind, capture):
    source, target = databases(ws, request, source_kind)
    execute(source, SCHEMAS[kind(source)])
    fill(source, ENTRIES, range(1, 21))
    fill(source, ACCOUNTS, range(1, 21))
    write_config(ws, source, target, capture, ["entries"])
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    write_config(ws, source, target, capture, ["entries", "accounts"])
    cdc_ok(ws, "init")
    code, row = status_json(ws)
    assert code == 1 and not row["healthy"], row
    assert "accounts" in row["error"] and "run `cdc install CONFIG`" in row["error"], row["error"]
    assert row["tables"]["accounts"]["phase"] == "not copied yet"
    assert "capture does not cover it yet: run `cdc install CONFIG` first" in row["tables"]["accounts"]["reason"]
    text = ws.cdc("status", str(ws.config))
    assert text.returncode == 1 and "accounts" in text.stdout and "Traceback" not in text.stderr
    cdc_ok(ws, "install")
    code, row = status_json(ws)
    assert code == 0 and row["tables"]["accounts"] == {"phase": "not copied yet"}, row
    assert "snapshot 20 rows" in cdc_ok(ws, "run", "--once").stdout
    assert same(source, target, "accounts")


def test_status_fails_when_a_streamed_table_left_the_publication(ws, pg_databases):
    source, target = pg_databases(), pg_databases()
    execute(source, SCHEMAS["postgresql"])
    fill(source, ACCOUNTS, range(1, 6))
    write_config(ws, source, target, "logical", ["entries", "accounts"])
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    assert ws.cdc("status", str(ws.config)).returncode == 0
    execute(source, "ALTER PUBLICATION cdc_p DROP TABLE accounts")
    code, row = status_json(ws)
    assert code == 1 and "table accounts of pair p streams, but logical capture does not cover it" in row["error"]
    assert "`cdc reconcile CONFIG --pair p --table accounts --repair`" in row["error"]


# -- SQLite table names in another letter case ---------------------------------------------------
@pytest.mark.parametrize("command", ["check", "init", "run", "status", "reconcile"])
def test_a_source_table_named_in_another_case_is_one_config_error(ws, command):
    source, target = str(ws.root / "source.db"), str(ws.root / "target.db")
    execute(source, "CREATE TABLE ledger_rows (id INTEGER PRIMARY KEY, amount NUMERIC(18,2) NOT NULL);"
                    "INSERT INTO ledger_rows VALUES (1, 10.00)")
    write_config(ws, source, target, "trigger", ["LEDGER_ROWS"])
    if command in ("run", "status", "reconcile"):  # a pair that ran under the right name first
        write_config(ws, source, target, "trigger", ["ledger_rows"])
        for step in ("init", "install"):
            cdc_ok(ws, step)
        cdc_ok(ws, "run", "--once")
        write_config(ws, source, target, "trigger", ["LEDGER_ROWS"])
    result = ws.cdc(command, *(["--once"] if command == "run" else []), str(ws.config))
    expected = ("tables.LEDGER_ROWS: source table 'LEDGER_ROWS' is stored as 'ledger_rows' in src: write the name "
                f"as the database stores it ({ws.config.name} line 9)")
    output = result.stdout + result.stderr
    if command == "status":
        assert result.returncode == 1 and expected in output, output
    else:
        assert result.returncode == 2 and expected in result.stderr, output
    assert "Traceback" not in output


def test_a_target_table_named_in_another_case_is_one_config_error(ws):
    source, target = str(ws.root / "source.db"), str(ws.root / "target.db")
    execute(source, "CREATE TABLE ledger_rows (id INTEGER PRIMARY KEY, amount NUMERIC(18,2) NOT NULL)")
    execute(target, "CREATE TABLE Ledger_Rows (id INTEGER PRIMARY KEY, amount NUMERIC(18,2) NOT NULL)")
    (ws.root / "m.yaml").write_text("tables:\n  ledger_rows:\n    target: LEDGER_ROWS\n", encoding="utf-8")
    write_config(ws, source, target, "trigger", mapping="m.yaml")
    for command in ("check", "init"):
        result = ws.cdc(command, str(ws.config))
        assert result.returncode == 2, result.stdout + result.stderr
        assert "tables.ledger_rows: target table 'LEDGER_ROWS' is stored as 'Ledger_Rows' in dst: write " \
               "`target: Ledger_Rows` (m.yaml line 2)" in result.stderr, result.stderr


def test_a_changed_source_timezone_copies_the_tables_again(ws):
    """Zone-less timestamps are read in the pair's source_timezone: under another zone the rows the
    target has hold other values, and no change will ever correct the rows nobody touches."""
    source, target = str(ws.root / "source.db"), str(ws.root / "target.db")
    execute(source, SCHEMAS["sqlite"])
    fill(source, ENTRIES, range(1, 21))  # booked at 12:00: 2 May at UTC+12, but 1 May when 12:00 is Oslo's
    (ws.root / "m.yaml").write_text("tables:\n  entries:\n    columns:\n      id: id\n      day: {from: booked_at, "
                                    "transforms: [{date_from_timestamp: Etc/GMT-12}]}\n", encoding="utf-8")
    write_config(ws, source, target, "trigger", mapping="m.yaml")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    assert "snapshot 20 rows" in cdc_ok(ws, "run", "--once").stdout
    day = "SELECT DISTINCT day FROM entries"
    assert execute(target, day) == [("2024-05-02",)]
    write_config(ws, source, target, "trigger", mapping="m.yaml", source_timezone="Europe/Oslo")
    assert statuses(ws) == {"entries": {"phase": "not copied yet",
                                        "reason": "the pair's source_timezone changed from UTC to Europe/Oslo"}}
    assert "snapshot 20 rows" in cdc_ok(ws, "run", "--once").stdout
    assert execute(target, day) == [("2024-05-01",)]
    assert stored_identity(target, "entries")["zone"] == "Europe/Oslo"
    assert statuses(ws) == {"entries": {"phase": "streaming", "old_rows": True}}  # copied over its own rows
