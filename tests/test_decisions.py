"""The decision step, as the issue's accountant met it: unmapped-only updates skipped, edits in the
target found as conflicts (audited with the row the change really replaced), manual conflicts and
parked changes holding their key while other keys flow on."""

from __future__ import annotations

import json

import pytest

MAPPING = """\
tables:
  invoices:
    target: ledger
    conflict: {policy}
    columns:
      id: id
      amount: amount
"""


@pytest.fixture
def pair(ws):
    """SQLite trigger source -> SQLite target; ``pair(policy, on_error)`` writes the config."""
    ws.sql(ws.source, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount NUMERIC(12,2), note TEXT)")
    ws.sql(ws.target, "CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount NUMERIC(12,2) CHECK (amount < 1000000))")

    def make(policy: str = "source_wins", on_error: str = "park") -> None:
        (ws.root / "m.yaml").write_text(MAPPING.format(policy=policy), encoding="utf-8")
        ws.write_config(f"source: src\ntarget: dst\ncapture: trigger\nmapping: m.yaml\non_error: {on_error}")
        for command in ("init", "install"):
            assert ws.cdc(command, str(ws.config)).returncode == 0
        run(ws)  # the snapshot of the empty table
        ws.sql(ws.source, "INSERT INTO invoices VALUES (1, 10000, 'a'), (2, 500, 'b'), (1000, 7, 'c')")
        run(ws)
        # new rows into an untouched target: plainly applied, no conflict
        assert ws.query(ws.target, "SELECT key, decision FROM cdc_audit_log WHERE op <> 'snapshot' ORDER BY id") == [
            ("[1]", "applied"), ("[2]", "applied"), ("[1000]", "applied")]

    return make


def run(ws, code: int = 0):
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == code, result.stdout + result.stderr
    return result


def audit(ws, since: int = 0) -> list[tuple]:
    return ws.query(ws.target, "SELECT key, op, decision, policy, before, after FROM cdc_audit_log "
                               "WHERE op <> 'snapshot' AND id > ? ORDER BY id", since)


def last_audit_id(ws) -> int:
    return ws.query(ws.target, "SELECT coalesce(max(id), 0) FROM cdc_audit_log")[0][0]


def amounts(ws) -> dict:
    return {i: str(a) for i, a in ws.query(ws.target, "SELECT id, amount FROM ledger")}


def test_an_update_of_an_unmapped_column_neither_writes_nor_undoes_the_accountants_correction(ws, pair):
    pair()
    ws.sql(ws.target, "UPDATE ledger SET amount = 9999 WHERE id = 1")  # the accountant's correction
    mark = last_audit_id(ws)
    ws.sql(ws.source, "UPDATE invoices SET note = 'only the note' WHERE id = 1")
    result = run(ws)
    assert amounts(ws)[1] in ("9999", "9999.00")
    assert audit(ws, mark) == []  # not a change to the target: no audit row
    assert "1 skipped" in result.stdout, result.stdout


def test_source_wins_applies_and_audits_the_target_row_it_replaced(ws, pair):
    pair("source_wins")
    ws.sql(ws.target, "UPDATE ledger SET amount = 9999 WHERE id = 1")
    mark = last_audit_id(ws)
    ws.sql(ws.source, "UPDATE invoices SET amount = 10001 WHERE id = 1")
    run(ws)
    assert amounts(ws)[1] in ("10001", "10001.00")
    ((key, op, decision, policy, before, after),) = audit(ws, mark)
    assert (key, op, decision, policy) == ("[1]", "update", "conflict", "source_wins")
    assert json.loads(before)["amount"] in ("9999", "9999.00", 9999)  # the row it really replaced
    assert json.loads(after)["amount"] in ("10001", "10001.00")


def test_target_wins_keeps_the_edit_and_says_so(ws, pair):
    pair("target_wins")
    ws.sql(ws.target, "UPDATE ledger SET amount = 9999 WHERE id = 1")
    mark = last_audit_id(ws)
    ws.sql(ws.source, "UPDATE invoices SET amount = 10001 WHERE id = 1; UPDATE invoices SET amount = 501 WHERE id = 2")
    run(ws)
    assert amounts(ws)[1] in ("9999", "9999.00") and amounts(ws)[2] in ("501", "501.00")
    rows = audit(ws, mark)
    assert [(k, d, p) for k, _, d, p, _, _ in rows] == [("[1]", "conflict", "target_wins"), ("[2]", "applied", None)]


