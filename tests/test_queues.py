"""`cdc dead-letters list|show|retry|discard` and `cdc conflicts list|show|resolve`, end to end through
`cdc run` on real SQLite databases: what the target refuses is parked, later changes of its key wait
behind it, and the commands make the target equal to the source with an audit row for every step."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import sqlalchemy as sa

SOURCE = "CREATE TABLE entries (id INTEGER PRIMARY KEY, amount NUMERIC(12,2) NOT NULL, memo TEXT)"
#: The target refuses amounts of 1000 and more: what the user fixes by rebuilding it without the CHECK.
STRICT = ("CREATE TABLE entries (id INTEGER PRIMARY KEY, amount NUMERIC(12,2) NOT NULL CHECK (amount < 1000), "
          "memo TEXT)")
RELAXED = """
CREATE TABLE entries_new (id INTEGER PRIMARY KEY, amount NUMERIC(12,2) NOT NULL, memo TEXT);
INSERT INTO entries_new SELECT * FROM entries;
DROP TABLE entries;
ALTER TABLE entries_new RENAME TO entries;
"""


def _setup(ws, *, rules: str = "", mapping: str | None = None, target: str = STRICT, seed: str = "") -> None:
    """A trigger-capture pair entries -> entries with on_error park, initialised, installed, copied
    (the source's rows: ``seed``)."""
    ws.sql(ws.source, SOURCE + ";" + seed)
    if target:
        ws.sql(ws.target, target)
    lines = ["source: src", "target: dst", "capture: trigger", "on_error: park"]
    if mapping is not None:
        (ws.root / "mapping.yaml").write_text(mapping, encoding="utf-8")
        lines.append("mapping: mapping.yaml")
    else:
        lines.append("tables: [entries]")
    ws.write_config("\n".join(lines + [r for r in rules.splitlines() if r.strip()]))
    for command in ("init", "install"):
        _ok(ws, command, str(ws.config))
    _ok(ws, "run", "--once", str(ws.config))


def _cdc(ws, *args: str) -> subprocess.CompletedProcess:
    result = ws.cdc(*args)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _ok(ws, *args: str) -> subprocess.CompletedProcess:
    result = _cdc(ws, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _letters(ws, *args: str) -> list[dict]:
    return json.loads(_ok(ws, "dead-letters", "list", str(ws.config), "--json", *args).stdout)


def _audit(ws, where: str = "1 = 1") -> list[tuple]:
    return ws.query(ws.target, f"SELECT reason, decision, policy, detail, key FROM cdc_audit_log WHERE {where} "
                               "ORDER BY id")


def _entries(ws, db) -> list[tuple]:
    return ws.query(db, "SELECT id, CAST(amount AS TEXT), memo FROM entries ORDER BY id")


def _park_with_held(ws, fixed_amount: int | None = None) -> None:
    """Key 1 refused (amount 5000), then two later changes of key 1 held behind it (the first sets
    ``fixed_amount`` when given, else only the memo: the source's row stays too big); key 2 flows on."""
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 5000, 'big'); INSERT INTO entries VALUES (2, 10, 'small')")
    _ok(ws, "run", "--once", str(ws.config))
    change = f"amount = {fixed_amount}" if fixed_amount is not None else "memo = 'later'"
    ws.sql(ws.source, f"UPDATE entries SET {change} WHERE id = 1")
    ws.sql(ws.source, "UPDATE entries SET memo = 'fixed' WHERE id = 1")
    _ok(ws, "run", "--once", str(ws.config))


def test_list_and_show_the_open_letters_with_their_queue(ws):
    _setup(ws)
    _park_with_held(ws)
    letters = _letters(ws)
    assert [(d["key"], d["status"], d["kind"], d["op"]) for d in letters] == [
        ([1], "parked", "error", "insert"), ([1], "held", "held", "update"), ([1], "held", "held", "update")]
    head = letters[0]["id"]
    assert "CHECK constraint failed" in letters[0]["error"] and letters[0]["blocked_by"] is None
    assert {d["blocked_by"] for d in letters[1:]} == {f"dead letter {head}"}
    assert "change" not in letters[0]  # the images are for show
    text = _ok(ws, "dead-letters", "list", str(ws.config)).stdout.splitlines()
    assert len(text) == 3 and "entries -> entries (1)" in text[0] and "parked" in text[0]
    assert f"held behind dead letter {head}" in text[1]
    shown = _ok(ws, "dead-letters", "show", str(ws.config), str(head)).stdout
    assert "status       parked" in shown and "CHECK constraint failed" in shown
    assert "after   id=1, amount=5000.00, memo=big" in shown
    full = json.loads(_ok(ws, "dead-letters", "show", str(ws.config), str(head), "--json").stdout)
    assert full["change"]["after"] == {"id": 1, "amount": "5000.00", "memo": "big"}
    assert _letters(ws, "--status", "held", "--table", "entries")[0]["status"] == "held"
    assert _letters(ws, "--status", "retried") == []
    status = json.loads(_cdc(ws, "status", "--json", str(ws.config)).stdout)[0]
    assert status["dead_letters"] == 3 and status["conflicts"] == 0 and not status["healthy"]


def test_a_missing_id_and_a_bad_status_are_one_line_errors(ws):
    _setup(ws)
    for args in (("dead-letters", "show", str(ws.config), "999"), ("conflicts", "show", str(ws.config), "7"),
                 ("dead-letters", "retry", str(ws.config), "999"),
                 ("dead-letters", "discard", str(ws.config), "999", "--reason", "x"),
                 ("conflicts", "resolve", str(ws.config), "7", "--take", "source")):
        result = _cdc(ws, *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "no dead letter 999" in result.stderr or "no conflict 7" in result.stderr
    result = _cdc(ws, "dead-letters", "list", str(ws.config), "--status", "parkd")
    assert result.returncode == 2 and "--status 'parkd'" in result.stderr
    result = _cdc(ws, "dead-letters", "discard", str(ws.config), "1")
    assert result.returncode == 2 and "--reason" in result.stderr
    result = _cdc(ws, "dead-letters", "retry", str(ws.config))
    assert result.returncode == 2 and "--all" in result.stderr


def test_a_retry_the_target_still_refuses_stays_parked_and_changes_nothing(ws):
    _setup(ws)
    _park_with_held(ws)
    head = _letters(ws)[0]["id"]
    before = ws.query(ws.target, "SELECT count(*) FROM cdc_audit_log WHERE reason = 'retry'")
    result = _cdc(ws, "dead-letters", "retry", str(ws.config), str(head))
    assert result.returncode == 1 and "refused again, still parked" in result.stdout
    assert "CHECK constraint failed" in result.stdout
    assert _entries(ws, ws.target) == [(2, "10", "small")]  # nothing of key 1 reached the target
    letters = _letters(ws)
    assert [(d["id"], d["status"]) for d in letters][0] == (head, "parked") and len(letters) == 3
    assert "refused again" in letters[0]["note"] and before == [(0,)]
    blocked = _cdc(ws, "dead-letters", "retry", str(ws.config), str(letters[1]["id"]))
    assert blocked.returncode == 1 and f"waits behind dead letter {head} of the same key" in blocked.stdout
    detail = f"retry of dead letter {head} refused: {letters[0]['error']}"
    assert _audit(ws, "reason = 'retry'") == [("retry", "parked", "error", detail, "[1]")]


def test_retry_after_the_target_is_fixed_applies_the_source_row_and_supersedes_the_held(ws):
    _setup(ws)
    _park_with_held(ws)
    head = _letters(ws)[0]["id"]
    ws.sql(ws.target, RELAXED)  # the user fixes the target
    result = _ok(ws, "dead-letters", "retry", str(ws.config), str(head))
    assert f"dead letter {head} retried" in result.stdout and "2 held change(s) behind it superseded" in result.stdout
    assert _entries(ws, ws.target) == _entries(ws, ws.source) == [(1, "5000", "fixed"), (2, "10", "small")]
    rows = {d["id"]: d for d in _letters(ws, "--status", "all")}
    assert rows[head]["status"] == "retried" and rows[head]["resolved_at"]
    assert [d["status"] for i, d in sorted(rows.items()) if i != head] == ["resolved", "resolved"]
    assert all(f"retry of dead letter {head}" in d["note"] for i, d in rows.items() if i != head)
    assert _audit(ws, "reason = 'retry'") == [("retry", "retried", None, None, "[1]")]
    assert _letters(ws) == []
    assert _cdc(ws, "status", str(ws.config)).returncode == 0
    assert _cdc(ws, "reconcile", str(ws.config), "--settle", "0").returncode == 0
    # Later changes of the key flow again.
    ws.sql(ws.source, "UPDATE entries SET amount = 2500 WHERE id = 1")
    _ok(ws, "run", "--once", str(ws.config))
    assert _entries(ws, ws.target)[0] == (1, "2500", "fixed")
    assert _letters(ws) == []


def test_a_resnapshot_says_which_letters_stay_open_and_a_retry_then_settles_them(ws):
    """--resnapshot copies the source's rows over parked keys but settles no letter (a key deleted at
    the source keeps its target row until a repair): it says how many stay open and what settles them."""
    _setup(ws)
    _park_with_held(ws)
    ws.sql(ws.target, RELAXED)
    result = _ok(ws, "run", "--once", "--resnapshot", str(ws.config))
    assert "3 dead letter(s) stay open through the copy" in result.stderr, result.stderr
    assert "cdc dead-letters retry" in result.stderr
    assert _entries(ws, ws.target) == _entries(ws, ws.source) == [(1, "5000", "fixed"), (2, "10", "small")]
    head = _letters(ws)[0]["id"]
    assert len(_letters(ws)) == 3
    _ok(ws, "dead-letters", "retry", str(ws.config), str(head))
    assert _letters(ws) == [] and _entries(ws, ws.target) == _entries(ws, ws.source)
    again = _ok(ws, "run", "--once", "--resnapshot", str(ws.config))
    assert "stay open" not in again.stderr, again.stderr


def test_retry_of_a_row_the_source_deleted_meanwhile_deletes_nothing_and_closes_the_letter(ws):
    _setup(ws)
    _park_with_held(ws)
    head = _letters(ws)[0]["id"]
    ws.sql(ws.source, "DELETE FROM entries WHERE id = 1")  # held behind as well
    _ok(ws, "run", "--once", str(ws.config))
    result = _ok(ws, "dead-letters", "retry", str(ws.config), str(head))
    assert "nothing to apply" in result.stdout
    assert _entries(ws, ws.target) == _entries(ws, ws.source) == [(2, "10", "small")]
    assert _letters(ws) == []
    (detail,), = ws.query(ws.target, "SELECT detail FROM cdc_audit_log WHERE reason = 'retry'")
    assert detail.startswith("retried: nothing to apply")


def test_discard_is_audited_and_releases_the_held_changes_in_order(ws):
    _setup(ws)
    _park_with_held(ws, fixed_amount=50)
    head, *held = [d["id"] for d in _letters(ws)]
    result = _ok(ws, "dead-letters", "discard", str(ws.config), str(head), "--reason", "booked by hand")
    assert f"dead letter {head} discarded; 2 held change(s) behind it released: 2 applied" in result.stdout
    # The updates, applied in order on a row the insert never made: update_missing inserts it.
    assert _entries(ws, ws.target) == _entries(ws, ws.source) == [(1, "50", "fixed"), (2, "10", "small")]
    rows = {d["id"]: d for d in _letters(ws, "--status", "all")}
    assert rows[head]["status"] == "discarded" and rows[head]["note"] == "booked by hand"
    assert [rows[i]["status"] for i in held] == ["retried", "retried"]
    assert all(f"dead letter {head} was discarded" in rows[i]["note"] for i in held)
    discarded = _audit(ws, "decision = 'discarded'")
    assert discarded == [("discard", "discarded", None, "booked by hand", "[1]")]
    assert _cdc(ws, "dead-letters", "discard", str(ws.config), str(head), "--reason", "again").returncode == 2


def test_a_released_change_the_target_refuses_is_parked_again_and_holds_the_rest(ws):
    _setup(ws)
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 5000, 'big')")
    _ok(ws, "run", "--once", str(ws.config))
    ws.sql(ws.source, "UPDATE entries SET amount = 6000 WHERE id = 1")  # still too big
    ws.sql(ws.source, "UPDATE entries SET amount = 60 WHERE id = 1")
    _ok(ws, "run", "--once", str(ws.config))
    head, second, third = [d["id"] for d in _letters(ws)]
    _ok(ws, "dead-letters", "discard", str(ws.config), str(head), "--reason", "wrong amount")
    open_now = _letters(ws)
    assert [(d["status"], d["op"]) for d in open_now] == [("parked", "update"), ("held", "update")]
    assert open_now[0]["id"] > third and "CHECK constraint failed" in open_now[0]["error"]
    assert _entries(ws, ws.target) == []  # nothing lost, nothing applied out of order
    ws.sql(ws.target, RELAXED)
    _ok(ws, "dead-letters", "retry", str(ws.config), "--all")
    assert _entries(ws, ws.target) == _entries(ws, ws.source) == [(1, "60", "big")]


def test_retry_waits_for_or_refuses_a_running_pair(ws):
    _setup(ws)
    _park_with_held(ws)
    head = _letters(ws)[0]["id"]
    run = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while json.loads(_cdc(ws, "status", "--json", str(ws.config)).stdout)[0]["state"] != "running":
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.2)
        for args in (("dead-letters", "retry", str(ws.config), str(head)),
                     ("dead-letters", "discard", str(ws.config), str(head), "--reason", "x")):
            result = _cdc(ws, *args)
            assert result.returncode == 3, result.stdout + result.stderr
            assert "running elsewhere" in result.stderr and f"`cdc dead-letters {args[1]} --wait`" in result.stderr
        assert _letters(ws)[0]["status"] == "parked"
    finally:
        run.terminate()
        run.wait(60)
    ws.sql(ws.target, RELAXED)
    _ok(ws, "dead-letters", "retry", str(ws.config), str(head), "--wait")
    assert _entries(ws, ws.target) == _entries(ws, ws.source)


