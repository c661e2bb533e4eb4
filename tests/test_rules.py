"""Closed periods and voucher balance (cdc/apply/_rules.py) over changes mapped by the real mapping
code, and the mapping check of the columns these rules name."""

from __future__ import annotations

import dataclasses
import json
import datetime as dt
import textwrap
from decimal import Decimal

import pytest
import sqlalchemy as sa

from cdc.apply._rules import closed, unbalanced
from cdc.changes import Change
from cdc.errors import ConfigError
from cdc.mapping import ColumnSpec, FilterSpec, TableMapping, TableSpec, load_mapping, map_changes
from cdc._mapping_file import BalanceSpec, LedgerSpec

SOURCE_COLUMNS = ["id", "voucher", "account", "amount", "debit", "credit", "posted", "memo", "status"]
COLUMNS = (ColumnSpec("id", "id"), ColumnSpec("bilag", "voucher"), ColumnSpec("konto", "account"),
           ColumnSpec("belop", "amount", (("decimal", 2),)), ColumnSpec("debet", "debit"),
           ColumnSpec("kredit", "credit"), ColumnSpec("dato", "posted"), ColumnSpec("tekst", "memo"))
CLOSED_BEFORE = dt.date(2026, 1, 1)


def table(zone: str = "UTC", **rules) -> TableMapping:
    spec = TableSpec("postings", "posteringer", None, COLUMNS, (FilterSpec("status", "!=", "draft"),), **rules)
    return TableMapping(spec, SOURCE_COLUMNS, ("id",), zone)


SIGNED = table(balance=BalanceSpec("bilag", amount="belop"))
SPLIT = table(balance=BalanceSpec("bilag", debit="debet", credit="kredit"))
DATED = table(period="dato", closed_before=CLOSED_BEFORE)


def row(id, voucher=1042, amount="0", posted=dt.date(2026, 2, 1), memo="", debit=None, credit=None,
        status="posted") -> dict:
    return {"id": id, "voucher": voucher, "account": 1920, "amount": Decimal(amount), "debit": debit,
            "credit": credit, "posted": posted, "memo": memo, "status": status}


def ins(txid, after):
    return Change("insert", "postings", (after["id"],), None, after, position=None, txid=txid)


def upd(txid, before, after):
    return Change("update", "postings", (after["id"],), before, after, txid=txid)


def dele(txid, before):
    return Change("delete", "postings", (before["id"],), before, None, txid=txid)


def mapped(mapping, *changes):
    return map_changes(list(changes), {"postings": mapping})


def before_image(item):
    """The change's mapped before image: what the target row was, as the source tells it."""
    before = item.change.before
    return None if before is None else item.mapping.map_row(before, item.change.key)


def nothing_known(item):
    return None


def keys(rejected) -> list:
    return [item.change.key[0] for item, _ in rejected]


# -- closed periods ----------------------------------------------------------------------------
def test_a_posting_dated_before_closed_before_is_parked_naming_date_table_key_and_column():
    items = mapped(DATED, ins(1, row(1, posted=dt.date(2025, 12, 31))), ins(1, row(2, posted=CLOSED_BEFORE)),
                   ins(1, row(3, posted=None)))
    ((item, error),) = closed(items, nothing_known)
    assert item is items[0]
    assert str(error) == ("posting dated 2025-12-31 is in a closed period (closed_before 2026-01-01): parked for "
                          "review; fix the source or move closed_before, then `cdc dead-letters retry`")
    assert (error.table, error.key, error.column, error.kind) == ("posteringer", (1,), "dato", "closed")


def test_changing_or_deleting_a_posting_of_a_closed_period_is_parked_too():
    """The row before counts as much as the row after: moving a posting out of the closed period,
    or deleting it, changes the closed period."""
    old, new = row(1, posted=dt.date(2025, 11, 30)), row(1, posted=dt.date(2026, 1, 15))
    items = mapped(DATED, upd(1, old, new), dele(2, old), upd(3, new, dict(new, memo="x")))
    rejected = closed(items, before_image)
    assert [item.change.op for item, _ in rejected] == ["update", "delete"]
    assert str(rejected[0][1]).startswith("posting dated 2025-11-30 (the row this update changes) is in a closed")
    assert str(rejected[1][1]).startswith("posting dated 2025-11-30 (the row this delete changes) is in a closed")
    # The target row as it stands decides where the change has no before image.
    target_row = DATED.map_row(old)
    assert keys(closed(mapped(DATED, Change("update", "postings", (1,), None, new)), lambda item: target_row)) == [1]
    assert closed(mapped(DATED, Change("update", "postings", (1,), None, new)), nothing_known) == []