def test_a_row_a_person_inserted_is_a_conflict_not_a_silent_overwrite(ws, pair):
    pair("target_wins")
    ws.sql(ws.target, "INSERT INTO ledger VALUES (2000, 42)")
    mark = last_audit_id(ws)
    ws.sql(ws.source, "INSERT INTO invoices VALUES (2000, 77, 'x')")
    run(ws)
    assert amounts(ws)[2000] in ("42", "42.00")
    ((key, op, decision, policy, before, _),) = audit(ws, mark)
    assert (op, decision, policy) == ("insert", "conflict", "target_wins")
    assert json.loads(before)["amount"] in ("42", "42.00", 42)  # not NULL: the row that was there


def test_manual_parks_the_conflict_and_holds_later_changes_of_its_key_only(ws, pair):
    pair("manual")
    ws.sql(ws.target, "UPDATE ledger SET amount = 9999 WHERE id = 1")
    ws.sql(ws.source, "UPDATE invoices SET amount = 10001 WHERE id = 1")
    ws.sql(ws.source, "UPDATE invoices SET amount = 10002 WHERE id = 1; UPDATE invoices SET amount = 502 WHERE id = 2")
    run(ws)
    run(ws)  # again: the conflict still holds its key
    ws.sql(ws.source, "UPDATE invoices SET amount = 10003 WHERE id = 1")
    run(ws)
    assert amounts(ws)[1] in ("9999", "9999.00") and amounts(ws)[2] in ("502", "502.00")
    ((status, policy, source_key),) = ws.query(ws.target, "SELECT status, policy, source_key FROM cdc_conflicts")
    assert (status, policy, json.loads(source_key)) == ("open", "manual", [1])
    held = ws.query(ws.target, "SELECT key, status, kind, blocked_by FROM cdc_dead_letters ORDER BY id")
    assert held == [("[1]", "held", "held", "conflict 1")] * 2


def test_a_parked_change_holds_its_key_and_other_keys_flow_on(ws, pair):
    pair("source_wins", on_error="park")
    ws.sql(ws.source, "UPDATE invoices SET amount = 2000000 WHERE id = 1")  # the CHECK refuses it
    ws.sql(ws.source, "UPDATE invoices SET amount = 11 WHERE id = 1; UPDATE invoices SET amount = 503 WHERE id = 2")
    run(ws)
    assert amounts(ws)[1] in ("10000", "10000.00") and amounts(ws)[2] in ("503", "503.00")
    letters = ws.query(ws.target, "SELECT key, status, kind FROM cdc_dead_letters ORDER BY id")
    assert letters == [("[1]", "parked", "error"), ("[1]", "held", "held")]
    decisions = [d for _, _, d, _, _, _ in audit(ws)]
    assert decisions.count("parked") == 1 and decisions.count("held") == 1


def test_under_capture_timestamp_an_edit_in_the_target_is_found_by_the_row_hash(ws):
    """No before image: the hash of the row this pair last wrote tells an edit in the target (and
    target_wins keeps it), and a row touched without a change to its mapped columns is skipped."""
    ws.sql(ws.source, "CREATE TABLE products (id INTEGER PRIMARY KEY, price NUMERIC(10,2), updated_at TEXT)")
    (ws.root / "m.yaml").write_text("tables:\n  products:\n    conflict: target_wins\n"
                                    "    columns: {id: id, price: price}\n", encoding="utf-8")
    ws.write_config("source: src\ntarget: dst\ncapture: timestamp\nmapping: m.yaml\n"
                    "timestamp: {column: updated_at, overlap_seconds: 30}")
    assert ws.cdc("init", str(ws.config)).returncode == 0
    ws.sql(ws.source, "INSERT INTO products VALUES (1, 10, '2026-01-01 10:00:00'), (2, 20, '2026-01-01 10:00:00')")
    run(ws)  # the snapshot: it stores the hash of each row it copies, and its mark
    hashes = "SELECT key_digest, row_hash FROM cdc_row_hashes WHERE key_digest <> 'hashing' ORDER BY key_digest"
    copied = ws.query(ws.target, hashes)
    assert len(copied) == 3 and ("whole", "whole") in copied
    ws.sql(ws.source, "UPDATE products SET price = 11, updated_at = '2026-01-01 10:00:01' WHERE id IN (1, 2)")
    run(ws)  # written by the stream: the hashes of the rows it wrote replace the copy's
    streamed = ws.query(ws.target, hashes)
    assert len(streamed) == 3 and len(set(copied) - set(streamed)) == 2
    ws.sql(ws.target, "UPDATE products SET price = 99 WHERE id = 1")  # the person's edit
    mark = last_audit_id(ws)
    ws.sql(ws.source, "UPDATE products SET price = 12, updated_at = '2026-01-01 10:00:02' WHERE id IN (1, 2)")
    run(ws)
    assert {i: str(p) for i, p in ws.query(ws.target, "SELECT id, price FROM products")} in (
        {1: "99", 2: "12"}, {1: "99.00", 2: "12.00"})
    decisions = [(k, d, p) for k, _, d, p, _, _ in audit(ws, mark)]
    assert decisions == [("[1]", "conflict", "target_wins"), ("[2]", "applied", None)]
    mark = last_audit_id(ws)
    ws.sql(ws.source, "UPDATE products SET updated_at = '2026-01-01 10:00:03' WHERE id = 2")  # touched only
    result = run(ws)
    assert audit(ws, mark) == [] and "1 skipped" in result.stdout, result.stdout


