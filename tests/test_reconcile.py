"""`cdc reconcile`: hand-made damage on SQLite, PostgreSQL and MariaDB targets is found exactly,
repaired through the audited apply path, and the reports (text, JSON, CSV, HTML) say so."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

import workload

DDL = {
    "sqlite": ["CREATE TABLE entries (id INTEGER PRIMARY KEY, account INTEGER NOT NULL, amount NUMERIC(18,2) NOT NULL, "
               "currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at DATETIME)",
               "CREATE TABLE parties (code VARCHAR(10) NOT NULL, region INTEGER NOT NULL, name TEXT NOT NULL, "
               "PRIMARY KEY (code, region))"],
    "postgresql": ["CREATE TABLE entries (id BIGINT PRIMARY KEY, account INT NOT NULL, amount NUMERIC(18,2) NOT NULL, "
                   "currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at TIMESTAMPTZ)",
                   "CREATE TABLE parties (code VARCHAR(10) NOT NULL, region INT NOT NULL, name TEXT NOT NULL, "
                   "PRIMARY KEY (code, region))"],
    "mariadb": ["CREATE TABLE entries (id BIGINT PRIMARY KEY, account INT NOT NULL, amount DECIMAL(18,2) NOT NULL, "
                "currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at DATETIME(6)) ENGINE=InnoDB",
                "CREATE TABLE parties (code VARCHAR(10) NOT NULL, region INT NOT NULL, name TEXT NOT NULL, "
                "PRIMARY KEY (code, region)) ENGINE=InnoDB"],
}
CAPTURE = {"sqlite": "trigger", "postgresql": "logical", "mariadb": "binlog"}


def engine(url: str) -> sa.Engine:
    url = url.replace("postgresql://", "postgresql+psycopg://").replace("mysql://", "mysql+pymysql://")
    return sa.create_engine(url, connect_args={"charset": "utf8mb4"} if "pymysql" in url else {})


def run_sql(url: str, statement: str, **params) -> list:
    made = engine(url)
    try:
        with made.begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return result.all() if result.returns_rows else []
    finally:
        made.dispose()


@pytest.fixture
def database(ws, request):
    """A factory: a fresh empty database of a kind ('sqlite', 'postgresql', 'mariadb') -> (url, workload db)."""
    count = iter(range(100))

    def make(kind: str) -> tuple[str, str]:
        if kind == "sqlite":
            path = ws.root / f"db{next(count)}.db"
            return f"sqlite:///{path}", str(path)
        url = request.getfixturevalue("pg_databases" if kind == "postgresql" else "mysql_databases")()
        return url, url

    return make


def cdc_ok(ws, *args):
    result = ws.cdc(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def synced_pair(ws, database, source_kind: str, target_kind: str, changes: int = 600,
                mapping: str = "") -> tuple[str, str]:
    """A source filled by the workload, its pair run once (the snapshot): source and target URLs."""
    source, source_db = database(source_kind)
    target, _ = database(target_kind)
    for statement in DDL[source_kind]:
        run_sql(source, statement)
    workload.run(source_db, changes, seed=81)
    tables = "tables: [entries, parties]"
    if mapping:
        (ws.root / "books.yaml").write_text(mapping, encoding="utf-8")
        tables = "mapping: books.yaml"
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  books:\n    source: src\n"
                         f"    target: dst\n    capture: {CAPTURE[source_kind]}\n    {tables}\n", encoding="utf-8")
    for command in ("init", "install"):
        cdc_ok(ws, command, str(ws.config))
    cdc_ok(ws, "run", "--once", str(ws.config))
    return source, target


def damage(target: str, kind: str) -> dict:
    """Rows deleted and inserted, one cent changed, æ -> ae in a memo, a timestamp one hour later."""
    ids = [r[0] for r in run_sql(target, "SELECT id FROM entries WHERE booked_at IS NOT NULL ORDER BY id")]
    gone, cent, stamp = ids[3:5], ids[10], ids[20]
    memo = next(i for (i,) in run_sql(target, "SELECT id FROM entries WHERE memo LIKE :m ORDER BY id", m="%æ%")
                if i not in (*gone, cent, stamp))
    run_sql(target, f"DELETE FROM entries WHERE id IN ({gone[0]}, {gone[1]})")
    run_sql(target, "INSERT INTO entries (id, account, amount, currency, memo, booked_at) "
                    "VALUES (999999, 1500, 1.00, 'NOK', 'ekstra', NULL)")
    amount = Decimal(str(run_sql(target, f"SELECT amount FROM entries WHERE id = {cent}")[0][0]))
    run_sql(target, f"UPDATE entries SET amount = :a WHERE id = {cent}", a=str(amount + Decimal("0.01")))
    run_sql(target, f"UPDATE entries SET memo = REPLACE(memo, 'æ', 'ae') WHERE id = {memo}")
    if kind == "sqlite":
        raw = run_sql(target, f"SELECT booked_at FROM entries WHERE id = {stamp}")[0][0]
        later = dt.datetime.fromisoformat(raw) + dt.timedelta(hours=1)
        run_sql(target, f"UPDATE entries SET booked_at = :b WHERE id = {stamp}",
                b=later.isoformat(sep=" " if " " in raw else "T"))
    else:
        plus = "booked_at + interval '1 hour'" if kind == "postgresql" else "booked_at + INTERVAL 1 HOUR"
        run_sql(target, f"UPDATE entries SET booked_at = {plus} WHERE id = {stamp}")
    return {"missing": sorted(gone), "extra": [999999], "different": {cent: ["amount"], memo: ["memo"],
                                                                      stamp: ["booked_at"]}}


def found(report: dict) -> dict:
    entries = next(t for t in report["tables"] if t["target_table"] == "entries")
    rows = entries["rows"]
    return {"missing": sorted(int(r["key"][0]) for r in rows if r["kind"] == "missing"),
            "extra": sorted(int(r["key"][0]) for r in rows if r["kind"] == "extra"),
            "different": {int(r["key"][0]): sorted(r["columns"]) for r in rows if r["kind"] == "different"}}


@pytest.mark.parametrize("source_kind, target_kind", [("sqlite", "sqlite"), ("postgresql", "postgresql"),
                                                      ("mariadb", "postgresql"), ("postgresql", "mariadb")])
def test_hand_made_damage_is_found_exactly_and_repaired(ws, database, source_kind, target_kind):
    source, target = synced_pair(ws, database, source_kind, target_kind)
    config = str(ws.config)
    equal = ws.cdc("reconcile", config, "--settle", "0", "--format", "json")
    assert equal.returncode == 0, equal.stdout + equal.stderr
    report = json.loads(equal.stdout)
    assert report["equal"] and all(t["source_rows"] == t["target_rows"] > 0 for t in report["tables"])
    # Every side fingerprints inside its database (SQLite through registered functions).
    methods = {side: method.split(" ")[0] for side, method in report["tables"][0]["methods"].items()}
    assert methods == {"source": "in-database", "target": "in-database"}, report["tables"][0]["methods"]

    wanted = damage(target, target_kind)
    result = ws.cdc("reconcile", config, "--settle", "0", "--format", "json", "--output", str(ws.root / "r.json"))
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((ws.root / "r.json").read_text(encoding="utf-8"))
    assert found(report) == wanted
    entries = next(t for t in report["tables"] if t["target_table"] == "entries")
    assert (entries["missing"], entries["extra"], entries["different"]) == (2, 1, 3)
    parties = next(t for t in report["tables"] if t["target_table"] == "parties")
    assert parties["equal"]
    # A composite text+integer key: found by key, however each database sorts text.
    code, region = run_sql(target, "SELECT code, region FROM parties ORDER BY region, code")[1]
    run_sql(target, "UPDATE parties SET name = 'Ærlig endret' WHERE code = :c AND region = :r", c=code, r=region)
    report = json.loads(ws.cdc("reconcile", config, "--settle", "0", "--format", "json").stdout)
    parties = next(t for t in report["tables"] if t["target_table"] == "parties")
    assert [(r["kind"], r["key"], list(r["columns"])) for r in parties["rows"]] == [
        ("different", [code, region], ["name"])]
    memo_row = next(r for r in entries["rows"] if r["columns"].keys() == {"memo"})
    assert "æ" in memo_row["columns"]["memo"]["source"] and "ae" in memo_row["columns"]["memo"]["target"]

    text = ws.cdc("reconcile", config, "--settle", "0").stdout
    assert "entries -> entries:" in text and "2 missing in target, 1 extra in target, 3 differ" in text
    # --where on both sides: only the extra row's range, by the same column name.
    only = json.loads(ws.cdc("reconcile", config, "--settle", "0", "--format", "json", "--table", "entries",
                             "--where", "id >= 999999").stdout)["tables"]
    assert [(t["source_rows"], t["target_rows"], t["extra"], t["missing"]) for t in only] == [(0, 1, 1, 0)]
    csv_lines = ws.cdc("reconcile", config, "--settle", "0", "--format", "csv").stdout.splitlines()
    assert csv_lines[0].startswith("pair,source_table,target_table,kind,key,column")
    data = [line for line in csv_lines if not line.startswith("#")]  # the provenance block follows the rows
    assert len(data) == 1 + 2 + 1 + 3 + 1 and csv_lines[len(data)] == "# provenance:"

    plan = ws.cdc("reconcile", config, "--settle", "0", "--repair", "--dry-run")
    assert plan.returncode == 1 and "repair would apply 6 upsert(s) and 1 delete(s)" in plan.stdout, plan.stdout
    assert "upsert entries (999999)" not in plan.stdout and "delete entries (999999)" in plan.stdout
    assert found(json.loads(ws.cdc("reconcile", config, "--settle", "0", "--format", "json").stdout)) == wanted

    repaired = ws.cdc("reconcile", config, "--settle", "0", "--repair")
    assert "repair applied 6 upsert(s) and 1 delete(s)" in repaired.stdout, repaired.stdout + repaired.stderr
    again = ws.cdc("reconcile", config, "--settle", "0")
    assert again.returncode == 0, again.stdout + again.stderr
    audit = run_sql(target, "SELECT a.op, a.key FROM cdc_audit_log a WHERE a.reason = 'repair' ORDER BY a.id")
    assert sorted(audit) == sorted([("insert", f"[{k}]") for k in wanted["missing"]] + [("delete", "[999999]")] +
                                   [("update", f"[{k}]") for k in wanted["different"]] +
                                   [("update", json.dumps([code, region], ensure_ascii=False, separators=(",", ":")))])
    cent = next(k for k, cols in wanted["different"].items() if cols == ["amount"])
    history = ws.cdc("audit", config, "--table", "entries", "--key", str(cent)).stdout
    lines = [line for line in history.splitlines() if line.startswith("  20")]
    # The row a person changed, overwritten by the repair under source_wins: a conflict, audited so.
    assert len(lines) == 1 and "update (conflict: source_wins) [repair]" in lines[0] and "amount: " in lines[0], history
    assert "a repair made it as the source has it" in lines[0], history
    assert "memo" not in lines[0] and "booked_at" not in lines[0]  # only what the repair changed
    summary = json.loads(ws.cdc("audit", config, "--format", "json", "--op", "delete").stdout)["summary"]
    assert {(s["table"], s["kind"]) for s in summary} >= {("entries", "delete (repair, conflict: source_wins)")}
    runs = run_sql(target, "SELECT equal, missing, extra, different, repaired FROM cdc_reconcile_runs ORDER BY id")
    assert [tuple(r) for r in runs[-2:]] == [(False, 2, 1, 4, 7), (True, 0, 0, 0, None)]


@pytest.mark.parametrize("source_kind, target_kind", [("sqlite", "sqlite"), ("postgresql", "mariadb"),
                                                      ("mariadb", "postgresql")])
def test_control_totals_per_account_and_month_drill_down_to_rows(ws, database, source_kind, target_kind):
    # A transform makes the source side fingerprint in Python: equal data must hash equal to the
    # target's SQL (SQLite's registered functions, MariaDB's own SQL).
    mapping = ("tables:\n  entries:\n    columns: {id: id, account: account, amount: amount, currency: currency, "
               "memo: {from: memo, transforms: [trim]}, booked_at: booked_at}\n"
               "    control_totals: {account: account, date: booked_at, amount: amount}\n  parties: {}\n")
    source, target = synced_pair(ws, database, source_kind, target_kind, mapping=mapping)
    report = json.loads(ws.cdc("reconcile", str(ws.config), "--settle", "0", "--format", "json").stdout)
    assert report["equal"], report["tables"]
    methods = report["tables"][0]["methods"]
    assert methods["source"].startswith("streamed") and methods["target"].startswith("in-database"), methods
    totals = report["tables"][0]["totals"]
    source_sums = run_sql(source, "SELECT count(*), sum(amount) FROM entries WHERE booked_at IS NOT NULL")[0]
    assert sum(t["source_count"] for t in totals if t["period"]) == source_sums[0]
    assert sum(Decimal(t["target_sum"]) for t in totals if t["period"]) == Decimal(str(source_sums[1])).quantize(
        Decimal("0.01"))
    assert all(t["equal"] for t in totals) and {t["account"] for t in totals} == {"1500", "1920", "2700", "3000"}
    wanted = damage(target, target_kind)
    cent = next(k for k, cols in wanted["different"].items() if cols == ["amount"])
    report = json.loads(ws.cdc("reconcile", str(ws.config), "--settle", "0", "--format", "json").stdout)
    off = [t for t in report["tables"][0]["totals"] if not t["equal"]]
    by_cent = next(t for t in off if [cent] in t["rows"])
    assert Decimal(by_cent["target_sum"]) - Decimal(by_cent["source_sum"]) == Decimal("0.01") or \
        by_cent["source_count"] != by_cent["target_count"]
    for gone in wanted["missing"]:  # a deleted row: its group is one row short
        group = next(t for t in off if [gone] in t["rows"])
        assert group["source_count"] > group["target_count"] or len(group["rows"]) > 1
    # An hour later at 12:00 stays in its month, a memo is no amount: only the cent and the deleted rows move
    # totals (the extra row has no date, so no period).
    assert len(off) <= 1 + len(wanted["missing"]) + 1
    text = ws.cdc("reconcile", str(ws.config), "--settle", "0").stdout
    assert "control total differs: account" in text


def test_uuid_keys_between_postgresql_and_mariadb(ws, database):
    """A UUID key (uuid in PostgreSQL, CHAR(36) in MariaDB) found by key across database kinds."""
    source, _ = database("postgresql")
    target, _ = database("mariadb")
    run_sql(source, "CREATE TABLE vouchers (id UUID PRIMARY KEY, amount NUMERIC(12,2) NOT NULL, note TEXT)")
    run_sql(source, "INSERT INTO vouchers SELECT md5(g::text)::uuid, g / 7.0, 'bilag ' || g "
                    "FROM generate_series(1, 300) g")
    run_sql(target, "CREATE TABLE vouchers (id CHAR(36) PRIMARY KEY, amount DECIMAL(12,2) NOT NULL, note TEXT)")
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  books:\n    source: src\n"
                         "    target: dst\n    capture: logical\n    tables: [vouchers]\n", encoding="utf-8")
    for command in ("init", "install"):
        cdc_ok(ws, command, str(ws.config))
    cdc_ok(ws, "run", "--once", str(ws.config))
    assert ws.cdc("reconcile", str(ws.config), "--settle", "0").returncode == 0
    victim = run_sql(target, "SELECT id FROM vouchers ORDER BY id LIMIT 1 OFFSET 17")[0][0]
    run_sql(target, "UPDATE vouchers SET note = 'endret' WHERE id = :i", i=victim)
    report = json.loads(ws.cdc("reconcile", str(ws.config), "--settle", "0", "--format", "json").stdout)
    rows = report["tables"][0]["rows"]
    assert [(r["kind"], str(r["key"][0]).lower(), list(r["columns"])) for r in rows] == [
        ("different", victim.lower(), ["note"])]


def test_a_difference_still_in_flight_settles(ws, database):
    """Changes the pair has not applied yet are differences only until it applies them."""
    import threading

    source, target = synced_pair(ws, database, "postgresql", "postgresql", changes=200)
    run_sql(source, "UPDATE entries SET memo = 'underveis' WHERE id IN (SELECT id FROM entries ORDER BY id LIMIT 4)")
    applier = threading.Timer(1.0, lambda: ws.cdc("run", "--once", str(ws.config)))
    applier.start()
    result = ws.cdc("reconcile", str(ws.config), "--settle", "15", "--format", "json")
    applier.join()
    report = json.loads(result.stdout)
    entries = next(t for t in report["tables"] if t["target_table"] == "entries")
    assert result.returncode == 0 and entries["settled"] == 4 and entries["different"] == 0, result.stdout


def test_a_target_that_lost_most_rows_is_counted_from_fingerprints(ws, database, monkeypatch):
    """Past MAX_ROW_CHECKS differing keys the counts come from the fingerprints; a few are listed; repair
    still fixes all of them."""
    from cdc import commands, reconcile

    source, target = synced_pair(ws, database, "sqlite", "sqlite", changes=400)
    total = run_sql(target, "SELECT count(*) FROM entries")[0][0]
    kept = [i for (i,) in run_sql(target, "SELECT id FROM entries ORDER BY id LIMIT 3")]
    run_sql(target, f"DELETE FROM entries WHERE id > {kept[-1]}")
    run_sql(target, f"UPDATE entries SET memo = 'feil' WHERE id = {kept[1]}")
    monkeypatch.setattr(reconcile._compare, "MAX_ROW_CHECKS", 20)
    report = commands.reconcile(str(ws.config), table="entries", limit=5, settle=0)
    entries = report.tables[0]
    assert entries.counted_from_fingerprints and (entries.missing, entries.different) == (total - 3, 1)
    assert len(entries.rows) == 5
    repaired = commands.reconcile(str(ws.config), table="entries", limit=5, settle=0, repair=True)
    assert repaired.repair["applied"] == total - 3 + 1
    assert commands.reconcile(str(ws.config), settle=0).equal


def test_bad_usage_exits_2(ws, database):
    synced_pair(ws, database, "sqlite", "sqlite", changes=50)
    config = str(ws.config)
    for args, message in ((["--table", "nope"], "has no table 'nope'"), (["--dry-run"], "--dry-run goes with"),
                          (["--where", "no_such_column > 1"], "--where 'no_such_column > 1' does not work"),
                          (["--pair", "other"], "other")):
        result = ws.cdc("reconcile", config, *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def visible_text(page: Path, profile: Path) -> str:
    """The page's text after its scripts ran, as headless Chromium renders it."""
    import html.parser

    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "<table" in dom, "Chromium rendered nothing"

    class Text(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.parts, self.skip = [], 0

        def handle_starttag(self, tag, attrs):
            self.skip += tag in ("script", "style")

        def handle_endtag(self, tag):
            self.skip -= tag in ("script", "style")

        def handle_data(self, data):
            if not self.skip:
                self.parts.append(data)

    parser = Text()
    parser.feed(dom)
    return re.sub(r"[ \t\r\n]+", " ", " ".join(parser.parts))  # (no-break spaces stay: amounts have them)


def test_html_report_reads_well_in_chromium(ws, database):
    if chromium() is None:
        if __import__("os").environ.get("CI") == "true":
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("no Chromium on this machine")
    source, target = synced_pair(ws, database, "sqlite", "sqlite", changes=300)
    wanted = damage(target, "sqlite")
    cent = next(k for k, cols in wanted["different"].items() if cols == ["amount"])
    run_sql(source, f"UPDATE entries SET amount = '1234567.89' WHERE id = {cent}")
    cdc_ok(ws, "run", "--once", str(ws.config))
    run_sql(target, f"UPDATE entries SET amount = '1234567.90' WHERE id = {cent}")
    page = ws.root / "avstemming.html"
    ws.cdc("reconcile", str(ws.config), "--settle", "0", "--format", "html", "--locale", "nb", "--output", str(page))
    text = visible_text(page, ws.root / "chromium-profile")
    assert "Avstemming: books" in text and "Avvik funnet" in text
    assert "Sammendrag" in text and "Mangler i mål" in text
    assert "1\u00a0234\u00a0567,89" in text and "1\u00a0234\u00a0567,90" in text  # amounts in Norwegian form
    assert text.count("mangler i mål") == 2 and text.count("ekstra i mål") == 1 and "999999" in text
    memo_key = next(k for k, cols in wanted["different"].items() if cols == ["memo"])
    memo = run_sql(source, f"SELECT memo FROM entries WHERE id = {memo_key}")[0][0]
    assert memo in text and memo.replace("æ", "ae") in text
    assert "repair applied" in ws.cdc("reconcile", str(ws.config), "--settle", "0", "--repair").stdout
    trail = ws.root / "revisjon.html"
    cdc_ok(ws, "audit", str(ws.config), "--format", "html", "--locale", "nb", "--output", str(trail))
    text = visible_text(trail, ws.root / "chromium-profile")
    assert "Revisjonsspor" in text and "Sammendrag" in text and "Endringer" in text
    assert "entries update (repair, conflict: source_wins)" in text and "amount: 1\u00a0234\u00a0567,90 -> 1\u00a0234\u00a0567,89" in text