def test_a_timestamp_counts_by_its_date_where_the_books_are_kept():
    """A time-zoned value is dated in the pair's source_timezone (a logical source sends UTC), a
    zone-less one as it is."""
    oslo = table("Europe/Oslo", period="dato", closed_before=CLOSED_BEFORE)
    early = dt.datetime(2025, 12, 31, 23, 30, tzinfo=dt.timezone.utc)  # 00:30 on 1 January in Oslo
    late = dt.datetime(2025, 12, 31, 22, 59, 59, tzinfo=dt.timezone.utc)  # 23:59:59 on 31 December in Oslo
    items = mapped(oslo, ins(1, row(1, posted=early)), ins(1, row(2, posted=late)),
                   ins(1, row(3, posted="2025-12-30")), ins(1, row(4, posted=dt.datetime(2026, 1, 1, 0, 0))))
    rejected = closed(items, nothing_known)
    assert keys(rejected) == [2, 3]
    assert "posting dated 2025-12-31 is in a closed period" in str(rejected[0][1])


def test_a_period_value_that_is_not_a_date_is_parked_not_passed():
    ((item, error),) = closed(mapped(DATED, ins(1, row(1, posted="31.12.2025"))), nothing_known)
    assert str(error).startswith("period column dato holds '31.12.2025', not a date: cannot tell whether it is in a "
                                 "closed period (closed_before 2026-01-01)")


def test_without_closed_before_or_for_a_filtered_out_change_nothing_is_parked():
    old = row(1, posted=dt.date(2020, 1, 1))
    assert closed(mapped(table(period="dato"), ins(1, old)), nothing_known) == []
    assert closed(mapped(DATED, ins(1, dict(old, status="draft"))), nothing_known) == []  # writes nothing
    assert len(closed(mapped(DATED, ins(1, old)), nothing_known)) == 1


# -- voucher balance ---------------------------------------------------------------------------
def test_an_unbalanced_voucher_is_parked_whole_with_the_imbalance():
    items = mapped(SIGNED, ins(881, row(1, 1042, "-1000.00")), ins(881, row(2, 1042, "850.00")),
                   ins(881, row(3, 1043, "-20.00")), ins(881, row(4, 1043, "20.00")),
                   ins(881, row(5, 1042, "300.00")))
    rejected = unbalanced(items, nothing_known)
    assert keys(rejected) == [1, 2, 5]  # all of voucher 1042, in order; voucher 1043 balances
    for item, error in rejected:
        assert str(error) == ("voucher 1042 in source transaction 881 does not balance: postings sum to 150.00 "
                              "(expected 0): the whole voucher is parked; fix the source, then "
                              "`cdc dead-letters retry`")
        assert (error.table, error.key, error.column, error.kind) == ("posteringer", item.change.key, "belop",
                                                                      "balance")


def test_a_voucher_sums_exactly_however_many_digits_its_amounts_have():
    """Decimal's default context keeps 28 digits: 10^30 + 0.01 and -10^30 summed there give 0, and an
    unbalanced voucher would pass unseen."""
    big = "1" + "0" * 30
    items = mapped(SIGNED, ins(7, row(1, 1042, big + ".01")), ins(7, row(2, 1042, "-" + big)))
    rejected = unbalanced(items, nothing_known)
    assert keys(rejected) == [1, 2]
    assert "postings sum to 0.01 (expected 0)" in str(rejected[0][1])
    split = mapped(SPLIT, ins(8, row(1, debit=Decimal(big + ".01"))), ins(8, row(2, credit=Decimal(big))))
    assert keys(unbalanced(split, nothing_known)) == [1, 2]


def test_a_voucher_balances_per_source_transaction_not_across_them():
    items = mapped(SIGNED, ins(7, row(1, 5, "100")), ins(8, row(2, 5, "-100")),
                   ins(9, row(3, 5, "60")), ins(9, row(4, 5, "-60")))
    rejected = unbalanced(items, nothing_known)
    assert keys(rejected) == [1, 2]
    assert ("voucher 5 in source transaction 7 does not balance: postings sum to 100.00 (expected 0)"
            in str(rejected[0][1]))
    assert "postings sum to -100.00 (expected 0)" in str(rejected[1][1])