# -- what the hostile review found -------------------------------------------------------------
def test_after_a_discarded_change_the_next_one_is_no_false_conflict(ws, pair):
    """The target never got the discarded row, so the next change's before image is not the target
    row: that is the pair's doing, not a person's edit (target_wins would have kept a stale row)."""
    pair("target_wins")
    ws.sql(ws.source, "UPDATE invoices SET amount = 2000000 WHERE id = 1")  # the CHECK refuses it
    run(ws)
    assert ws.cdc("dead-letters", "discard", str(ws.config), "1", "--reason", "typo").returncode == 0
    mark = last_audit_id(ws)
    ws.sql(ws.source, "UPDATE invoices SET amount = 150 WHERE id = 1")
    run(ws)
    assert amounts(ws)[1] in ("150", "150.00")
    assert [(k, d) for k, _, d, _, _, _ in audit(ws, mark)] == [("[1]", "applied")]


def test_a_refused_change_holds_its_key_in_the_parts_after_it(ws, pair):
    """batch_size 1: each change is a part of one target transaction; the one after a refused
    change of the same key waits behind it, it is not applied over it as a 'conflict'."""
    pair("source_wins")
    ws.write_config("source: src\ntarget: dst\ncapture: trigger\nmapping: m.yaml\non_error: park\nbatch_size: 1")
    ws.sql(ws.source, "UPDATE invoices SET amount = 2000000 WHERE id = 1")
    ws.sql(ws.source, "UPDATE invoices SET amount = 7 WHERE id = 1")
    run(ws)
    assert amounts(ws)[1] in ("10000", "10000.00")
    assert ws.query(ws.target, "SELECT key, status FROM cdc_dead_letters ORDER BY id") == [("[1]", "parked"),
                                                                                          ("[1]", "held")]
    assert ws.query(ws.target, "SELECT count(*) FROM cdc_audit_log WHERE decision = 'conflict'") == [(0,)]


@pytest.mark.parametrize("setting, decision", [("skip", "skipped"), ("conflict", "conflict")])
def test_a_delete_whose_target_row_is_gone_follows_delete_missing(ws, pair, setting, decision):
    pair("target_wins")
    text = (ws.root / "m.yaml").read_text(encoding="utf-8")
    (ws.root / "m.yaml").write_text(text.replace("    conflict:", f"    delete_missing: {setting}\n    conflict:"),
                                    encoding="utf-8")
    ws.sql(ws.target, "DELETE FROM ledger WHERE id = 2")  # a person deleted it
    mark = last_audit_id(ws)
    ws.sql(ws.source, "DELETE FROM invoices WHERE id = 2")
    run(ws)
    assert [(k, op, d) for k, op, d, _, _, _ in audit(ws, mark)] == [("[2]", "delete", decision)]


def test_a_value_the_source_cannot_read_is_parked_by_the_target_not_a_stop(ws, pair):
    pair("source_wins")
    ws.sql(ws.source, "INSERT INTO invoices VALUES (5, 'abc', 'x'), (6, 60, 'y')")  # SQLite keeps the text
    result = run(ws)
    assert "1 parked" in result.stdout, result.stdout
    assert amounts(ws)[6] in ("60", "60.00") and 5 not in amounts(ws)
    ((key, column),) = ws.query(ws.target, "SELECT key, column_name FROM cdc_dead_letters")
    assert (key, column) == ("[5]", "amount")


def test_resolving_a_conflict_twice_is_refused_and_releases_nothing(ws, pair):
    pair("manual")
    ws.sql(ws.target, "UPDATE ledger SET amount = 9999 WHERE id = 1")
    ws.sql(ws.source, "UPDATE invoices SET amount = 10001 WHERE id = 1")
    run(ws)
    assert ws.cdc("conflicts", "resolve", str(ws.config), "1", "--take", "target").returncode == 0
    ws.sql(ws.source, "UPDATE invoices SET amount = 10002 WHERE id = 1")
    run(ws)  # the person's row stands, so this is a new conflict (2)
    again = ws.cdc("conflicts", "resolve", str(ws.config), "1", "--take", "target")
    assert again.returncode == 2 and "resolved already" in again.stderr, again.stdout + again.stderr
    assert ws.query(ws.target, "SELECT id, status FROM cdc_conflicts ORDER BY id") == [(1, "resolved"), (2, "open")]


