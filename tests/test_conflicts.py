"""Two writers: the source, and people editing the target. Per key, the target ends as the conflict
policy says, computed from the two writers' own logs (never from a snapshot of the target), and every
conflict is one audit row.

A conflict is a target row that changed since this pair last wrote it: with trigger capture, a
change whose before image (mapped) is not the target row, or an insert whose key the target already
holds. An update whose target row is missing is inserted (``update_missing: insert``) and a delete
whose row is missing does nothing (``delete_missing: skip``): neither is a conflict by default. An
update that changes no mapped column writes nothing and is not audited (issue 13 item 0), and is
decided before any conflict is looked for: an accountant's edit survives it.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from compliance.databases import Database

SCHEMA = ("CREATE TABLE acct (id INTEGER PRIMARY KEY, amount TEXT NOT NULL, note TEXT NOT NULL, "
          "updated_at DATETIME NOT NULL, internal TEXT)")
MAPPED = ("amount", "note", "updated_at")
#: The mapping copies every column but ``internal``: a change to it alone is no change to the target.
MAPPING = "tables:\n  acct:\n    columns: {id: id, amount: amount, note: note, updated_at: updated_at}\n"
POLICIES = {"source_wins": "source_wins", "target_wins": "target_wins", "newest_wins": "{newest_wins: updated_at}",
            "manual": "manual"}


def stamp(n: int) -> str:
    """The n-th second of 2026 as the applications write it (text that sorts as time)."""
    return (dt.datetime(2026, 1, 1) + dt.timedelta(seconds=n)).strftime("%Y-%m-%d %H:%M:%S")


def same_stamp(value) -> str:
    """An updated_at from any side (text, datetime, ISO with T or a zone) as ``stamp`` writes it."""
    text = str(value).replace("T", " ")
    return text[:19]


def mapped(row: dict | None) -> dict | None:
    return None if row is None else {c: (same_stamp(row[c]) if c == "updated_at" else str(row[c])) for c in MAPPED}


# -- the model -------------------------------------------------------------------------------------
class Model:
    """What the target must hold: the person's edits and the source's changes replayed in the order
    they reached the target, decided as the policy says."""

    def __init__(self, policy: str):
        self.policy = policy
        self.target: dict[int, dict] = {}  # key -> mapped row
        self.conflicts: list[tuple[int, str, dict]] = []  # (key, op, the target row the change met)
        self.open: set[int] = set()  # manual: keys with an unresolved conflict
        self.held: list[tuple[int, str]] = []  # manual: (key, op) of changes waiting behind a conflict
        self.winners: list[str] = []  # per conflict: which side won
        self.skipped = 0

    def person(self, key: int, row: dict | None) -> None:
        if row is None:
            self.target.pop(key, None)
        else:
            self.target[key] = dict(row)

    def change(self, op: str, key: int, before: dict | None, after: dict | None) -> None:
        """One source change (mapped images) reaching the target."""
        if self.policy == "manual" and key in self.open:
            self.held.append((key, op))
            return
        if op == "update" and before == after:
            self.skipped += 1
            return
        current = self.target.get(key)
        if current is None:  # insert; update_missing: insert; delete_missing: skip
            self.person(key, after)
            return
        if current == before:
            self.person(key, after)
            return
        self.conflicts.append((key, op, dict(current)))
        self.winners.append("source" if self.source_wins(current, after) else "target")
        if self.source_wins(current, after):
            self.person(key, after)
        elif self.policy == "manual":
            self.open.add(key)

    def source_wins(self, current: dict, after: dict | None) -> bool:
        if self.policy == "newest_wins":  # ties go to the source
            return after is not None and after["updated_at"] >= current["updated_at"]
        return self.policy == "source_wins"


# -- the two writers -------------------------------------------------------------------------------
class Writers:
    """The source application and the person at the target, each keeping a log of what it did."""

    def __init__(self, rng: random.Random, source: Database, target: Database, model: Model, deletes: bool = True):
        self.rng, self.source, self.target, self.model, self.deletes = rng, source, target, model, deletes
        self.rows: dict[int, dict] = {}  # the source's rows: key -> full row
        self.clock = 0  # seconds of 2026 the writers stamp with
        self.notes = 0
        self.fresh = 1000  # source keys never seen before
        self.reserved = list(range(500, 530))  # keys the person may insert first
        self.person_first: list[int] = []  # keys the person inserted that the source has not
        self.lock = threading.Lock()  # the two writers share the logs when they run at once
        self.recent: list[int] = []  # keys the source changed last
        self.hot = False  # the person edits mostly what the source changes now (the race is likelier)

    def note(self, who: str) -> str:
        self.notes += 1
        return f"{who}:{self.notes} æøå"

    def amount(self) -> str:
        return f"{self.rng.randint(-99999, 99999)}.{self.rng.randint(0, 99):02d}"

    def seed(self, count: int) -> None:
        """The source's rows before the snapshot."""
        statements = []
        for key in range(1, count + 1):
            self.clock += 1
            row = {"amount": self.amount(), "note": self.note("src"), "updated_at": stamp(self.clock), "internal": "0"}
            self.rows[key] = row
            statements.append(self._insert("acct", key, row))
            self.model.person(key, mapped(row))
        self.source.transaction(statements)

    @staticmethod
    def _insert(table: str, key: int, row: dict) -> tuple[str, tuple]:
        return (f"INSERT INTO {table} (id, amount, note, updated_at{', internal' if 'internal' in row else ''}) "
                f"VALUES (%s, %s, %s, %s{', %s' if 'internal' in row else ''})",
                (key, row["amount"], row["note"], row["updated_at"], *([row["internal"]] if "internal" in row else [])))

    # -- the person ----------------------------------------------------------------------------------
    def person_edit(self) -> None:
        """One edit of the target in its own transaction: update, delete or insert a row."""
        keys, pick = sorted(self.model.target), self.rng.random()
        if self.hot and self.rng.random() < 0.7:
            keys = [k for k in self.recent if k in self.model.target] or keys
        if pick < 0.6 and keys:
            key = self.rng.choice(keys)
            # newer, older or as new as the source's next stamps: newest_wins goes both ways
            row = {"amount": self.amount(), "note": self.note("person"),
                   "updated_at": stamp(self.clock + self.rng.choice([-3, 1, 40, 40]))}
            self.target.execute("UPDATE acct SET amount = %s, note = %s, updated_at = %s WHERE id = %s",
                                (row["amount"], row["note"], row["updated_at"], key))
        elif pick < 0.8 and keys:
            key, row = self.rng.choice(keys), None
            self.target.execute("DELETE FROM acct WHERE id = %s", (key,))
        else:
            free = [k for k in self.reserved if k not in self.model.target and k not in self.rows
                    and k not in self.person_first]
            if not free:
                return
            key = free[0]
            row = {"amount": self.amount(), "note": self.note("person"), "updated_at": stamp(self.clock + 1)}
            self.target.execute(*self._insert("acct", key, row))
            self.person_first.append(key)
        self.model.person(key, row)

    # -- the source ----------------------------------------------------------------------------------
    def source_transaction(self, size: int) -> None:
        """``size`` random changes in ONE source transaction, told to the model in commit order."""
        statements, changes = [], []
        for _ in range(size):
            statement, change = self._source_change()
            if statement:
                statements.append(statement)
                changes.append(change)
        self.source.transaction(statements)
        for change in changes:
            self.model.change(*change)

    def _source_change(self):
        pick, live = self.rng.random(), sorted(self.rows)
        if pick < 0.55 and live:
            key = self.rng.choice(live)
            if self.rng.random() < 0.2:
                return self._update(key, internal=str(self.rng.randint(1, 10**6)))
            self.clock += 1
            return self._update(key, amount=self.amount(), note=self.note("src"), updated_at=stamp(self.clock))
        if pick < 0.7 and live and self.deletes:
            return self._delete(self.rng.choice(live))
        first = [k for k in self.person_first if k not in self.rows]
        key = first[0] if first and self.rng.random() < 0.6 else self._fresh()
        return self._insert_source(key)

    def _fresh(self) -> int:
        self.fresh += 1
        return self.fresh

    def _insert_source(self, key: int):
        self.clock += 1
        row = {"amount": self.amount(), "note": self.note("src"), "updated_at": stamp(self.clock), "internal": "0"}
        self.rows[key] = row
        return self._insert("acct", key, row), ("insert", key, None, mapped(row))

    def _update(self, key: int, **values):
        self.recent = [*self.recent[-4:], key]
        before = self.rows[key]
        after = self.rows[key] = {**before, **values}
        sets = ", ".join(f"{column} = %s" for column in values)
        return (f"UPDATE acct SET {sets} WHERE id = %s", (*values.values(), key)), \
            ("update", key, mapped(before), mapped(after))

    def _delete(self, key: int):
        before = self.rows.pop(key)
        return ("DELETE FROM acct WHERE id = %s", (key,)), ("delete", key, mapped(before), None)

    def sweep(self) -> None:
        """The source changes every row once more and inserts every key the person inserted first, so
        that every key the target holds meets one last source change."""
        statements, changes = [], []
        for key in sorted(self.rows):
            self.clock += 1
            statement, change = self._update(key, note=self.note("src"), updated_at=stamp(self.clock + 100))
            statements.append(statement)
            changes.append(change)
        for key in [k for k in self.person_first if k not in self.rows]:
            statement, change = self._insert_source(key)
            statements.append(statement)
            changes.append(change)
        self.source.transaction(statements)
        for change in changes:
            self.model.change(*change)