def test_without_a_txid_the_position_tells_transactions_apart():
    changes = [Change("insert", "postings", (i,), None, row(i, 5, amount), position=pos)
               for i, amount, pos in [(1, "10", 40), (2, "-10", 40), (3, "10", 41)]]
    rejected = unbalanced(mapped(SIGNED, *changes), nothing_known)
    assert keys(rejected) == [3]
    assert "voucher 5 in the source transaction at position 41 does not balance" in str(rejected[0][1])


def test_updates_that_keep_the_sum_and_whole_deletes_pass():
    """A description-only update, amounts moved between postings of one voucher, a whole voucher
    deleted, and a balanced new voucher leave every voucher's sum where it was."""
    a, b = row(1, 5, "-100", memo="old"), row(2, 5, "100")
    c, d = row(3, 6, "-40"), row(4, 6, "40")
    items = mapped(SIGNED, upd(1, a, dict(a, memo="new")),
                   upd(2, a, dict(a, amount=Decimal("-70"))), upd(2, b, dict(b, amount=Decimal("70"))),
                   dele(3, c), dele(3, d), ins(4, row(7, 9, "0.10")), ins(4, row(8, 9, "0.20")),
                   ins(4, row(9, 9, "-0.30")))
    assert unbalanced(items, before_image) == []


def test_one_posting_changed_or_deleted_alone_unbalances_its_voucher():
    a, b = row(1, 5, "-100"), row(2, 5, "100")
    rejected = unbalanced(mapped(SIGNED, upd(1, a, dict(a, amount=Decimal("-99.99"))), dele(2, b)), before_image)
    assert keys(rejected) == [1, 2]
    assert ("voucher 5 in source transaction 1 does not balance: postings sum to 0.01 (expected 0)"
            in str(rejected[0][1]))
    assert "postings sum to -100.00 (expected 0)" in str(rejected[1][1])


def test_a_posting_moved_to_another_voucher_counts_in_both():
    a = row(1, 5, "100")
    rejected = unbalanced(mapped(SIGNED, upd(1, a, dict(a, voucher=6))), before_image)
    assert keys(rejected) == [1]
    assert str(rejected[0][1]).startswith("voucher 5 in source transaction 1 does not balance: postings sum to "
                                          "-100.00 (expected 0)")
    # Moved together with its counter-posting, both vouchers balance.
    b = row(2, 5, "-100")
    assert unbalanced(mapped(SIGNED, upd(1, a, dict(a, voucher=6)), upd(1, b, dict(b, voucher=6))),
                      before_image) == []


def test_the_target_row_counts_when_the_change_has_no_before_image():
    target = {1: SIGNED.map_row(row(1, 5, "100")), 2: SIGNED.map_row(row(2, 5, "-100"))}
    updates = [Change("update", "postings", (1,), None, row(1, 5, "80"), txid=3),
               Change("update", "postings", (2,), None, row(2, 5, "-80"), txid=3)]
    assert unbalanced(mapped(SIGNED, *updates), lambda item: target.get(item.change.key[0])) == []
    assert keys(unbalanced(mapped(SIGNED, *updates[:1]), lambda item: target.get(item.change.key[0]))) == [1]


def test_a_second_change_to_a_row_counts_from_the_first_ones_after_row():
    """Insert and update of one posting in one transaction: the update's before is the insert's
    after, whatever the target row was before the part (none here)."""
    a, b = row(1, 5, "100"), row(2, 5, "-30")
    items = mapped(SIGNED, ins(1, a), ins(1, b),
                   Change("update", "postings", (2,), None, dict(b, amount=Decimal("-100")), txid=1))
    assert unbalanced(items, nothing_known) == []


def test_debit_and_credit_columns_balance_as_debit_minus_credit():
    items = mapped(SPLIT, ins(1, row(1, 5, debit=Decimal("250.00"))), ins(1, row(2, 5, credit=Decimal("200.00"))),
                   ins(1, row(3, 5, credit=Decimal("50.00"), debit=None)),
                   ins(2, row(4, 6, debit=Decimal("10"))), ins(2, row(5, 6, credit=Decimal("9.99"))))
    rejected = unbalanced(items, nothing_known)
    assert keys(rejected) == [4, 5]
    assert ("voucher 6 in source transaction 2 does not balance: postings sum to 0.01 (expected 0)"
            in str(rejected[0][1]))
    assert rejected[0][1].column == "debet"