MANUAL = "conflict: manual"


def _conflicted(ws) -> int:
    """A person edits target row 1, then the source changes it: a manual conflict, and a later change
    of the key held behind it. Returns the conflict's id."""
    _setup(ws, rules=MANUAL, target="", seed="INSERT INTO entries VALUES (1, 100, 'a'), (2, 20, 'b')")
    ws.sql(ws.target, "UPDATE entries SET amount = 99 WHERE id = 1")  # the accountant's correction
    ws.sql(ws.source, "UPDATE entries SET memo = 'source edit' WHERE id = 1")
    _ok(ws, "run", "--once", str(ws.config))
    ws.sql(ws.source, "UPDATE entries SET amount = 120 WHERE id = 1")
    ws.sql(ws.source, "UPDATE entries SET amount = 25 WHERE id = 2")
    _ok(ws, "run", "--once", str(ws.config))
    found = json.loads(_ok(ws, "conflicts", "list", str(ws.config), "--json").stdout)
    assert [(c["key"], c["status"], c["policy"]) for c in found] == [([1], "open", "manual")]
    return found[0]["id"]


def test_a_resnapshot_is_refused_while_a_conflict_is_open_and_moves_nothing(ws):
    """A copy would write the source's row over a key with an open manual conflict: refused, naming
    the fix; the person's row stays, and once the conflict is resolved the copy runs."""
    number = _conflicted(ws)
    before = _entries(ws, ws.target)
    result = _cdc(ws, "run", "--once", "--resnapshot", str(ws.config))
    assert result.returncode == 1 and "1 conflict(s) are open" in result.stderr, result.stderr
    assert "cdc conflicts resolve" in result.stderr
    assert _entries(ws, ws.target) == before != _entries(ws, ws.source)
    assert ws.query(ws.target, "SELECT count(*) FROM cdc_checkpoints") == [(1,)]
    _ok(ws, "conflicts", "resolve", str(ws.config), str(number), "--take", "source")
    _ok(ws, "run", "--once", "--resnapshot", str(ws.config))
    assert _entries(ws, ws.target) == _entries(ws, ws.source)