# -- the pair --------------------------------------------------------------------------------------
def make_pair(ws, target: Database, policy: str, **options) -> Database:
    """A SQLite source with ``acct``, a pair to ``target`` with ``policy``, initialised and installed."""
    source = Database("sqlite", f"sqlite:///{ws.source}")
    source.execute(SCHEMA)
    sqlite3.connect(ws.source).execute("PRAGMA journal_mode=WAL").close()
    (ws.root / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    extra = "".join(f"    {name}: {value}\n" for name, value in options.items())
    ws.config.write_text(f"connections:\n  src: sqlite:///source.db\n  dst: {target.url}\npairs:\n  p:\n"
                         f"    source: src\n    target: dst\n    capture: trigger\n    mapping: mapping.yaml\n"
                         f"    conflict: {POLICIES[policy]}\n    batch_size: 7\n{extra}", encoding="utf-8")
    for command in ("init", "install"):
        ok(ws, command)
    return source


def ok(ws, *args: str) -> str:
    """`cdc ARGS CONFIG`, which must exit 0 without a traceback; its stdout."""
    result = ws.cdc(*args, str(ws.config))
    assert result.returncode == 0, f"cdc {' '.join(args)}: {result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def target_rows(target: Database) -> dict[int, dict]:
    found = target.execute("SELECT id, amount, note, updated_at FROM acct ORDER BY id")
    return {key: mapped({"amount": amount, "note": note, "updated_at": at}) for key, amount, note, at in found}


def audit(target: Database, where: str = "1 = 1") -> list[dict]:
    """The pair's audit rows after the snapshot, in order, as dicts (images read from JSON)."""
    q = target.quote
    found = target.execute(f"SELECT {q('key')}, op, decision, policy, {q('before')}, {q('after')}, detail "
                           f"FROM cdc_audit_log WHERE op <> 'snapshot' AND {where} ORDER BY id")
    return [{"key": json.loads(key)[0], "op": op, "decision": decision, "policy": policy,
             "before": json.loads(before) if before else None, "after": json.loads(after) if after else None,
             "detail": detail} for key, op, decision, policy, before, after, detail in found]


def conflict_rows(target: Database) -> list[dict]:
    return audit(target, "decision = 'conflict'")


def assert_conflicts_audited(target: Database, model: Model) -> None:
    """Every conflict the model met is one audit row (decision 'conflict', the policy), per key in order,
    whose before image is the target row the change met, as the person left it."""
    rows = conflict_rows(target)
    got = [(row["key"], mapped(row["before"])) for row in rows]
    want = [(key, row) for key, _, row in model.conflicts]
    assert sorted(got, key=lambda item: item[0]) == sorted(want, key=lambda item: item[0]), \
        f"{len(got)} conflict audit rows, the model has {len(want)} conflicts"
    assert all(row["policy"] and row["policy"].startswith(model.policy) for row in rows), \
        {row["policy"] for row in rows}


def random_rounds(ws, policy: str, seed: int, rounds: int = 10, target: Database | None = None) -> tuple:
    """The two writers in rounds: the person edits the target, the source commits transactions, then
    `cdc run --once`. The order in which both reached the target is known, so the model is exact."""
    target = target or Database("sqlite", f"sqlite:///{ws.target}")
    source = make_pair(ws, target, policy)
    model = Model(policy)
    writers = Writers(random.Random(seed), source, target, model, deletes=policy != "newest_wins")
    writers.seed(30)
    ok(ws, "run", "--once")
    for _ in range(rounds):
        for _ in range(writers.rng.randint(2, 6)):
            writers.person_edit()
        for _ in range(writers.rng.randint(1, 4)):
            writers.source_transaction(writers.rng.randint(1, 4))
        ok(ws, "run", "--once")
    writers.sweep()
    ok(ws, "run", "--once")
    return source, target, model, writers


# -- item 0 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["source_wins", "manual"])
def test_an_update_of_unmapped_columns_only_writes_and_audits_nothing(ws, policy):
    """The accountant corrects an amount in the ledger; a source change to a column the mapping does
    not copy must not put it back (it did, silently), nor stand in the audit log as a change."""
    target = Database("sqlite", f"sqlite:///{ws.target}")
    source = make_pair(ws, target, policy)
    source.execute("INSERT INTO acct VALUES (1, '10000.00', 'faktura', '2026-01-01 10:00:00', 'a'), "
                   "(2, '5.00', 'annen', '2026-01-01 10:00:00', 'a')")
    ok(ws, "run", "--once")
    target.execute("UPDATE acct SET amount = '9999.00' WHERE id = 1")
    source.execute("UPDATE acct SET internal = 'b' WHERE id IN (1, 2)")
    out = ok(ws, "run", "--once")
    assert target_rows(target)[1] == {"amount": "9999.00", "note": "faktura", "updated_at": "2026-01-01 10:00:00"}
    assert audit(target) == [], audit(target)
    assert target.execute("SELECT count(*) FROM cdc_conflicts")[0][0] == 0
    assert "2 skipped" in out, out
    # A real change afterwards is decided as usual: key 1 is a conflict (the accountant's 9999.00).
    source.execute("UPDATE acct SET note = 'faktura endret' WHERE id = 1")
    ok(ws, "run", "--once")
    (row,) = audit(target)
    assert (row["key"], row["decision"], row["before"]["amount"]) == (1, "conflict", "9999.00"), row


# -- two writers, one after the other: every policy ------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2])
def test_source_wins_the_target_ends_equal_to_the_source(ws, seed):
    source, target, model, writers = random_rounds(ws, "source_wins", seed)
    assert model.conflicts, "the random writers met no conflict: the test proves nothing"
    assert target_rows(target) == model.target
    assert model.target == {key: mapped(row) for key, row in writers.rows.items()}  # after the sweep
    assert_conflicts_audited(target, model)
    for row in conflict_rows(target):  # the before image is the person's row, not the source's before
        assert row["before"]["note"].startswith("person:"), row


@pytest.mark.parametrize("seed", [3, 4])
def test_target_wins_the_edited_keys_keep_the_persons_values(ws, seed):
    source, target, model, writers = random_rounds(ws, "target_wins", seed)
    assert model.conflicts
    assert target_rows(target) == model.target
    assert_conflicts_audited(target, model)
    kept = [key for key, row in target_rows(target).items() if row["note"].startswith("person:")]
    assert kept and "target" in model.winners, "no person's row was kept: the test proves nothing"


@pytest.mark.parametrize("seed", [5, 6])
def test_newest_wins_per_key_the_newer_stamp_wins_ties_to_the_source(ws, seed):
    source, target, model, writers = random_rounds(ws, "newest_wins", seed)
    assert {"source", "target"} <= set(model.winners), "both sides must win conflicts for the test to mean anything"
    assert target_rows(target) == model.target
    assert_conflicts_audited(target, model)


def two_rows_copied(ws, target, policy: str = "newest_wins", **options):
    """A ``policy`` pair into ``target`` whose source rows 1 and 2 (stamped 2026-01-01 10:00) are copied."""
    source = make_pair(ws, target, policy, **options)
    source.execute("INSERT INTO acct VALUES (1, '1.00', 'src', '2026-01-01 10:00:00', ''), "
                   "(2, '2.00', 'src', '2026-01-01 10:00:00', '')")
    ok(ws, "run", "--once")
    return source


def test_newest_wins_a_tie_goes_to_the_source(ws):
    target = Database("sqlite", f"sqlite:///{ws.target}")
    source = two_rows_copied(ws, target)
    target.execute("UPDATE acct SET note = 'person', updated_at = '2026-01-01 11:00:00'")
    source.transaction([("UPDATE acct SET note = 'src tie', updated_at = '2026-01-01 11:00:00' WHERE id = 1", None),
                        ("UPDATE acct SET note = 'src older', updated_at = '2026-01-01 10:59:59' WHERE id = 2", None)])
    ok(ws, "run", "--once")
    assert {k: r["note"] for k, r in target_rows(target).items()} == {1: "src tie", 2: "person"}
    assert [(r["key"], r["decision"]) for r in audit(target)] == [(1, "conflict"), (2, "conflict")]


def test_newest_wins_a_zone_less_source_time_is_in_the_source_timezone(ws, pg_url):
    """A zone-less source stamp (SQLite DATETIME) against a time-zoned target row is a wall-clock time
    in the pair's source_timezone, not UTC: 11:00 in Oslo is 10:00Z, older than a person's 10:30Z."""
    target = Database("postgresql", pg_url)
    target.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, amount TEXT NOT NULL, note TEXT NOT NULL, "
                   "updated_at TIMESTAMPTZ NOT NULL)")
    source = two_rows_copied(ws, target, source_timezone="Europe/Oslo")
    target.execute("UPDATE acct SET note = 'person', updated_at = '2026-01-01 10:30:00+00'")
    source.transaction([("UPDATE acct SET note = 'src older', updated_at = '2026-01-01 11:00:00' WHERE id = 1", None),
                        ("UPDATE acct SET note = 'src newer', updated_at = '2026-01-01 11:31:00' WHERE id = 2", None)])
    ok(ws, "run", "--once")
    assert {k: r["note"] for k, r in target_rows(target).items()} == {1: "person", 2: "src newer"}
    details = {r["key"]: r["detail"] for r in audit(target, "decision = 'conflict'")}
    assert "the target row is newer" in details[1] and "as new or newer" in details[2], details


