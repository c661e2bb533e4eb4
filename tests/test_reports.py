"""Reports an auditor can rely on: rows that cannot be mapped are listed in every format, a text that
looks like a number is never reformatted, CSV carries raw values, every report carries its provenance
(and a SHA-256 of its body that checks), the trial balance has differences and totals, and Norwegian
reports show Oslo time."""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import hashlib
import html
import html.parser
import io
import json
import re
import socket
import uuid
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from test_reconcile import cdc_ok, database, run_sql  # noqa: F401 - database is a fixture

INVOICES = ("CREATE TABLE invoices (id INTEGER PRIMARY KEY, ref VARCHAR(20) NOT NULL, account INTEGER NOT NULL, "
            "amount NUMERIC(14,3) NOT NULL, booked DATE NOT NULL)")
MAPPING = ("tables:\n  invoices:\n    columns: {id: id, ref: ref, account: account, "
           "amount: {from: amount, transforms: [{decimal: 2}]}, booked: booked}\n"
           "    control_totals: {account: account, date: booked, amount: amount}\n")
ROWS = [(1, "0012.50", 1500, "1234567.89", "2026-01-15"), (2, "2024.17", 1500, "10.00", "2026-01-20"),
        (3, "A-3", 3000, "-250.50", "2026-02-01"), (4, "0004", 3000, "99.99", "2026-02-28")]


def invoice_pair(ws, database, target_kind: str = "sqlite", password: str | None = None) -> tuple[str, str]:
    source, _ = database("sqlite")
    target, _ = database(target_kind)
    if password is not None:  # the test server trusts loopback: any password connects
        target = target.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    run_sql(source, INVOICES)
    for row in ROWS:
        run_sql(source, "INSERT INTO invoices VALUES (:i, :r, :a, :m, :b)", i=row[0], r=row[1], a=row[2], m=row[3],
                b=row[4])
    (ws.root / "invoices.yaml").write_text(MAPPING, encoding="utf-8")
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  books:\n    source: src\n"
                         "    target: dst\n    capture: trigger\n    mapping: invoices.yaml\n", encoding="utf-8")
    for command in ("init", "install"):
        cdc_ok(ws, command, str(ws.config))
    cdc_ok(ws, "run", "--once", str(ws.config))
    return source, target


def report(ws, command: str, fmt: str, *args: str) -> str:
    result = ws.cdc(command, str(ws.config), *(("--settle", "0") if command == "reconcile" else ()), "--format", fmt,
                    *args)
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stdout + result.stderr
    return result.stdout