def test_an_amount_that_is_not_a_number_parks_its_voucher():
    items = mapped(SPLIT, ins(1, row(1, 5, debit="lots")), ins(1, row(2, 5, credit=Decimal("1"))))
    rejected = unbalanced(items, nothing_known)
    assert keys(rejected) == [1, 2]
    assert str(rejected[0][1]).startswith("voucher 5 in source transaction 1 cannot be checked: posting [1] has "
                                          "debet 'lots', not a number: the whole voucher is parked")


def test_tables_without_balance_are_not_checked():
    assert unbalanced(mapped(DATED, ins(1, row(1, 5, "100"))), nothing_known) == []


# -- the mapping names columns it writes ---------------------------------------------------------
@pytest.mark.parametrize("rules, key, column, hint", [
    ("balance: {group_by: bilag, amount: belopp}", "balance.amount", "belopp", "(did you mean 'belop'?)"),
    ("balance: {group_by: voucher, amount: belop}", "balance.group_by", "voucher",
     "(it writes id, bilag, belop, dato)"),
    ("balance: {group_by: bilag, debit: debet, credit: belop}", "balance.debit", "debet", ""),
    ("period: date", "period", "date", "(did you mean 'dato'?)"),
    ("mode: ledger\n    ledger: {amounts: [belop], entry_date: bokfort}", "ledger.entry_date", "bokfort", ""),
])
def test_rule_columns_must_be_target_columns_of_the_mapping(tmp_path, rules, key, column, hint):
    path = tmp_path / "map.yaml"
    path.write_text(textwrap.dedent("""\
        tables:
          postings:
            target: posteringer
            columns: {id: id, bilag: voucher, belop: amount, dato: posted}
        """) + f"    {rules}\n", encoding="utf-8")
    spec = load_mapping(path).tables["postings"]
    with pytest.raises(ConfigError) as err:
        TableMapping(spec, SOURCE_COLUMNS, ("id",), "UTC")
    message = str(err.value)
    assert message.startswith(f"tables.postings.{key}: {column!r} is not a target column the mapping writes to "
                              f"posteringer {hint}".rstrip()), message
    assert message.endswith("(map.yaml line 2)") or message.endswith(f"({path} line 2)"), message


def test_rule_columns_the_mapping_writes_are_accepted():
    spec = dataclasses.replace(DATED.spec, balance=BalanceSpec("bilag", debit="debet", credit="kredit"),
                               ledger=LedgerSpec(("belop",), entry_date="dato"))
    assert TableMapping(spec, SOURCE_COLUMNS, ("id",), "UTC").spec.period == "dato"


# -- end to end: `cdc run` from a SQLite trigger source into SQLite and PostgreSQL targets --------
SOURCE_SCHEMA = """CREATE TABLE postings (id INTEGER PRIMARY KEY, voucher INTEGER NOT NULL, account INTEGER NOT NULL,
    amount NUMERIC(12,2) NOT NULL, posted DATE NOT NULL, memo TEXT);"""
MAPPING = """\
tables:
  postings:
    target: posteringer
    columns: {id: id, bilag: voucher, konto: account, belop: amount, dato: posted, tekst: memo}
    balance: {group_by: bilag, amount: belop}
    period: dato
"""