@pytest.mark.parametrize("seed", [7, 8])
def test_manual_a_conflicted_key_does_not_move_and_later_changes_wait(ws, seed):
    source, target, model, writers = random_rounds(ws, "manual", seed)
    assert model.open and model.held, "no conflict was left open with changes behind it"
    assert target_rows(target) == model.target  # other keys flowed on
    assert_conflicts_audited(target, model)
    q = target.quote
    opened = target.execute(f"SELECT {q('key')}, policy, status FROM cdc_conflicts ORDER BY id")
    assert sorted(json.loads(k)[0] for k, _, _ in opened) == sorted(k for k, _, _ in model.conflicts)
    assert {(p, s) for _, p, s in opened} == {("manual", "open")}
    held = target.execute(f"SELECT {q('key')}, kind FROM cdc_dead_letters WHERE status = 'held' ORDER BY id")
    assert sorted(json.loads(k)[0] for k, _ in held) == sorted(k for k, _ in model.held)
    assert {kind for _, kind in held} == {"held"}
    check_held(target)


@pytest.mark.parametrize("seed", [7])
def test_manual_resolve_take_source_applies_the_change_and_releases_the_held_ones(ws, seed):
    source, target, model, writers = random_rounds(ws, "manual", seed)
    assert model.open
    for (conflict,) in target.execute("SELECT id FROM cdc_conflicts WHERE status = 'open' ORDER BY id"):
        result = ws.cdc("conflicts", "resolve", str(ws.config), str(conflict), "--take", "source")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    want = {key: row for key, row in model.target.items() if key not in model.open}
    want.update({key: mapped(writers.rows[key]) for key in model.open if key in writers.rows})
    assert target_rows(target) == want
    assert target.execute("SELECT count(*) FROM cdc_conflicts WHERE status = 'open'")[0][0] == 0
    assert target.execute("SELECT count(*) FROM cdc_dead_letters WHERE status = 'held'")[0][0] == 0
    resolved = audit(target, "decision = 'resolved'")
    assert sorted({r["key"] for r in resolved}) == sorted(model.open), resolved