def test_conflicts_list_show_and_resolve_taking_the_source(ws):
    number = _conflicted(ws)
    assert ws.query(ws.target, "SELECT amount FROM entries WHERE id = 2") == [(25,)]  # other keys flow on
    held = _letters(ws)
    assert [(d["status"], d["blocked_by"]) for d in held] == [("held", f"conflict {number}")]
    shown = _ok(ws, "conflicts", "show", str(ws.config), str(number)).stdout
    assert "policy       manual" in shown and "memo=source edit" in shown and "amount=99" in shown
    status = json.loads(_cdc(ws, "status", "--json", str(ws.config)).stdout)[0]
    assert status["conflicts"] == 1 and status["dead_letters"] == 1 and not status["healthy"]
    result = _ok(ws, "conflicts", "resolve", str(ws.config), str(number), "--take", "source")
    assert "the source's change applied; 1 held change(s) behind it released: 1 applied" in result.stdout
    assert _entries(ws, ws.target) == _entries(ws, ws.source) == [(1, "120", "source edit"), (2, "25", "b")]
    found = json.loads(_ok(ws, "conflicts", "list", str(ws.config), "--status", "all", "--json").stdout)
    assert [(c["status"], c["resolution"]) for c in found] == [("resolved", "source")]
    assert _letters(ws) == [] and _cdc(ws, "status", str(ws.config)).returncode == 0
    resolved = _audit(ws, "reason = 'resolve'")
    assert [(r[1], r[2]) for r in resolved][0] == ("resolved", "manual: source")
    again = _cdc(ws, "conflicts", "resolve", str(ws.config), str(number), "--take", "target")
    assert again.returncode == 2 and "resolved already" in again.stderr