class Ledger:
    """A pair from the SQLite source's postings into a ledger (SQLite or PostgreSQL), read back as
    plain values so both sides compare."""

    def __init__(self, ws, url: str):
        self.ws, self.url = ws, url
        self.engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))

    def setup(self, on_error: str, batch_size: int = 1000) -> None:
        self.ws.sql(self.ws.source, SOURCE_SCHEMA)
        (self.ws.root / "map.yaml").write_text(MAPPING, encoding="utf-8")
        self.ws.config.write_text(
            f"connections:\n  src: sqlite:///source.db\n  dst: {self.url}\npairs:\n  p:\n    source: src\n"
            f"    target: dst\n    capture: trigger\n    mapping: map.yaml\n    on_error: {on_error}\n"
            f"    batch_size: {batch_size}\n    closed_before: 2026-01-01\n", encoding="utf-8")
        for command in ("init", "install"):
            self.ok(command)
        self.ok("run", "--once")  # the (empty) snapshot

    def ok(self, *args: str) -> str:
        result = self.ws.cdc(args[0], *args[1:], str(self.ws.config))
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def source(self, *statements: str) -> None:
        """Statements run in ONE source transaction."""
        self.ws.sql(self.ws.source, ";\n".join(statements))

    def target_rows(self) -> list[tuple]:
        with self.engine.connect() as conn:
            return [_plain(row) for row in conn.exec_driver_sql("SELECT * FROM posteringer ORDER BY id")]

    def source_rows(self, where: str = "1 = 1") -> list[tuple]:
        rows = self.ws.query(self.ws.source, f"SELECT * FROM postings WHERE {where} ORDER BY id")
        return [_plain(row) for row in rows]

    def letters(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(sa.text(
                "SELECT id, op, key, kind, status, error, column_name, blocked_by, source_txid "
                "FROM cdc_dead_letters ORDER BY id"))]


def _plain(row) -> tuple:
    """Dates as ISO text and numbers as normalised Decimals: SQLite keeps both as it was given them."""
    return tuple(v.isoformat() if isinstance(v, dt.date) else
                 Decimal(repr(v) if isinstance(v, float) else v).normalize() if isinstance(v, (Decimal, float)) else v
                 for v in row)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_pair(request, ws):
    url = "sqlite:///" + str(ws.target) if request.param == "sqlite" else request.getfixturevalue("pg_url")
    pair = Ledger(ws, url)
    yield pair
    pair.engine.dispose()


def _insert(id, voucher, amount, posted="2026-02-01", memo="") -> str:
    return f"INSERT INTO postings VALUES ({id}, {voucher}, 1920, '{amount}', '{posted}', '{memo}')"


def test_unbalanced_vouchers_and_closed_periods_are_parked_and_the_rest_applied(ledger_pair):
    """One source transaction with an unbalanced voucher (1042) and a balanced one (1043); a later
    balanced voucher (1044); a voucher dated in the closed period (1045); then, read later, changes
    to a parked key (held behind its dead letter) and to an applied one (applied)."""
    pair = ledger_pair
    pair.setup("park")
    pair.source(_insert(1, 1042, "-1000.00"), _insert(2, 1042, "850.00"), _insert(3, 1042, "300.00"),
                _insert(4, 1043, "-20.00"), _insert(5, 1043, "20.00"))
    pair.source(_insert(6, 1044, "-500.00"), _insert(7, 1044, "500.00"))
    pair.source(_insert(8, 1045, "-75.00", "2025-12-31"), _insert(9, 1045, "75.00", "2025-12-31"))
    out = pair.ok("run", "--once")
    assert "4 changes applied in 1 target transactions, 5 parked in dead letters" in out, out
    assert pair.target_rows() == pair.source_rows("id IN (4, 5, 6, 7)")  # row by row
    status = json.loads(pair.ws.cdc("status", "--json", str(pair.ws.config)).stdout)
    assert status[0]["dead_letters"] == 5 and status[0]["healthy"] is False
    audit = json.loads(pair.ok("audit", "--format", "json"))  # how many were parked, and why
    parked = {s["kind"]: s["count"] for s in audit["summary"] if "parked" in s["kind"]}
    assert parked == {"insert (parked: balance)": 3, "insert (parked: closed)": 2}, audit["summary"]
    assert sum("is in a closed period" in (e.get("detail") or "") for e in audit["entries"]) == 2, audit["entries"]
    pair.source("UPDATE postings SET memo = 'checked' WHERE id IN (1, 4)")
    out = pair.ok("run", "--once")
    assert "1 changes applied in 1 target transactions, 1 parked in dead letters" in out, out
    assert pair.target_rows() == pair.source_rows("id IN (4, 5, 6, 7)")  # memo 'checked' on 4 only
    letters = pair.letters()
    assert [(json.loads(l["key"]), l["kind"], l["status"], l["op"]) for l in letters] == [
        ([1], "balance", "parked", "insert"), ([2], "balance", "parked", "insert"),
        ([3], "balance", "parked", "insert"), ([8], "closed", "parked", "insert"),
        ([9], "closed", "parked", "insert"), ([1], "held", "held", "update")]
    txid = letters[0]["source_txid"]
    assert txid and {l["source_txid"] for l in letters[:3]} == {txid}
    for letter in letters[:3]:
        assert letter["error"] == (f"voucher 1042 in source transaction {txid} does not balance: postings sum to "
                                   "150.00 (expected 0): the whole voucher is parked; fix the source, then "
                                   "`cdc dead-letters retry`")
        assert letter["column_name"] == "belop"
    for letter in letters[3:5]:
        assert letter["error"] == ("posting dated 2025-12-31 is in a closed period (closed_before 2026-01-01): "
                                   "parked for review; fix the source or move closed_before, then "
                                   "`cdc dead-letters retry`")
        assert letter["column_name"] == "dato"
    assert letters[5]["blocked_by"] == f"dead letter {letters[0]['id']}"
    # Nothing moves on another run: the parked changes stay parked, once.
    pair.ok("run", "--once")
    assert len(pair.letters()) == 6 and pair.target_rows() == pair.source_rows("id IN (4, 5, 6, 7)")