# -- two writers at the same time: a person edits a PostgreSQL target while `cdc run` streams --------
HISTORY = """
CREATE TABLE acct_history (seq BIGSERIAL PRIMARY KEY, id BIGINT NOT NULL, op TEXT NOT NULL, who TEXT NOT NULL,
    note TEXT, updated_at TEXT);
CREATE FUNCTION acct_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO acct_history (id, op, who, note, updated_at)
      VALUES (OLD.id, TG_OP, current_setting('application_name'), NULL, NULL);
  ELSE
    INSERT INTO acct_history (id, op, who, note, updated_at)
      VALUES (NEW.id, TG_OP, current_setting('application_name'), NEW.note, NEW.updated_at::text);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER acct_history AFTER INSERT OR UPDATE OR DELETE ON acct FOR EACH ROW EXECUTE FUNCTION acct_history();
"""


class Person(Database):
    """The target as a person at it sees it: every statement under application_name 'person', which the
    history trigger records (row locks order the writes to one key, so the history is their true order)."""

    def _postgresql(self, statements):
        import psycopg

        with psycopg.connect(self.url, application_name="person") as conn:
            return [_rows(conn.execute(s, p)) for s, p in statements]


def _rows(cursor) -> list:
    return cursor.fetchall() if cursor.description else []