def test_resolve_taking_the_target_keeps_its_row_and_audits_it(ws):
    number = _conflicted(ws)
    result = _ok(ws, "conflicts", "resolve", str(ws.config), str(number), "--take", "target")
    assert "the target row kept" in result.stdout
    kept = _audit(ws, "detail = 'resolved: kept the target row'")
    assert kept == [("resolve", "conflict", "manual", "resolved: kept the target row", "[1]")]
    (before, after), = ws.query(ws.target, "SELECT before, after FROM cdc_audit_log WHERE detail = "
                                           "'resolved: kept the target row'")
    assert json.loads(after) == {"id": 1, "amount": "99.00", "memo": "a"} and before == after
    # The held change (amount 120, whose before image says 100) meets the kept row 99: a new conflict.
    found = json.loads(_ok(ws, "conflicts", "list", str(ws.config), "--json").stdout)
    assert len(found) == 1 and found[0]["id"] != number
    assert ws.query(ws.target, "SELECT CAST(amount AS TEXT) FROM entries WHERE id = 1") == [("99",)]


BALANCED = """
tables:
  entries:
    balance: {group_by: memo, amount: amount}
"""


def test_an_unbalanced_voucher_is_retried_whole_after_the_source_is_fixed(ws):
    _setup(ws, mapping=BALANCED, target="")
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 100, 'V1'); INSERT INTO entries VALUES (2, -90, 'V1');"
                      "INSERT INTO entries VALUES (3, 5, 'V2'); INSERT INTO entries VALUES (4, -5, 'V2')")
    _ok(ws, "run", "--once", str(ws.config))
    letters = _letters(ws)
    assert [(d["key"], d["kind"]) for d in letters] == [([1], "balance"), ([2], "balance")]
    assert _entries(ws, ws.target) == [(3, "5", "V2"), (4, "-5", "V2")]
    unfixed = _cdc(ws, "dead-letters", "retry", str(ws.config), str(letters[0]["id"]))
    assert unfixed.returncode == 1 and "still parked" in unfixed.stdout, unfixed.stdout
    assert [d["status"] for d in _letters(ws)] == ["parked", "parked"]
    assert _entries(ws, ws.target) == [(3, "5", "V2"), (4, "-5", "V2")]  # nothing of the voucher applied
    ws.sql(ws.source, "UPDATE entries SET amount = -100 WHERE id = 2")  # the user fixes the source
    _ok(ws, "run", "--once", str(ws.config))
    result = _ok(ws, "dead-letters", "retry", str(ws.config), str(letters[0]["id"]))
    assert f"with its voucher's dead letters {letters[1]['id']}" in result.stdout
    assert _entries(ws, ws.target) == _entries(ws, ws.source)
    assert _letters(ws) == []