def csv_rows(text: str) -> list[dict]:
    """The data rows of a CSV report (the provenance lines after them start with #)."""
    return list(csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#")))


def page_text(page: str) -> str:
    """The visible text of an HTML report (scripts and styles left out)."""
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
    parser.feed(page)
    return re.sub(r"[ \t\r\n]+", " ", " ".join(parser.parts))


def test_rows_that_cannot_be_mapped_are_listed_in_every_format(ws, database):
    """A source row with 3 decimals where the mapping keeps 2 cannot be mapped: text and JSON counted it,
    the HTML report said "differences found" above a table of zeros and the CSV was its header only."""
    source, _ = invoice_pair(ws, database)
    run_sql(source, "INSERT INTO invoices VALUES (5, 'R-5', 1500, 1.005, '2026-03-01')")
    text = report(ws, "reconcile", "text")
    assert "1 cannot be mapped" in text and "    cannot map source row (5)  table invoices key [5] column amount: " in text
    listed = [r for t in json.loads(report(ws, "reconcile", "json"))["tables"] for r in t["rows"]]
    assert [(r["kind"], r["key"], r["column"]) for r in listed] == [("unmappable", [5], "amount")]
    assert "decimals" in listed[0]["error"]
    rows = csv_rows(report(ws, "reconcile", "csv"))
    assert [(r["kind"], r["key"], r["column"]) for r in rows] == [("unmappable", "5", "amount")]
    assert rows[0]["note"] == listed[0]["error"]
    page = page_text(report(ws, "reconcile", "html"))
    assert "Differences found" in page and "Cannot be mapped" in page
    assert "cannot be mapped 5 amount" in page and listed[0]["error"] in page
    assert "kan ikke tilordnes 5 amount" in page_text(report(ws, "reconcile", "html", "--locale", "nb"))


def test_text_that_looks_like_a_number_is_shown_as_it_is(ws, database):
    """'0012.50' became 12.50 and '2024.17' became 2,024.17 (in the audit trail too); CSV carries raw
    values (1234567.89, not 1,234,567.89)."""
    source, target = invoice_pair(ws, database)
    run_sql(target, "UPDATE invoices SET ref = '12.5' WHERE id = 1")
    run_sql(target, "UPDATE invoices SET ref = '2024.170', amount = '1234567.90' WHERE id = 2")
    text = report(ws, "reconcile", "text")
    assert "    differs  (1)  ref: 0012.50 -> target 12.5" in text
    assert "    differs  (2)  ref: 2024.17 -> target 2024.170; amount: 10.00 -> target 1,234,567.90" in text
    rows = {(r["key"], r["column"]): (r["source_value"], r["target_value"]) for r in csv_rows(report(ws, "reconcile",
                                                                                                   "csv"))}
    assert rows == {("1", "ref"): ("0012.50", "12.5"), ("2", "ref"): ("2024.17", "2024.170"),
                    ("2", "amount"): ("10.00", "1234567.90")}
    page = page_text(report(ws, "reconcile", "html", "--locale", "nb"))
    assert "0012.50" in page and "2024.17" in page and "2024.170" in page and "1\u00a0234\u00a0567,90" in page
    assert "12,50" not in page and "2\u00a0024,17" not in page
    differences = json.loads(report(ws, "reconcile", "json"))["tables"][0]["rows"]
    assert differences[0]["columns"]["ref"] == {"source": "0012.50", "target": "12.5"}

    ws.cdc("reconcile", str(ws.config), "--settle", "0", "--repair")
    trail = report(ws, "audit", "text", "--table", "invoices", "--key", "2")
    assert "ref: 2024.170 -> 2024.17" in trail and "amount: 1,234,567.90 -> 10.00" in trail, trail
    assert "2,024" not in trail
    nb = report(ws, "audit", "text", "--table", "invoices", "--key", "2", "--locale", "nb")
    assert "amount: 1\u00a0234\u00a0567,90 -> 10,00" in nb and "ref: 2024.170 -> 2024.17" in nb
    audit_rows = csv_rows(report(ws, "audit", "csv", "--table", "invoices", "--key", "1"))
    assert [r["changes"] for r in audit_rows if r["reason"] == "repair"] == ["ref: 12.5 -> 0012.50"]
    trail_csv = csv_rows(report(ws, "audit", "csv", "--table", "invoices", "--key", "2"))
    assert [r["changes"] for r in trail_csv if r["reason"] == "repair"] == [
        "ref: 2024.170 -> 2024.17; amount: 1234567.90 -> 10.00"]


def body_sha256(fmt: str, text: str) -> str:
    """The SHA-256 of a report's body as the README says to compute it."""
    if fmt in ("text", "csv"):
        marker = "provenance:\n" if fmt == "text" else "# provenance:\n"
        body = text[:text.index(marker)]
    elif fmt == "html":
        body = text[text.index("<!--body-->") + len("<!--body-->"):text.index("<!--/body-->")]
    else:
        data = json.loads(text)
        data.pop("provenance")
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


FIELDS = ("tool", "run id", "generated", "host / user", "source", "target", "as of", "filters", "config sha256",
          "body sha256")


def provenance_of(fmt: str, text: str) -> dict:
    """The provenance fields of a report, by name."""
    if fmt == "json":
        found = json.loads(text)["provenance"]
        return {"tool": found["tool"], "run id": found["run_id"], "host / user": f"{found['host']} / {found['user']}",
                "target": ", ".join(found["targets"]), "source": ", ".join(found["sources"]),
                "as of": json.dumps(found["as_of"], ensure_ascii=False),
                "filters": json.dumps(found["filters"], ensure_ascii=False),
                "config sha256": found["config_sha256"], "body sha256": found["body_sha256"]}
    if fmt == "html":
        cells = re.findall(r"<tr><th>([^<]+)</th><td><code>([^<]*)</code></td></tr>", text)
        return {name: html.unescape(value) for name, value in cells}
    block = text[text.index("provenance:\n") + len("provenance:\n"):]
    fields = {}
    for line in block.splitlines():
        line = line.removeprefix("# ")[2:]  # each field is indented by two spaces
        fields.update({name: line[15:] for name in FIELDS if line.startswith(name.ljust(14) + " ")})
    return fields


def config_sha256(*files: Path) -> str:
    """The README's recipe: SHA-256 over each file's name, NUL, length, NUL and bytes, in order."""
    digest = hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


@pytest.mark.parametrize("fmt", ["text", "csv", "json", "html"])
def test_every_report_carries_its_provenance(ws, database, fmt):
    password = "S3cr3t-pw"
    source, target = invoice_pair(ws, database, "postgresql", password=password)
    run_sql(target, "UPDATE invoices SET amount = 1.00 WHERE id = 3")
    status = json.loads(cdc_ok(ws, "status", "--json", str(ws.config)).stdout)[0]
    wanted_config = config_sha256(ws.config, ws.root / "invoices.yaml")
    for command, args in (("reconcile", ("--where", "id > 1", "--table", "invoices")),
                          ("audit", ("--table", "invoices"))):
        text = report(ws, command, fmt, *args)
        assert password not in text
        fields = provenance_of(fmt, text)
        assert fields["tool"] == f"cdc-sync {version('cdc-sync')}"
        assert uuid.UUID(fields["run id"]) and fields["host / user"] == f"{socket.gethostname()} / {getpass.getuser()}"
        assert fields["target"].startswith("postgresql+psycopg://postgres:***@") and fields["source"].startswith("sqlite")
        assert fields["config sha256"].split(" ")[0] == wanted_config
        assert fields["body sha256"].split(" ")[0] == body_sha256(fmt, text)
        as_of = json.loads(fields["as of"])["books"]
        if command == "reconcile":
            assert as_of["checkpoint"] == status["checkpoint_text"]
            stored = json.loads(run_sql(target, "SELECT report FROM cdc_reconcile_runs ORDER BY id DESC LIMIT 1")[0][0])
            assert stored["provenance"]["run_id"] == fields["run id"]  # cdc_reconcile_runs keeps it too
            assert json.loads(fields["filters"]) == {"table": "invoices", "where": "id > 1", "limit": 100, "settle": 0.0}
        else:
            assert as_of["position"] == status["checkpoint"] and as_of["changes_applied"] == status["changes_applied"]
            assert json.loads(fields["filters"])["table"] == "invoices"
    start = text.index("<!--body-->") if fmt == "html" else 0
    tampered = text[:start] + text[start:].replace("invoices", "invoicez", 1)
    assert body_sha256(fmt, tampered) != provenance_of(fmt, text)["body sha256"].split(" ")[0]


def test_the_trial_balance_has_differences_and_totals(ws, database):
    source, target = invoice_pair(ws, database)
    run_sql(target, "UPDATE invoices SET amount = '1234567.90' WHERE id = 1")
    run_sql(target, "DELETE FROM invoices WHERE id = 4")
    table = json.loads(report(ws, "reconcile", "json"))["tables"][0]
    by_group = {(t["account"], t["period"]): t for t in table["totals"]}
    assert {g: (t["count_difference"], Decimal(t["difference"])) for g, t in by_group.items()} == {
        ("1500", "2026-01"): (0, Decimal("0.01")), ("3000", "2026-02"): (-1, Decimal("-99.99"))}
    assert table["totals_sum"] == {"source_count": 4, "target_count": 3, "count_difference": -1,
                                   "source_sum": "1234427.38", "target_sum": "1234327.40", "difference": "-99.98",
                                   "equal": False}
    text = report(ws, "reconcile", "text")
    assert ("    trial balance (2 account-months): source 4 rows / 1,234,427.38, target 3 rows / 1,234,327.40, "
            "difference -99.98") in text
    assert ("    control total differs: account 1500 period 2026-01: source 2 rows / 1,234,577.89, target 2 rows / "
            "1,234,577.90, difference 0.01") in text
    page = page_text(report(ws, "reconcile", "html", "--locale", "nb"))
    assert "Differanse" in page and "Sum 4 1\u00a0234\u00a0427,38 3 1\u00a0234\u00a0327,40 -99,98" in page
    assert "Difference" in page_text(report(ws, "reconcile", "html"))


def test_norwegian_reports_show_oslo_time(ws, database):
    source, target = invoice_pair(ws, database)
    oslo = ZoneInfo("Europe/Oslo")
    text = report(ws, "reconcile", "text", "--locale", "nb")
    started = run_sql(target, "SELECT started_at FROM cdc_reconcile_runs ORDER BY id DESC LIMIT 1")[0][0]
    started = dt.datetime.fromisoformat(str(started)).replace(tzinfo=dt.timezone.utc).astimezone(oslo)
    assert text.splitlines()[0] == f"pair books: EQUAL ({started:%Y-%m-%d %H:%M:%S %Z})"
    assert started.strftime("%Z") in ("CET", "CEST")
    run_sql(source, "UPDATE invoices SET ref = 'endret' WHERE id = 3")
    cdc_ok(ws, "run", "--once", str(ws.config))
    entry = json.loads(report(ws, "audit", "json", "--op", "update"))["entries"][0]
    at = dt.datetime.fromisoformat(entry["at"]).astimezone(oslo)
    nb = report(ws, "audit", "text", "--op", "update", "--locale", "nb")
    assert f"  {at:%Y-%m-%d %H:%M:%S %Z}  books  invoices (3)  update" in nb
    en = report(ws, "audit", "text", "--op", "update")
    assert f"  {at.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC  books  invoices (3)  update" in en
    page = report(ws, "audit", "html", "--op", "update", "--locale", "nb")
    assert "Tid (norsk tid)" in page and f"{at:%Y-%m-%d %H:%M:%S %Z}" in page