def history(target: Database) -> dict[int, list[tuple[str, str, str | None, str | None]]]:
    """Per key, every write in the order it reached the row: (who, op, note, updated_at)."""
    found: dict[int, list] = {}
    for key, op, who, note, at in target.execute("SELECT id, op, who, note, updated_at FROM acct_history ORDER BY seq"):
        found.setdefault(key, []).append(("person" if who == "person" else "cdc", op, note,
                                          same_stamp(at) if at else None))
    return found


def overwritten(events: list[tuple]) -> list[tuple]:
    """(the person's write, the cdc write right after it on the same row) where cdc wrote over a row the
    person had inserted or updated."""
    return [(events[i - 1], events[i]) for i in range(1, len(events))
            if events[i - 1][0] == "person" and events[i - 1][1] != "DELETE" and events[i][0] == "cdc"]


@pytest.mark.parametrize("policy", list(POLICIES))
def test_two_writers_at_once_each_policy(ws, pg_url, policy):
    """A thread edits the PostgreSQL target, another writes the source, while `cdc run` streams. The target's
    own history (a trigger) says in which order the writes reached each row; from it and the source log:
    source_wins audits a conflict for every person's row it overwrote, with that row as the before image;
    target_wins and manual never overwrite a person's row; newest_wins only with a stamp as new or newer."""
    target = Database("postgresql", pg_url)
    source = make_pair(ws, target, policy)
    model = Model(policy)
    writers = Writers(random.Random(list(POLICIES).index(policy)), source, Person("postgresql", pg_url), model,
                      deletes=policy != "newest_wins")
    writers.seed(40)
    writers.hot = True
    ok(ws, "run", "--once")
    target.execute(HISTORY)
    run = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                           stdout=subprocess.DEVNULL, stderr=open(ws.root / "run.log", "wb"))
    person_done = threading.Event()
    errors: list[BaseException] = []

    def person() -> None:
        # The person's edits need the model only for which keys exist; the model's outcome is not used.
        try:
            while not person_done.is_set():
                with writers.lock:
                    writers.person_edit()
                time.sleep(writers.rng.uniform(0, 0.02))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=person)
    try:
        thread.start()
        source_rng = random.Random(99)
        for _ in range(120):
            with writers.lock:
                writers.source_transaction(source_rng.randint(1, 4))
            time.sleep(source_rng.uniform(0, 0.02))
        person_done.set()
        thread.join()
        assert not errors, errors
        writers.sweep()
        _drain(ws, run)
    finally:
        person_done.set()
        if run.poll() is None:
            run.terminate()
        run.wait(timeout=60)
    check_history(target, writers, policy)