def test_a_voucher_the_target_refuses_a_posting_of_is_parked_whole_and_retried_whole(ws):
    """The target refuses one posting of a balanced voucher (CHECK amount < 1000): its other posting is
    parked with it, never applied alone (the ledger held half a voucher); other vouchers flow on; once
    the target is fixed, retrying either letter applies the whole voucher."""
    _setup(ws, mapping=BALANCED)
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 1500, 'V1'); INSERT INTO entries VALUES (2, -1500, 'V1');"
                      "INSERT INTO entries VALUES (3, 5, 'V2'); INSERT INTO entries VALUES (4, -5, 'V2')")
    _ok(ws, "run", "--once", str(ws.config))
    assert _entries(ws, ws.target) == [(3, "5", "V2"), (4, "-5", "V2")]
    letters = _letters(ws)
    assert [(d["key"], d["kind"]) for d in letters] == [([1], "error"), ([2], "balance")], letters
    assert "its voucher's posting [1] was refused by the target" in letters[1]["error"], letters[1]
    ws.sql(ws.target, RELAXED)  # the user fixes the target
    result = _ok(ws, "dead-letters", "retry", str(ws.config), str(letters[1]["id"]))
    assert f"with its voucher's dead letters {letters[0]['id']}" in result.stdout, result.stdout
    assert _entries(ws, ws.target) == _entries(ws, ws.source)
    assert _letters(ws) == []


