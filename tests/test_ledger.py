"""Ledger mode: source changes become entries and reversals; the journal never sees an UPDATE or DELETE.

Every test's target journal has a trigger that raises on any UPDATE or DELETE of it, and every
test compares the journal, entry by entry, with what a model of the ledger policy (``Book``) says
it must hold: so the per-key sum invariant, "exactly one entry per change" and "nothing doubled"
are all checked at once, row by row.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa

from cdc import ledger, state
from cdc.apply._writes import writes_for
from cdc.changes import Change
from cdc.config import load_config
from cdc.mapping import identity_change, map_changes
from cdc.pipeline import open_pair
from conftest import LEDGER_SCHEMA

MAPPING = """\
tables:
  entries:
    target: journal
    mode: ledger
    ledger: {amounts: [amount], sequence: entry_no, reverses: reverses, entry_date: booked_at}
"""
#: Per target kind: statements that make the journal refuse every UPDATE and DELETE.
REFUSE = {
    "sqlite": ["CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal "
               "BEGIN SELECT RAISE(ABORT, 'posted entries are never updated'); END",
               "CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal "
               "BEGIN SELECT RAISE(ABORT, 'posted entries are never deleted'); END"],
    "postgresql": ["CREATE FUNCTION journal_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$BEGIN RAISE EXCEPTION 'posted entries are never updated or deleted'; END$$",
                   "CREATE TRIGGER journal_refuse BEFORE UPDATE OR DELETE ON journal "
                   "FOR EACH ROW EXECUTE FUNCTION journal_refuse()"],
    "mysql": ["CREATE TRIGGER journal_no_update BEFORE UPDATE ON journal FOR EACH ROW "
              "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'posted entries are never updated'",
              "CREATE TRIGGER journal_no_delete BEFORE DELETE ON journal FOR EACH ROW "
              "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'posted entries are never deleted'"],
}
CENT = Decimal("0.01")


class Book:
    """The source's rows as a writer left them, and the journal the ledger policy makes of them:
    per key a list of (entry_no, amount, reverses)."""

    def __init__(self) -> None:
        self.rows: dict[int, Decimal] = {}
        self.journal: dict[int, list[tuple[int, Decimal, int | None]]] = {}

    def current(self, key: int) -> tuple[int, Decimal] | None:
        entries = self.journal.get(key, [])
        return entries[-1][:2] if entries and entries[-1][2] is None else None

    def post(self, key: int, amount: Decimal | None) -> None:
        """The source row ``key`` now holds ``amount`` (None: deleted): reversal and/or entry."""
        entries, current = self.journal.setdefault(key, []), self.current(key)
        if current is not None:
            entries.append((len(entries) + 1, -current[1], current[0]))
        if amount is not None:
            entries.append((len(entries) + 1, amount, None))
        self.rows.pop(key, None) if amount is None else self.rows.__setitem__(key, amount)

    def expected(self) -> list[tuple]:
        return sorted((key, no, amount, rev) for key, entries in self.journal.items() for no, amount, rev in entries)


def random_transactions(book: Book, rng: random.Random, count: int, keys: int = 300):
    """Transactions of 1-6 changes (inserts, updates of the amount, key moves, deletes; several per
    key in one transaction), as (sql, params) lists; ``book`` follows them. ``count`` changes in all."""
    made = 0
    while made < count:
        statements = []
        for _ in range(min(rng.randint(1, 6), count - made)):
            key = rng.randint(1, keys)
            amount = Decimal(rng.randint(-500_000, 500_000)) * CENT
            if key not in book.rows:
                statements.append(("INSERT INTO entries VALUES (?, ?, ?, 'NOK', ?, '2026-03-01 10:00:00')",
                                   (key, 1500 + key % 7, str(amount), f"row {key}")))
                book.post(key, amount)
            elif rng.random() < 0.15:
                statements.append(("DELETE FROM entries WHERE id = ?", (key,)))
                book.post(key, None)
            elif rng.random() < 0.05 and len(book.rows) < keys:
                moved = rng.choice([k for k in range(1, keys + 1) if k not in book.rows])
                statements.append(("UPDATE entries SET id = ? WHERE id = ?", (moved, key)))
                kept = book.rows[key]
                book.post(key, None)
                book.post(moved, kept)
            else:
                if amount == book.rows[key]:
                    amount += CENT
                statements.append(("UPDATE entries SET amount = ?, memo = memo || '.' WHERE id = ?",
                                   (str(amount), key)))
                book.post(key, amount)
            made += 1
        yield statements


def write_source(path, transactions) -> int:
    """Run the transactions on the SQLite source, each in one source transaction; returns how many."""
    conn = sqlite3.connect(path)
    done = 0
    try:
        for statements in transactions:
            with conn:
                for sql, params in statements:
                    conn.execute(sql, params)
            done += 1
    finally:
        conn.close()
    return done


def journal_pair(ws, target_url: str | None = None, batch_size: int = 100) -> None:
    """The ledger schema at the source, the entries table mapped to a journal in ledger mode;
    `cdc init` and `cdc install`, then the journal made to refuse UPDATE and DELETE."""
    ws.sql(ws.source, LEDGER_SCHEMA)
    (ws.root / "ledger.yaml").write_text(MAPPING, encoding="utf-8")
    extra = f"  journal_db: {target_url}\n" if target_url else ""
    ws.write_config(f"source: src\ntarget: {'journal_db' if target_url else 'dst'}\ncapture: trigger\n"
                    f"mapping: ledger.yaml\nbatch_size: {batch_size}\npoll_interval: 0.05", extra_connections=extra)
    for command in ("init", "install"):
        result = ws.cdc(command, str(ws.config))
        assert result.returncode == 0, result.stderr
    engine = target_engine(ws, target_url)
    try:
        with engine.begin() as conn:
            for statement in REFUSE[engine.dialect.name]:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def target_engine(ws, target_url: str | None) -> sa.Engine:
    if target_url is None:
        return sa.create_engine(f"sqlite:///{ws.target}")
    return sa.create_engine(target_url.replace("postgresql://", "postgresql+psycopg://")
                            .replace("mysql://", "mysql+pymysql://"))


def journal(ws, target_url: str | None = None) -> list[tuple]:
    """The journal's (id, entry_no, amount, reverses) rows, amounts as Decimal to the cent."""
    engine = target_engine(ws, target_url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT id, entry_no, amount, reverses FROM journal").all()
    finally:
        engine.dispose()
    return sorted((i, n, Decimal(str(a)).quantize(CENT), r) for i, n, a, r in rows)


def assert_ledger(ws, book: Book, target_url: str | None = None) -> None:
    """The journal is exactly the model's, and per key its amounts sum to the source's amount."""
    rows = journal(ws, target_url)
    sums: dict[int, Decimal] = {}
    for key, _, amount, _ in rows:
        sums[key] = sums.get(key, Decimal(0)) + amount
    assert {k: s for k, s in sums.items() if s} == {k: a for k, a in book.rows.items() if a}
    assert rows == book.expected()


# -- entries() driven directly: the decision step's call, without it ----------------------------
def drive(ws, parts: list[list[Change]]) -> list[list[tuple]]:
    """Map each part, turn it into entries and write it in one target transaction (as the apply
    path does); returns each part's notes."""
    pair = load_config(ws.config).pairs["p"]
    source, target, mappings = open_pair(pair)
    notes = []
    try:
        target.prepare_tables(["journal"])
        for part in parts:
            items = map_changes(part, mappings)
            with target.begin() as conn:
                ledger.entries(target, conn, items)
                done, parked = writes_for(target).write_part(conn, items, False, lambda *a: pytest.fail(str(a)))
            assert len(done) == len(items) and not parked
            notes.append([item.note for item in items])
    finally:
        source.close()
        target.close()
    return notes


def row(key: int, amount: str) -> dict:
    return {"id": key, "account": 1500, "amount": Decimal(amount), "currency": "NOK", "memo": None,
            "booked_at": None}


def test_each_change_becomes_entries_and_the_notes_say_which(ws):
    journal_pair(ws)
    up = lambda k, a, b: Change("update", "entries", (k,), row(k, a), row(k, b))  # noqa: E731
    notes = drive(ws, [
        [Change("insert", "entries", (1,), None, row(1, "10.00")), up(1, "10.00", "12.50"),
         Change("delete", "entries", (1,), row(1, "12.50"), None)],
        [up(2, "1.00", "2.00"), Change("insert", "entries", (2,), None, row(2, "3.00")),
         Change("insert", "entries", (2,), None, row(2, "3.00")), Change("delete", "entries", (3,), row(3, "1"), None)],
        [Change("insert", "entries", (1,), None, row(1, "7.00")), up(2, "3.00", "4.00")],
    ])
    assert journal(ws) == [(1, 1, Decimal("10.00"), None), (1, 2, Decimal("-10.00"), 1), (1, 3, Decimal("12.50"), None),
                           (1, 4, Decimal("-12.50"), 3), (1, 5, Decimal("7.00"), None),
                           (2, 1, Decimal("2.00"), None), (2, 2, Decimal("-2.00"), 1), (2, 3, Decimal("3.00"), None),
                           (2, 4, Decimal("-3.00"), 3), (2, 5, Decimal("4.00"), None)]
    assert [n[2] for n in notes[0]] == ["new entry 1", "reversal of entry 1, new entry 3", "reversal of entry 3"]
    # An update without a current entry is an entry; an insert over one is an update; a repeat of
    # the current entry and a delete of a key with none write nothing.
    assert [n[:3] for n in notes[1]] == [("applied", "ledger", "new entry 1"),
                                         ("applied", "ledger", "reversal of entry 1, new entry 3"),
                                         ("skipped", "ledger", "entry 3 already holds this row"),
                                         ("skipped", "ledger", "no current entry to reverse")]
    assert [n[2] for n in notes[2]] == ["new entry 5", "reversal of entry 3, new entry 5"]


def test_a_reversal_negates_an_amount_of_any_length_exactly(ws, pg_url):
    """Decimal's unary minus rounds to the default context's 28 digits: a numeric(38,10) amount's
    reversal lost its last digits, and the key's entries no longer summed to 0 after a delete."""
    journal_pair(ws, pg_url)
    with target_engine(ws, pg_url).begin() as conn:
        conn.exec_driver_sql("ALTER TABLE journal ALTER COLUMN amount TYPE numeric(38,10)")
    big = Decimal("1234567890123456789012.3456789012")
    wide = lambda k, a: {**row(k, "0"), "amount": a}  # noqa: E731
    drive(ws, [[Change("insert", "entries", (1,), None, wide(1, big))],
               [Change("update", "entries", (1,), wide(1, big), wide(1, Decimal(0)))]])
    with target_engine(ws, pg_url).connect() as conn:
        amounts = [a for (a,) in conn.exec_driver_sql("SELECT amount FROM journal WHERE id = 1 ORDER BY entry_no")]
    assert amounts == [big, big.copy_negate(), 0]  # not -big: that rounds too


def test_current_entries_are_read_in_one_statement_per_part(ws):
    journal_pair(ws)
    rng, book, state, parts = random.Random(5), Book(), {}, []
    for statements in random_transactions(book, rng, 3000, keys=200):
        parts.append([change for sql, params in statements for change in _as_changes(sql, params, state)])
    reads: list[str] = []

    def listener(conn, cursor, statement, *rest):
        reads.append(statement)

    sa.event.listen(sa.Engine, "before_cursor_execute", listener)
    try:
        drive(ws, [sum(parts[i:i + 40], []) for i in range(0, len(parts), 40)])
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", listener)
    assert_ledger(ws, book)
    newest = [s for s in reads if "max(" in s.lower() and "journal" in s]
    assert len(newest) == (len(parts) + 39) // 40  # one read of the current entries per part


def _as_changes(sql: str, params: tuple, state: dict[int, dict]) -> list[Change]:
    """What trigger capture would report for one statement of ``random_transactions``."""
    if sql.startswith("INSERT"):
        key, account, amount, memo = params
        state[key] = {"id": key, "account": account, "amount": Decimal(amount), "currency": "NOK", "memo": memo,
                      "booked_at": None}
        return [Change("insert", "entries", (key,), None, state[key])]
    if sql.startswith("DELETE"):
        before = state.pop(params[0])
        return [Change("delete", "entries", (params[0],), before, None)]
    if "SET id" in sql:
        moved, key = params
        before = state.pop(key)
        state[moved] = {**before, "id": moved}
        return [Change("update", "entries", (moved,), before, state[moved])]
    amount, key = params
    before = state[key]
    state[key] = {**before, "amount": Decimal(amount), "memo": (before["memo"] or "") + "."}
    return [Change("update", "entries", (key,), before, state[key])]


# -- end to end: `cdc run` from a SQLite trigger source ------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def target_url(request) -> str | None:
    """The journal's database: SQLite (None: the workspace's target.db), PostgreSQL or MariaDB."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url")


def snapshot_of(book: Book) -> None:
    """What a first copy makes of the source's rows: one entry each, whatever their history."""
    book.journal = {key: [(1, amount, None)] for key, amount in book.rows.items()}


def test_ten_thousand_random_changes_post_entries_and_reversals_only(ws, target_url):
    journal_pair(ws, target_url)
    rng, book = random.Random(13), Book()
    write_source(ws.source, random_transactions(book, rng, 500))
    snapshot_of(book)  # copied by the first run, then streamed
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 0, result.stderr
    write_source(ws.source, random_transactions(book, rng, 10_000))
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 0, result.stderr
    assert_ledger(ws, book, target_url)
    engine = target_engine(ws, target_url)
    try:
        with engine.connect() as conn:
            audited = conn.exec_driver_sql("SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'").scalar()
            log = state.audit_log  # `key` is a reserved word in MySQL: SQLAlchemy quotes it
            said = conn.execute(sa.select(log.c.decision, log.c.policy, log.c.detail, log.c.key)
                                .where(log.c.op == "update").order_by(log.c.id)).first()
            source_key = json.loads(said[3])[0]
            of_key = conn.execute(sa.select(log.c.key).where(log.c.op != "snapshot")).all()
    finally:
        engine.dispose()
    assert audited == 10_000  # one audit row per source change
    assert said[:2] == ("applied", "ledger") and said[2].startswith("reversal of entry "), said
    # The journal's audit keys are (source key, entry_no): `--key` with the source key lists them all.
    trail = ws.cdc("audit", str(ws.config), "--key", str(source_key), "--format", "json", "--limit", "100000")
    assert trail.returncode == 0, trail.stderr
    listed = json.loads(trail.stdout)["entries"]
    assert len(listed) == sum(1 for (key,) in of_key if json.loads(key)[0] == source_key) > 0, (listed[:2], of_key[:5])


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_sigkill_midway_leaves_exactly_one_entry_per_change(ws, kind, request):
    target_url = None if kind == "sqlite" else request.getfixturevalue("pg_url")
    journal_pair(ws, target_url, batch_size=20)
    rng, book = random.Random(29), Book()
    write_source(ws.source, random_transactions(book, rng, 1000))
    snapshot_of(book)
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    done = threading.Event()

    def writer() -> None:
        for statements in random_transactions(book, rng, 6000):
            write_source(ws.source, [statements])
            time.sleep(0.002)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    applied: list[int] = []

    def moved(since: int):  # each run is killed a moment after it has committed something
        return lambda: scalar(ws, target_url, "SELECT changes_applied FROM cdc_checkpoints") > since

    while not done.is_set() or len(applied) < 3:
        since = applied[-1] if applied else scalar(ws, target_url, "SELECT changes_applied FROM cdc_checkpoints")
        assert ws.run_and_kill(random.Random(len(applied)).uniform(0.05, 0.5), until=moved(since)), \
            "cdc run ended on its own"
        applied.append(scalar(ws, target_url, "SELECT changes_applied FROM cdc_checkpoints"))
    thread.join()
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 0, result.stderr
    assert applied == sorted(applied) and 0 < applied[len(applied) // 2] < 6000, f"kills missed the stream: {applied}"
    assert_ledger(ws, book, target_url)  # the journal is the model's, entry by entry: nothing lost or doubled


def scalar(ws, target_url: str | None, query: str):
    engine = target_engine(ws, target_url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(query).scalar()
    finally:
        engine.dispose()


# -- set-up, checks and the commands that must not treat a journal as a table of rows --------------
def test_init_makes_the_journal_and_check_refuses_one_that_cannot_hold_entries(ws):
    journal_pair(ws)
    columns = {row[1]: (row[2], row[3], row[5]) for row in ws.query(ws.target, "PRAGMA table_info(journal)")}
    assert columns["entry_no"] == ("BIGINT", 1, 2) and columns["reverses"] == ("BIGINT", 0, 0)
    assert columns["id"][2] == 1  # the key: (id, entry_no)
    ws.sql(ws.target, "DROP TABLE journal; CREATE TABLE journal (id INTEGER PRIMARY KEY, account INTEGER, "
                      "amount NUMERIC(18,2), currency CHAR(3), memo TEXT, booked_at DATETIME, entry_no BIGINT)")
    for command in ("check", "run"):
        result = ws.cdc(command, *(["--once"] if command == "run" else []), str(ws.config))
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert "target table journal is a ledger (mode: ledger) but lacks column(s) reverses" in result.stderr
        assert "ledger.yaml line 2" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    ws.sql(ws.target, "ALTER TABLE journal ADD COLUMN reverses BIGINT")
    result = ws.cdc("check", str(ws.config))
    assert result.returncode != 0 and "its primary key is (id), not (id, entry_no)" in result.stderr, result.stderr


def test_a_ledger_amount_the_mapping_does_not_write_is_refused_with_file_and_line(ws):
    ws.sql(ws.source, LEDGER_SCHEMA)
    (ws.root / "ledger.yaml").write_text(MAPPING.replace("amounts: [amount]", "amounts: [amuont]"), encoding="utf-8")
    ws.write_config("source: src\ntarget: dst\ncapture: trigger\nmapping: ledger.yaml")
    result = ws.cdc("init", str(ws.config))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    tables = ws.query(ws.target, "SELECT name FROM sqlite_master") if ws.target.exists() else []
    assert ("journal",) not in tables, "init created the table anyway"
    assert "tables.entries.ledger: 'amuont' is not a column the mapping writes to journal" in result.stderr
    assert "ledger.yaml line 2" in result.stderr


def test_reconcile_compares_current_entries_and_repairs_with_entries_only(ws, target_url):
    journal_pair(ws, target_url)
    rng, book = random.Random(41), Book()
    write_source(ws.source, random_transactions(book, rng, 2000, keys=100))
    snapshot_of(book)
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    result = ws.cdc("reconcile", "--settle", "0", str(ws.config))
    assert result.returncode == 0, result.stdout + result.stderr  # many rows per key, each key equal
    live, extra = sorted(book.rows), 999  # a key the source never had
    changed, reversed_, lone = live[0], live[1], live[2]
    book.journal[extra] = []
    last = {key: book.journal[key][-1][0] for key in (changed, reversed_, lone)}
    posted = [  # by hand: a correction (reversal and a wrong entry), a reversal, an entry, one posted twice
        (changed, last[changed] + 1, str(-book.rows[changed]), last[changed]),
        (changed, last[changed] + 2, "99.99", None),
        (reversed_, last[reversed_] + 1, str(-book.rows[reversed_]), last[reversed_]),
        (extra, 1, "5.00", None)]
    engine = target_engine(ws, target_url)
    try:
        with engine.begin() as conn:
            for key, number, amount, reverses in posted:
                conn.execute(sa.text("INSERT INTO journal (id, account, amount, currency, memo, booked_at, entry_no, "
                                     "reverses) VALUES (:id, 1500, :amount, 'NOK', 'by hand', NULL, :no, :rev)"),
                             {"id": key, "amount": amount, "no": number, "rev": reverses})
            conn.execute(sa.text("INSERT INTO journal SELECT id, account, amount, currency, memo, booked_at, "
                                 "entry_no + 1, reverses FROM journal WHERE id = :id AND entry_no = :no"),
                         {"id": lone, "no": last[lone]})
    finally:
        engine.dispose()
    for key, number, amount, reverses in posted:
        book.journal[key].append((number, Decimal(amount), reverses))
    book.journal[lone].append((last[lone] + 1, book.rows[lone], None))
    result = ws.cdc("reconcile", "--settle", "0", "--format", "json", str(ws.config))
    assert result.returncode == 1, result.stderr
    (table,) = json.loads(result.stdout)["tables"]
    # The key posted twice has the source's row as current entry, but sums to twice it: reported, with its sum.
    assert (table["missing"], table["extra"], table["different"]) == (1, 1, 2), table
    assert "do not sum to its current entry" in result.stdout
    result = ws.cdc("reconcile", "--settle", "0", "--repair", str(ws.config))
    assert result.returncode == 1, result.stdout + result.stderr  # the double posting is left to a person
    for key in (changed, reversed_, extra):  # posted as a change would be: reversals and entries only
        book.post(key, book.rows.get(key))
    assert journal(ws, target_url) == book.expected()
    result = ws.cdc("reconcile", "--settle", "0", "--format", "json", str(ws.config))
    (table,) = json.loads(result.stdout)["tables"]
    assert (table["missing"], table["extra"], table["different"]) == (0, 0, 1), table
    assert [row["key"] for row in table["rows"]] == [[lone]], table["rows"]


def test_switching_a_table_to_ledger_mode_changes_its_identity(ws):
    journal_pair(ws)
    pair = load_config(ws.config).pairs["p"]
    source, target, mappings = open_pair(pair)
    source.close()
    target.close()
    now = mappings["entries"].identity()
    upserted = {**now, "mode": "upsert"}
    before_modes = {k: v for k, v in upserted.items() if k != "mode"}  # recorded before modes existed
    for stored in (upserted, before_modes):
        assert identity_change(stored, now) == "its mode (upsert, or ledger and its columns) changed"
    assert identity_change(now, now) is None
    assert identity_change(before_modes, upserted) is None  # an old identity was an upserted table