def _drain(ws, run: subprocess.Popen) -> None:
    """Stop the streaming `cdc run` (SIGTERM: it finishes its batch) and apply what is left with --once."""
    time.sleep(1)
    run.terminate()
    assert run.wait(timeout=60) == 0, (ws.root / "run.log").read_text()
    ok(ws, "run", "--once")


def check_history(target: Database, writers: Writers, policy: str) -> None:
    """The per-key outcome from the target's history, the source log and the audit log."""
    per_key, conflicts = history(target), conflict_rows(target)
    audited = {(row["key"], row["before"]["note"]) for row in conflicts if row["before"]}
    assert all(row["policy"].startswith(policy) for row in conflicts)
    for key, events in per_key.items():
        for person, cdc in overwritten(events):
            # Every overwrite of a person's row is a decided conflict, audited with that row as before.
            assert (key, person[2]) in audited, f"key {key}: the person's {person} was overwritten by {cdc} " \
                                                f"without a conflict in the audit log"
            if policy in ("target_wins", "manual"):
                raise AssertionError(f"{policy}: key {key}: the person's {person} overwritten by {cdc}")
            if policy == "newest_wins" and cdc[1] != "DELETE":
                assert cdc[3] >= person[3], f"key {key}: an older source row {cdc} won over {person}"
    assert conflicts, "the writers met no conflict: the test proves nothing"
    if policy == "source_wins":  # the sweep met every key last: the target equals the source
        assert target_rows(target) == {key: mapped(row) for key, row in writers.rows.items()}
    if policy == "manual":
        check_held(target)


def check_held(target: Database) -> None:
    """manual: one open conflict per key at most, and every change held names the open conflict of its
    key it waits behind (`cdc conflicts resolve` releases them by it)."""
    q = target.quote
    opened = {}
    for conflict, key in target.execute(f"SELECT id, {q('key')} FROM cdc_conflicts WHERE status = 'open'"):
        assert json.loads(key)[0] not in opened, f"two open conflicts for key {key}"
        opened[json.loads(key)[0]] = conflict
    held = target.execute(f"SELECT {q('key')}, blocked_by FROM cdc_dead_letters WHERE status = 'held'")
    assert opened and held, "no open conflict with a change held behind it: the test proves nothing"
    for key, blocked_by in held:
        assert blocked_by == f"conflict {opened.get(json.loads(key)[0])}", (key, blocked_by, opened)