JOURNAL_BALANCED = """
tables:
  entries:
    target: journal
    mode: ledger
    ledger: {amounts: [amount], sequence: entry_no, reverses: reverses}
    balance: {group_by: memo, amount: amount}
"""


def test_in_ledger_mode_the_fix_a_retry_applied_is_not_parked_again_when_it_streams(ws):
    """Fix the source, retry (which reads the source's current rows), then run: the fix's own change
    streams in after the retry posted its rows. It is weighed against the journal's current entry,
    which already holds it (nothing moves: balanced, nothing to post), not against the source's
    before image (which made the voucher look unbalanced again and parked the fix)."""
    _setup(ws, mapping=JOURNAL_BALANCED, target="")
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 100, 'V1'); INSERT INTO entries VALUES (2, -90, 'V1')")
    _ok(ws, "run", "--once", str(ws.config))
    letters = _letters(ws)
    assert [(d["key"], d["kind"]) for d in letters] == [([1], "balance"), ([2], "balance")]
    ws.sql(ws.source, "UPDATE entries SET amount = -100 WHERE id = 2")  # the user fixes the source
    _ok(ws, "dead-letters", "retry", str(ws.config), str(letters[0]["id"]))
    _ok(ws, "run", "--once", str(ws.config))
    assert _letters(ws) == [] and _cdc(ws, "status", str(ws.config)).returncode == 0
    journal = ws.query(ws.target, "SELECT id, entry_no, CAST(amount AS TEXT), reverses FROM journal ORDER BY id, entry_no")
    assert journal == [(1, 1, "100", None), (2, 1, "-100", None)]


def _pg(url: str, statement: str) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _pg_setup(ws, pg_url: str, rules: str = "", seed: str = "") -> None:
    """A SQLite source (with a timestamp column) into PostgreSQL, whose table refuses amounts of 1000+."""
    ws.sql(ws.source, "CREATE TABLE entries (id INTEGER PRIMARY KEY, amount NUMERIC(12,2) NOT NULL, memo TEXT, "
                      "booked_at DATETIME);" + seed)
    _pg(pg_url, "CREATE TABLE entries (id integer PRIMARY KEY, amount numeric(12,2) NOT NULL CONSTRAINT small "
                "CHECK (amount < 1000), memo text, booked_at timestamp)")
    ws.write_config("\n".join(["source: src", "target: ledger", "capture: trigger", "tables: [entries]",
                               "on_error: park", rules]), extra_connections=f"  ledger: {pg_url}\n")
    for command in ("init", "install"):
        _ok(ws, command, str(ws.config))
    _ok(ws, "run", "--once", str(ws.config))


def test_on_postgresql_retry_and_discard_make_the_target_equal_the_source(ws, pg_url):
    _pg_setup(ws, pg_url)
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 5000, 'big', '2026-01-05 10:00:00'), "
                      "(2, 10, 'small', '2026-01-06 11:00:00'), (3, 7000, 'æøå', '2026-01-07 12:30:00.25')")
    _ok(ws, "run", "--once", str(ws.config))
    ws.sql(ws.source, "UPDATE entries SET memo = 'later' WHERE id = 1; UPDATE entries SET amount = 70 WHERE id = 3")
    _ok(ws, "run", "--once", str(ws.config))
    first, third = [d["id"] for d in _letters(ws, "--status", "parked")]
    assert _cdc(ws, "dead-letters", "retry", str(ws.config), str(first)).returncode == 1  # still refused
    result = _ok(ws, "dead-letters", "discard", str(ws.config), str(third), "--reason", "entered by hand")
    assert "1 held change(s) behind it released: 1 applied" in result.stdout
    _pg(pg_url, "ALTER TABLE entries DROP CONSTRAINT small")  # the user fixes the target
    _ok(ws, "dead-letters", "retry", str(ws.config), "--all")
    assert _letters(ws) == []
    assert _cdc(ws, "reconcile", str(ws.config), "--settle", "0").returncode == 0  # row by row, value by value
    assert _cdc(ws, "status", str(ws.config)).returncode == 0