@pytest.mark.parametrize("bad", ["balance", "closed"])
def test_with_stop_the_pair_stops_before_the_failing_transaction_with_nothing_half_applied(ledger_pair, bad):
    pair = ledger_pair
    pair.setup("stop")
    pair.source(_insert(1, 7, "-10.00"), _insert(2, 7, "10.00"))
    pair.ok("run", "--once")
    before = pair.target_rows()
    assert before == pair.source_rows()
    if bad == "balance":
        pair.source(_insert(3, 8, "-10.00"), _insert(4, 8, "10.00"), _insert(5, 9, "99.99"), _insert(6, 9, "-100.00"))
        expected = "voucher 9 in source transaction"
    else:
        pair.source(_insert(3, 8, "-10.00"), _insert(4, 8, "10.00"), "UPDATE postings SET posted = '2025-06-30' "
                    "WHERE id = 2")
        expected = "posting dated 2025-06-30 is in a closed period"
    pair.source(_insert(10, 10, "-1.00"), _insert(11, 10, "1.00"))
    for _ in range(2):  # stops again, at once, on the next run
        result = pair.ws.cdc("run", "--once", str(pair.ws.config))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
        assert "table posteringer key [" in result.stderr and expected in result.stderr, result.stderr
        assert pair.target_rows() == before and pair.letters() == []


def test_a_balanced_voucher_larger_than_a_batch_is_applied_whole(ws):
    """batch_size 2: the transaction's five postings reach the target in parts of two, in one
    target transaction; voucher 5's three postings balance only together."""
    pair = Ledger(ws, "sqlite:///" + str(ws.target))
    pair.setup("park", batch_size=2)
    pair.source(_insert(1, 5, "-100.00"), _insert(2, 5, "60.00"), _insert(3, 5, "40.00"),
                _insert(4, 6, "-1.00"), _insert(5, 6, "1.00"))
    pair.ok("run", "--once")
    assert pair.letters() == [] and pair.target_rows() == pair.source_rows()
    pair.engine.dispose()


def test_check_names_a_rule_column_the_mapping_does_not_write(ws):
    ws.sql(ws.source, SOURCE_SCHEMA)
    (ws.root / "map.yaml").write_text(MAPPING.replace("amount: belop}", "amount: amount}"), encoding="utf-8")
    ws.write_config("source: src\ntarget: dst\ncapture: trigger\nmapping: map.yaml\nclosed_before: 2026-01-01")
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert ("tables.postings.balance.amount: 'amount' is not a target column the mapping writes to posteringer "
            "(it writes id, bilag, konto, belop, dato, tekst) (map.yaml line 2)") in result.stderr, result.stderr


def test_a_posting_whose_key_changes_keeps_its_voucher_balanced(ledger_pair):
    """A renumbered posting (its key changes: the old row deleted, the new one written) moves no
    amount: its voucher still balances and the change is applied."""
    pair = ledger_pair
    pair.setup("park")
    pair.source(_insert(1, 5, "-10.00"), _insert(2, 5, "10.00"))
    pair.ok("run", "--once")
    pair.source("UPDATE postings SET id = 20 WHERE id = 1")
    pair.ok("run", "--once")
    assert pair.letters() == [] and pair.target_rows() == pair.source_rows()