@pytest.mark.parametrize("policy", ["target_wins", "source_wins"])
def test_an_edit_committed_while_the_pair_writes_its_row_is_decided_not_lost(ws, pg_url, policy):
    """The race between the two writers, made certain: a person's transaction has changed row 1 and not
    yet committed when `cdc run` reads the target rows. The pair must decide on the row as it will be
    when its write lands (lock it: SELECT ... FOR UPDATE, or a write that compares), not on the row
    before the person's commit, which would overwrite a committed edit without a conflict."""
    import psycopg

    target = Database("postgresql", pg_url)
    source = make_pair(ws, target, policy)
    source.execute("INSERT INTO acct VALUES (1, '1.00', 'kilde', '2026-01-01 10:00:00', '')")
    ok(ws, "run", "--once")
    source.execute("UPDATE acct SET note = 'kilde endret' WHERE id = 1")
    with psycopg.connect(pg_url, application_name="person") as person, \
            psycopg.connect(pg_url, autocommit=True) as watch:
        person.execute("UPDATE acct SET note = 'retta' WHERE id = 1")  # not committed yet
        run = subprocess.Popen([sys.executable, "-m", "cdc", "run", "--once", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                                "datname = current_database()").fetchone()[0]:
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.05)
        person.commit()  # while the pair waits for the row
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, out + err
    (row,) = audit(target)
    assert (row["decision"], row["before"]["note"]) == ("conflict", "retta"), row
    want = "retta" if policy == "target_wins" else "kilde endret"
    assert target_rows(target)[1]["note"] == want


@pytest.mark.parametrize("policy", ["target_wins", "source_wins"])
def test_a_row_someone_inserts_between_the_read_and_the_write_is_a_conflict(ws, pg_url, policy, monkeypatch):
    """The race a FOR UPDATE read cannot close: the key had no row to lock. A person inserts it right
    after the pair read it as missing (the read is wrapped here to do so, once, on another connection,
    committed); the pair's INSERT then fails, the transaction runs again, finds the person's row, and
    decides it by the policy: never overwritten unseen."""
    from cdc import commands
    from cdc.apply import _decide

    target = Database("postgresql", pg_url)
    source = make_pair(ws, target, policy)
    ok(ws, "run", "--once")
    read_rows, raced = _decide.TargetRows, []

    def racing(conn, target_, pair, items):
        rows = read_rows(conn, target_, pair, items)
        if not raced and items:
            raced.append(True)
            Person("postgresql", pg_url).execute(
                "INSERT INTO acct VALUES (5, '9.99', 'person', '2026-01-01 12:00:00')")
        return rows

    monkeypatch.setattr(_decide, "TargetRows", racing)
    source.execute("INSERT INTO acct VALUES (5, '5.00', 'src', '2026-01-01 10:00:00', '')")
    monkeypatch.chdir(ws.root)
    (result,) = commands.run(str(ws.config), once=True)
    assert raced and result.conflicts == 1, result
    want = "person" if policy == "target_wins" else "src"
    assert target_rows(target)[5]["note"] == want
    (found,) = conflict_rows(target)
    assert found["key"] == 5 and found["before"]["note"] == "person", found


def test_a_target_value_that_cannot_be_read_stops_the_pair_naming_the_row(ws):
    """A person wrote a time SQLite cannot read back as one into the target's DATETIME column: the
    pair stops before the transaction, naming table, key and column (it said only "Invalid
    isoformat string"); nothing of it is applied, and once the value is corrected both changes are."""
    target = Database("sqlite", f"sqlite:///{ws.target}")
    source = two_rows_copied(ws, target)
    target.execute("UPDATE acct SET note = 'person', updated_at = 'yesterday' WHERE id = 1")
    source.transaction([("UPDATE acct SET note = 'new', updated_at = '2026-01-01 12:00:00' WHERE id IN (1, 2)", None)])
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: table acct key [1] column updated_at: the target row cannot be read: "), \
        result.stderr
    assert [note for (note,) in target.execute("SELECT note FROM acct ORDER BY id")] == ["person", "src"]
    target.execute("UPDATE acct SET updated_at = '2026-01-01 11:00:00' WHERE id = 1")
    ok(ws, "run", "--once")
    assert {k: r["note"] for k, r in target_rows(target).items()} == {1: "new", 2: "new"}
    assert [(r["key"], r["decision"]) for r in audit(target)] == [(1, "conflict"), (2, "applied")]