def test_on_postgresql_a_manual_conflict_resolved_taking_the_source(ws, pg_url):
    _pg_setup(ws, pg_url, rules=MANUAL, seed="INSERT INTO entries VALUES (1, 100, 'a', '2026-02-01 08:00:00')")
    _pg(pg_url, "UPDATE entries SET memo = 'edited in the ledger' WHERE id = 1")
    ws.sql(ws.source, "UPDATE entries SET amount = 110 WHERE id = 1")
    _ok(ws, "run", "--once", str(ws.config))
    ws.sql(ws.source, "UPDATE entries SET booked_at = '2026-02-02 09:15:00' WHERE id = 1")
    _ok(ws, "run", "--once", str(ws.config))
    (found,) = json.loads(_ok(ws, "conflicts", "list", str(ws.config), "--json").stdout)
    assert [d["status"] for d in _letters(ws)] == ["held"]
    _ok(ws, "conflicts", "resolve", str(ws.config), str(found["id"]), "--take", "source")
    assert _letters(ws) == [] and json.loads(_ok(ws, "conflicts", "list", str(ws.config), "--json").stdout) == []
    assert _cdc(ws, "reconcile", str(ws.config), "--settle", "0").returncode == 0


def test_retry_deletes_the_target_row_when_the_source_no_longer_has_it(ws):
    _setup(ws, seed="INSERT INTO entries VALUES (5, 10, 'kept')")
    ws.sql(ws.source, "UPDATE entries SET amount = 5000 WHERE id = 5")  # refused: parked
    _ok(ws, "run", "--once", str(ws.config))
    ws.sql(ws.source, "DELETE FROM entries WHERE id = 5")  # held behind it
    _ok(ws, "run", "--once", str(ws.config))
    head, held = [d["id"] for d in _letters(ws)]
    assert _entries(ws, ws.target) == [(5, "10", "kept")]
    _ok(ws, "dead-letters", "retry", str(ws.config), str(head))
    assert _entries(ws, ws.target) == _entries(ws, ws.source) == []
    assert _audit(ws, "reason = 'retry'") == [("retry", "retried", None, None, "[5]")]
    assert [d["status"] for d in _letters(ws, "--status", "all")] == ["retried", "resolved"]


def test_a_released_change_that_conflicts_again_holds_the_later_ones_behind_the_new_conflict(ws):
    number = _conflicted(ws)
    ws.sql(ws.source, "UPDATE entries SET memo = 'third' WHERE id = 1")  # a second change held behind it
    _ok(ws, "run", "--once", str(ws.config))
    assert len(_letters(ws)) == 2
    _ok(ws, "conflicts", "resolve", str(ws.config), str(number), "--take", "target")
    (again,) = json.loads(_ok(ws, "conflicts", "list", str(ws.config), "--json").stdout)
    (waiting,) = _letters(ws)
    assert (waiting["status"], waiting["blocked_by"]) == ("held", f"conflict {again['id']}")
    notes = [d["note"] for d in _letters(ws, "--status", "retried")]
    assert notes == [f"released: conflict {number} was resolved; became conflict {again['id']}",
                     f"released: conflict {number} was resolved; parked again as dead letter {waiting['id']}"]
    assert _entries(ws, ws.target)[0] == (1, "99", "a")  # the kept row: nothing applied over the new conflict
    _ok(ws, "conflicts", "resolve", str(ws.config), str(again["id"]), "--take", "source")
    assert _entries(ws, ws.target) == _entries(ws, ws.source) and _letters(ws) == []