@pytest.mark.parametrize("mapping, pair_line, message", [
    ("    conflict: {newest_wins: updatd_at}\n", "",
     "tables.invoices.conflict.newest_wins: 'updatd_at' is not a target column the mapping writes to ledger"),
    ("", "closed_before: 2026-02-30\n", "pairs.p.closed_before: '2026-02-30' is not a valid value (day is out of range"),
])
def test_new_keys_typed_wrong_are_one_line_errors(ws, mapping, pair_line, message):
    ws.sql(ws.source, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount NUMERIC(12,2), updated_at TEXT)")
    (ws.root / "m.yaml").write_text("tables:\n  invoices:\n    target: ledger\n" + mapping + "    period: updated_at\n",
                                    encoding="utf-8")
    ws.write_config("source: src\ntarget: dst\nmapping: m.yaml\n" + pair_line)
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("policy, kept", [("manual", True), ("target_wins", True), ("source_wins", False)])
def test_a_key_change_over_a_row_the_accountant_corrected_is_a_conflict(ws, pair, policy, kept):
    """The source moves row 2 to key 2002 after the accountant corrected row 2: the delete of the old key
    would take the correction away unseen (only the new key was compared)."""
    pair(policy)
    ws.sql(ws.target, "UPDATE ledger SET amount = 888 WHERE id = 2")
    mark = last_audit_id(ws)
    ws.sql(ws.source, "UPDATE invoices SET id = 2002 WHERE id = 2")
    run(ws)
    ((key, op, decision, audited_policy, before, _),) = audit(ws, mark)
    assert (op, decision) == ("update", "conflict") and audited_policy.startswith(policy), audit(ws, mark)
    assert json.loads(before)["amount"] in ("888", "888.00", 888)  # the row as the accountant left it
    assert (amounts(ws).get(2) in ("888", "888.00"), 2002 in amounts(ws)) == ((True, False) if kept else (False, True))


def test_row_hashes_of_a_table_that_stops_keeping_them_are_dropped_and_status_says_the_copy_has_none(ws):
    """Detection off for a while: the pair writes without hashes, so the old ones would go stale and,
    with detection on again, make rows the pair wrote itself look like a person's (under target_wins
    they then never followed the source again). They are dropped; `cdc status` says the table's rows
    have no hashes until it is copied again, and `--resnapshot` stores them."""
    ws.sql(ws.source, "CREATE TABLE products (id INTEGER PRIMARY KEY, price NUMERIC(10,2), updated_at TEXT)")
    (ws.root / "m.yaml").write_text("tables:\n  products:\n    conflict: target_wins\n", encoding="utf-8")
    config = "source: src\ntarget: dst\ncapture: timestamp\nmapping: m.yaml\ntimestamp: {column: updated_at}\n"
    ws.write_config(config)
    assert ws.cdc("init", str(ws.config)).returncode == 0
    ws.sql(ws.source, "INSERT INTO products VALUES (1, 10, '2026-01-01 10:00:00'), (2, 20, '2026-01-01 10:00:00')")
    run(ws)
    assert ws.query(ws.target, "SELECT count(*) FROM cdc_row_hashes")[0][0] == 4  # two rows and two marks
    ws.write_config(config + "detect_conflicts: false")
    run(ws)
    assert ws.query(ws.target, "SELECT count(*) FROM cdc_row_hashes")[0][0] == 0
    ws.sql(ws.source, "UPDATE products SET price = 11, updated_at = '2026-01-01 10:00:01' WHERE id = 1")
    run(ws)
    ws.write_config(config)
    status = ws.cdc("status", str(ws.config))
    assert "table products: conflicts are found by row hash, but its copy stored none" in status.stdout, status.stdout
    mark = last_audit_id(ws)
    ws.sql(ws.source, "UPDATE products SET price = 12, updated_at = '2026-01-01 10:00:02' WHERE id = 1")
    run(ws)
    assert [(k, d) for k, _, d, _, _, _ in audit(ws, mark)] == [("[1]", "applied")]  # the pair's own row: no conflict
    assert {i: str(p) for i, p in ws.query(ws.target, "SELECT id, price FROM products")}[1] in ("12", "12.00")
    assert ws.cdc("run", "--once", "--resnapshot", str(ws.config)).returncode == 0
    assert "row hash" not in ws.cdc("status", str(ws.config)).stdout