@pytest.mark.parametrize("take", ["source", "target"])
def test_manual_a_key_change_waits_behind_the_conflict_of_its_old_key(ws, take):
    """A person corrects row 1; the source updates it (a conflict), then moves it to key 11 and
    changes it there. The key change deletes key 1, so it waits behind that conflict (it opened a
    second conflict of its own, and resolving the two in the wrong order brought key 1 back beside
    11). Resolved, the held changes follow in order; every key ends as the policy says."""
    target = Database("sqlite", f"sqlite:///{ws.target}")
    source = two_rows_copied(ws, target, "manual")
    target.execute("UPDATE acct SET amount = '9.99' WHERE id = 1")
    source.execute("UPDATE acct SET note = 'changed' WHERE id = 1")
    source.execute("UPDATE acct SET id = 11 WHERE id = 1")
    source.execute("UPDATE acct SET amount = '1.50' WHERE id = 11")
    ok(ws, "run", "--once")
    conflicts = target.execute("SELECT id, source_key, status FROM cdc_conflicts ORDER BY id")
    assert [(k, s) for _, k, s in conflicts] == [("[1]", "open")], conflicts
    assert target.execute("SELECT key, status FROM cdc_dead_letters ORDER BY id") == [("[11]", "held"),
                                                                                   ("[11]", "held")]
    assert sorted(target_rows(target)) == [1, 2]  # nothing moved for the conflicted key
    result = ws.cdc("conflicts", "resolve", str(ws.config), str(conflicts[0][0]), "--take", take)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    rows = target_rows(target)
    if take == "source":
        found = source.execute("SELECT id, amount, note, updated_at FROM acct ORDER BY id")
        assert rows == {k: mapped({"amount": a, "note": n, "updated_at": u}) for k, a, n, u in found}
        assert sorted(rows) == [2, 11] and rows[11]["amount"] == "1.50"
    else:  # the person's row kept: the key change finds it under the old key, a conflict again
        assert sorted(rows) == [1, 2] and rows[1]["amount"] == "9.99"
        assert [s for _, _, s in target.execute("SELECT id, source_key, status FROM cdc_conflicts ORDER BY id")] \
            == ["resolved", "open"]
    assert target.execute("SELECT count(*) FROM cdc_dead_letters WHERE status = 'held' AND blocked_by = "
                          f"'conflict {conflicts[0][0]}'") == [(0,)]


def test_manual_a_key_swap_behind_a_conflict_is_released_whole(ws):
    """One source transaction swaps keys 1 and 2 through 0 (1->0, 2->1, 0->2) behind a conflict on key 1:
    resolved, every held step is applied in order (the last one was marked 'made right' unapplied,
    and key 2 was lost)."""
    target = Database("sqlite", f"sqlite:///{ws.target}")
    source = two_rows_copied(ws, target, "manual")
    target.execute("UPDATE acct SET amount = '9.99' WHERE id = 1")
    source.execute("UPDATE acct SET note = 'changed' WHERE id = 1")
    source.transaction([("UPDATE acct SET id = 0 WHERE id = 1", None), ("UPDATE acct SET id = 1 WHERE id = 2", None),
                        ("UPDATE acct SET id = 2 WHERE id = 0", None)])
    ok(ws, "run", "--once")
    (conflict,) = target.execute("SELECT id FROM cdc_conflicts WHERE status = 'open'")
    assert sorted(target_rows(target)) == [1, 2]
    result = ws.cdc("conflicts", "resolve", str(ws.config), str(conflict[0]), "--take", "source")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    found = source.execute("SELECT id, amount, note, updated_at FROM acct ORDER BY id")
    assert target_rows(target) == {k: mapped({"amount": a, "note": n, "updated_at": u}) for k, a, n, u in found}
    assert target.execute("SELECT count(*) FROM cdc_dead_letters WHERE status IN ('held', 'parked')") == [(0,)]
    assert target.execute("SELECT count(*) FROM cdc_dead_letters WHERE status = 'resolved'") == [(0,)]


@pytest.mark.parametrize("missing, kept", [("skip", True), ("conflict", True), ("insert", False)])
def test_a_repair_of_a_row_a_person_deleted_follows_update_missing(ws, missing, kept):
    """Under target_wins, a row the person deleted in the target: a repair does what the table's
    update_missing says, as streaming does (it re-inserted it, audited as plainly applied)."""
    target = Database("sqlite", f"sqlite:///{ws.target}")
    source = make_pair(ws, target, "target_wins")
    (ws.root / "mapping.yaml").write_text(MAPPING + f"    update_missing: {missing}\n", encoding="utf-8")
    source.execute("INSERT INTO acct VALUES (1, '1.00', 'src', '2026-01-01 10:00:00', ''), "
                   "(2, '2.00', 'src', '2026-01-01 10:00:00', '')")
    ok(ws, "run", "--once")
    target.execute("DELETE FROM acct WHERE id = 1")
    ws.cdc("reconcile", str(ws.config), "--settle", "0", "--repair")
    assert sorted(target_rows(target)) == ([2] if kept else [1, 2])
    (row,) = audit(target, "reason = 'repair'")
    assert row["decision"] == {"skip": "skipped", "conflict": "conflict", "insert": "applied"}[missing], row