def test_a_voucher_fixed_by_a_posting_added_later_is_retried_with_it(ws):
    _setup(ws, mapping=BALANCED, target="")
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 100, 'V1'); INSERT INTO entries VALUES (2, -90, 'V1')")
    _ok(ws, "run", "--once", str(ws.config))
    ws.sql(ws.source, "INSERT INTO entries VALUES (5, -10, 'V1')")  # the missing posting, in a transaction of its own
    _ok(ws, "run", "--once", str(ws.config))
    letters = _letters(ws)
    assert [(d["key"], d["kind"]) for d in letters] == [([1], "balance"), ([2], "balance"), ([5], "balance")]
    assert len({d["source_txid"] for d in letters}) == 2
    _ok(ws, "dead-letters", "retry", str(ws.config), str(letters[0]["id"]))
    assert _entries(ws, ws.target) == _entries(ws, ws.source) == [(1, "100", "V1"), (2, "-90", "V1"), (5, "-10", "V1")]
    assert _letters(ws) == []


def test_a_retry_over_a_target_row_someone_changed_meanwhile_is_a_conflict(ws):
    _setup(ws, rules=MANUAL, seed="INSERT INTO entries VALUES (1, 10, 'a')")
    ws.sql(ws.source, "UPDATE entries SET amount = 5000 WHERE id = 1")  # refused: parked
    _ok(ws, "run", "--once", str(ws.config))
    (letter,) = _letters(ws)
    ws.sql(ws.target, RELAXED + "UPDATE entries SET memo = 'by hand' WHERE id = 1")  # fixed, and edited
    result = ws.cdc("dead-letters", "retry", str(ws.config), str(letter["id"]))
    # Exit 1: it left something for a person to decide, like a retry that parks the change again.
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    (found,) = json.loads(_ok(ws, "conflicts", "list", str(ws.config), "--json").stdout)
    assert f"conflict {found['id']}" in result.stdout and _letters(ws) == []
    assert _entries(ws, ws.target) == [(1, "10", "by hand")]  # not overwritten unseen
    _ok(ws, "conflicts", "resolve", str(ws.config), str(found["id"]), "--take", "source")
    assert _entries(ws, ws.target) == _entries(ws, ws.source) == [(1, "5000", "a")]


def test_a_retry_under_target_wins_that_keeps_the_target_row_says_so(ws):
    """Under target_wins a retry over a row a person changed keeps the person's row: the command says
    a conflict was decided by the policy, not that the source's row was applied."""
    _setup(ws, rules="conflict: target_wins", seed="INSERT INTO entries VALUES (1, 10, 'a')")
    ws.sql(ws.source, "UPDATE entries SET amount = 5000 WHERE id = 1")  # refused: parked
    _ok(ws, "run", "--once", str(ws.config))
    (letter,) = _letters(ws)
    ws.sql(ws.target, RELAXED + "UPDATE entries SET memo = 'by hand' WHERE id = 1")
    result = _ok(ws, "dead-letters", "retry", str(ws.config), str(letter["id"]))
    assert "met a target row someone else changed (1 conflict(s))" in result.stdout, result.stdout
    assert "applied" not in result.stdout.split("retried:")[-1].split("(")[0], result.stdout
    assert _entries(ws, ws.target) == [(1, "10", "by hand")]


def test_a_mapping_change_that_copies_a_table_again_is_refused_while_a_conflict_is_open(ws):
    """Changing a table's mapping copies it again; with a conflict open on it that copy would move the
    person's row before anyone decided (as --resnapshot would): refused, nothing moves, and once the
    conflict is resolved the copy runs."""
    number = _conflicted(ws)
    before = _entries(ws, ws.target)
    (ws.root / "mapping.yaml").write_text("tables:\n  entries:\n    columns: {id: id, amount: amount, "
                                          "memo: {from: memo, transforms: [trim]}}\n", encoding="utf-8")
    config = ws.config.read_text().replace("tables: [entries]", "mapping: mapping.yaml")
    ws.config.write_text(config, encoding="utf-8")
    result = _cdc(ws, "run", "--once", str(ws.config))
    assert result.returncode == 1 and "would be copied again" in result.stderr and "entries (1)" in result.stderr, \
        result.stderr
    assert _entries(ws, ws.target) == before
    _ok(ws, "conflicts", "resolve", str(ws.config), str(number), "--take", "source")
    _ok(ws, "run", "--once", str(ws.config))
    assert _entries(ws, ws.target) == _entries(ws, ws.source)