def test_a_voucher_with_one_posting_in_a_closed_period_is_parked_whole(ledger_pair):
    pair = ledger_pair
    pair.setup("park")
    pair.source(_insert(8, 1045, "-75.00", "2025-12-31"), _insert(9, 1045, "75.00", "2026-01-02"),
                _insert(10, 1046, "-5.00"), _insert(11, 1046, "5.00"))
    pair.ok("run", "--once")
    assert [(json.loads(l["key"]), l["kind"]) for l in pair.letters()] == [([8], "closed"), ([9], "balance")]
    assert "voucher 1045 in source transaction" in pair.letters()[1]["error"]
    assert "postings sum to 75.00 (expected 0)" in pair.letters()[1]["error"]
    assert pair.target_rows() == pair.source_rows("voucher = 1046")


def _parked_then_fixed(pair, fix: str, held: int) -> None:
    """Vouchers 1042 (unbalanced), 1043 (balanced) and 1045 (in the closed period) read and parked,
    then ``fix`` run at the source (read and held behind the parked postings)."""
    pair.setup("park")
    pair.source(_insert(1, 1042, "-1000.00"), _insert(2, 1042, "850.00"), _insert(3, 1042, "300.00"),
                _insert(4, 1043, "-20.00"), _insert(5, 1043, "20.00"))
    pair.source(_insert(8, 1045, "-75.00", "2025-12-31"), _insert(9, 1045, "75.00", "2025-12-31"))
    pair.ok("run", "--once")
    assert [l["kind"] for l in pair.letters()] == ["balance"] * 3 + ["closed"] * 2
    pair.source(fix)
    pair.ok("run", "--once")
    assert [l["kind"] for l in pair.letters()[5:]] == ["held"] * held
    assert pair.target_rows() == pair.source_rows("id IN (4, 5)")  # nothing applied out of order


def test_after_the_source_is_fixed_retry_applies_the_unbalanced_voucher_whole(ledger_pair):
    """The voucher's last posting is fixed at the source; `cdc dead-letters retry` of one of its
    postings applies the source's current rows of the whole voucher, and the fix held behind it
    is superseded: the target equals the source row by row."""
    pair = ledger_pair
    _parked_then_fixed(pair, "UPDATE postings SET amount = '150.00' WHERE id = 3", 1)
    first = pair.letters()[0]["id"]
    result = pair.ws.cdc("dead-letters", "retry", str(pair.ws.config), str(first))
    assert result.returncode == 0, result.stdout + result.stderr
    assert pair.target_rows() == pair.source_rows("voucher <> 1045")
    assert [(l["kind"], l["status"]) for l in pair.letters()] == [("balance", "retried")] * 3 + [
        ("closed", "parked")] * 2 + [("held", "resolved")]
    # The pair goes on: a later change to a retried posting is applied.
    pair.source("UPDATE postings SET memo = 'reviewed' WHERE voucher = 1042")
    pair.ok("run", "--once")
    assert pair.target_rows() == pair.source_rows("voucher <> 1045")


def test_after_the_source_is_fixed_retry_applies_the_closed_voucher(ledger_pair):
    """The closed voucher's date is moved into an open period at the source; retrying one of its
    postings applies the source's current rows of both (a voucher balances only whole)."""
    pair = ledger_pair
    _parked_then_fixed(pair, "UPDATE postings SET posted = '2026-01-05' WHERE voucher = 1045", 2)
    closed_letter = pair.letters()[3]["id"]
    result = pair.ws.cdc("dead-letters", "retry", str(pair.ws.config), str(closed_letter))
    assert "does not balance" not in result.stdout, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert pair.target_rows() == pair.source_rows("voucher <> 1042")
    assert [(l["kind"], l["status"]) for l in pair.letters()[3:]] == [("closed", "retried")] * 2 + [
        ("held", "resolved")] * 2


def test_a_voucher_a_retry_reads_unbalanced_is_named_as_the_source_rows_it_read():
    """`cdc dead-letters retry` applies the source's current rows as one unit (txid RETRY): its message
    names them, not a "source transaction retry" that does not exist."""
    from cdc.apply._rules import RETRY

    rejected = unbalanced(mapped(SIGNED, ins(RETRY, row(1, 1042, "-100.00")), ins(RETRY, row(2, 1042, "90.00"))),
                          nothing_known)
    assert "voucher 1042 in the source's current rows a retry read does not balance" in str(rejected[0][1])
