"""`cdc demo`: a Norwegian ERP and a ledger in SQLite, synced, changed, and synced again."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from decimal import ROUND_HALF_UP, Decimal
from importlib.resources import files
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from . import commands, reconcile
from .config import load_config, load_url, mask_url
from .errors import ConfigError

CENT = Decimal("0.01")
ERP_SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(100) NOT NULL, org_no CHAR(9),
    city VARCHAR(60), email VARCHAR(120), created_at DATETIME NOT NULL);
CREATE TABLE invoices (id INTEGER PRIMARY KEY, invoice_no VARCHAR(20) NOT NULL,
    customer_id INTEGER NOT NULL REFERENCES customers(id), issued_at DATETIME NOT NULL, due_date DATE NOT NULL,
    currency CHAR(3) NOT NULL, total NUMERIC(18,2) NOT NULL, status VARCHAR(10) NOT NULL);
CREATE TABLE invoice_lines (invoice_id INTEGER NOT NULL REFERENCES invoices(id), line_no INTEGER NOT NULL,
    description VARCHAR(200) NOT NULL, quantity NUMERIC(12,3) NOT NULL, unit_price NUMERIC(18,2) NOT NULL,
    vat_rate NUMERIC(5,2) NOT NULL, amount NUMERIC(18,2) NOT NULL, PRIMARY KEY (invoice_id, line_no));
CREATE TABLE vouchers (id INTEGER PRIMARY KEY, voucher_no INTEGER NOT NULL, voucher_date DATE NOT NULL,
    description VARCHAR(200) NOT NULL, posted_at DATETIME NOT NULL);
CREATE TABLE postings (voucher_id INTEGER NOT NULL REFERENCES vouchers(id), line_no INTEGER NOT NULL,
    account INTEGER NOT NULL, amount NUMERIC(18,2) NOT NULL, currency CHAR(3) NOT NULL, memo VARCHAR(200),
    PRIMARY KEY (voucher_id, line_no));
"""
CUSTOMERS = [
    "Blåbærsyltetøy AS", "Ærlig Østlandsk Rørlegger AS", "Fjordkraft Ålesund AS", "Bølgen & Moi Trøndelag AS",
    "Søtsaker fra Sørlandet AS", "Gårdsmat Hægeland", "Økologisk Frukt og Grønt SA", "Tromsø Isbjørn Turisme AS",
    "Håndverkerhuset Bærum AS", "Lønnsomt Regnskap Øst AS", "Skjærgårdens Båtservice AS", "Kjøkkenfabrikken Ørsta AS",
]
CITIES = ["Oslo", "Bergen", "Trondheim", "Tromsø", "Ålesund", "Bærum", "Kristiansand", "Bodø"]
PRODUCTS = [("Konsulenttime", Decimal("1250.00"), Decimal("25")), ("Matvarer, kasse", Decimal("349.90"), Decimal("15")),
            ("Persontransport", Decimal("899.00"), Decimal("12")), ("Lisens, årlig", Decimal("12000.00"), Decimal("25")),
            ("Bøker", Decimal("499.00"), Decimal("0"))]
# NS 4102: 1500 kundefordringer, 1920 bankinnskudd, 2700 utgående mva, 3000 salgsinntekt avgiftspliktig.
RECEIVABLES, BANK, OUTPUT_VAT, SALES = 1500, 1920, 2700, 3000


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def create_erp(path: Path, seed: int = 4102, invoices: int = 40) -> None:
    """A small ERP with customers, invoices, lines and balanced vouchers, amounts exact in NOK."""
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    with db:
        db.executescript(ERP_SCHEMA)
        for i, name in enumerate(CUSTOMERS, 1):
            db.execute("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)",
                       (i, name, f"{910000000 + i * 7919}", rng.choice(CITIES), f"post@kunde{i}.no",
                        f"2024-01-{i:02d} 09:00:00"))
        for n in range(1, invoices + 1):
            _invoice(db, rng, n, rng.randint(1, len(CUSTOMERS)), "draft" if n % 10 == 0 else rng.choice(["open", "paid"]))
    db.close()


def _invoice(db: sqlite3.Connection, rng: random.Random, n: int, customer: int, status: str) -> Decimal:
    net = vat = Decimal(0)
    for line in range(1, rng.randint(1, 4) + 1):
        product, price, rate = rng.choice(PRODUCTS)
        quantity = Decimal(rng.randint(1, 40)) / (4 if product == "Konsulenttime" else 1)
        amount = _money(quantity * price)
        net, vat = net + amount, vat + _money(amount * rate / 100)
        db.execute("INSERT INTO invoice_lines VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (n, line, product, str(quantity), str(price), str(rate), str(amount)))
    total = net + vat
    day = f"2024-{(n % 12) + 1:02d}-{(n % 27) + 1:02d}"
    # 23:30 local time: the accounting date must come from Oslo time, not UTC.
    db.execute("INSERT INTO invoices VALUES (?, ?, ?, ?, ?, 'NOK', ?, ?)",
               (n, f"F-2024-{n:04d}", customer, f"{day} 23:30:00", day, str(total), status))
    if status != "draft":
        db.execute("INSERT INTO vouchers VALUES (?, ?, ?, ?, ?)", (n, 1000 + n, day, f"Faktura F-2024-{n:04d}",
                                                                    f"{day} 23:31:00"))
        for line, (account, amount, memo) in enumerate([(RECEIVABLES, total, "Kundefordring"),
                                                        (SALES, -net, "Salgsinntekt"),
                                                        (OUTPUT_VAT, -vat, "Utgående merverdiavgift")], 1):
            db.execute("INSERT INTO postings VALUES (?, ?, ?, ?, 'NOK', ?)", (n, line, account, str(amount), memo))
    return total


def _changes(path: Path) -> list[str]:
    """A few realistic source transactions; returns what they did, for the demo's story."""
    db = sqlite3.connect(path)
    done = []
    with db:
        db.execute("INSERT INTO customers VALUES (13, '  Vågå Økogård AS ', '998877665', 'vågå', "
                   "'post@vagaokogard.no', '2024-12-01 08:00:00')")
        total = _invoice(db, random.Random(13), 41, 13, "open")
        done.append(f"new customer Vågå Økogård AS with invoice F-2024-0041 of NOK {total} (one transaction)")
    with db:
        invoice, total = db.execute("SELECT id, total FROM invoices WHERE status = 'open' ORDER BY id LIMIT 1").fetchone()
        db.execute("UPDATE invoices SET status = 'paid' WHERE id = ?", (invoice,))
        db.execute("INSERT INTO vouchers VALUES (900, 1900, '2024-12-02', 'Innbetaling', '2024-12-02 10:00:00')")
        db.execute("INSERT INTO postings VALUES (900, 1, ?, ?, 'NOK', 'Innbetaling bank')", (BANK, str(total)))
        db.execute("INSERT INTO postings VALUES (900, 2, ?, ?, 'NOK', 'Innbetaling kunde')", (RECEIVABLES, str(-Decimal(total))))
        done.append(f"invoice {invoice} paid: status update and a bank voucher of NOK {total} (one transaction)")
    with db:
        db.execute("UPDATE customers SET city = 'Lillehammer' WHERE id = 2")
        db.execute("DELETE FROM invoice_lines WHERE invoice_id = 10")
        db.execute("DELETE FROM invoices WHERE id = 10")
        done.append("customer 2 moved to Lillehammer; draft invoice 10 deleted (never in the ledger)")
    db.close()
    return done


def _require_empty(url: str) -> None:
    engine = sa.create_engine(load_url(url))
    try:
        existing = set(sa.inspect(engine).get_table_names()) & {"kunder", "fakturaer", "cdc_checkpoints"}
    finally:
        engine.dispose()
    if existing:
        raise ConfigError(f"{mask_url(url)} already holds {', '.join(sorted(existing))}: give the demo an empty database")


def run_demo(directory: Path, echo: Callable[[str], None] = print, target: str | None = None) -> bool:
    """Build, sync, change and re-sync the demo; True when source and target end equal.

    ``target``: a database URL for the ledger instead of ledger.db; it must hold no demo tables yet.
    It reaches the config through ${LEDGER_URL}, so no password is written to a file.
    """
    directory = Path(directory).resolve()
    if target is not None:
        os.environ["LEDGER_URL"] = target
        _require_empty(target)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("erp.db", "ledger.db"):
        (directory / name).unlink(missing_ok=True)
    config = directory / "config.yaml"
    _write_config(config, target is not None)
    shutil.copy(files("cdc.mappings") / "erp_to_ledger.yaml", directory / "erp_to_ledger.yaml")
    create_erp(directory / "erp.db")
    echo(f"1. Created a Norwegian ERP in {directory / 'erp.db'} and the config {config}")
    if target is not None:
        echo(f"   ledger: {mask_url(target)} (the config reads it from $LEDGER_URL; export it to go on by hand)")
    for step, function in (("2. cdc init", commands.init), ("3. cdc install", commands.install)):
        echo(f"{step} {config}")
        for line in function(str(config)).lines:
            echo(f"   {line}")
    ledger = mask_url(target) if target is not None else directory / "ledger.db"
    first = commands.run(str(config), once=True)[0]
    echo(f"4. cdc run --once: initial snapshot of {first.snapshot_rows} rows into {ledger}")
    echo("5. Changes in the ERP:")
    for line in _changes(directory / "erp.db"):
        echo(f"   - {line}")
    second = commands.run(str(config), once=True)[0]
    echo(f"6. cdc run --once: {second.applied} changes applied in {second.batches} target "
         f"transaction(s), "
         f"{second.parked} parked")
    pair = load_config(config).pairs["erp_to_ledger"]
    report = reconcile.reconcile(pair, settle=0)
    equal = report.equal
    echo(f"7. cdc reconcile {config}: source (as mapped) vs ledger:")
    for d in report.tables:
        verdict = "equal" if d.equal else f"{d.missing} missing, {d.extra} extra, {d.different} differ"
        echo(f"   {d.source_table:>14} -> {d.target_table:<14} {d.target_rows:>4} rows  {verdict}")
    echo("")
    echo("Source and ledger are equal." if equal else "Source and ledger DIFFER (see above).")
    echo("Go on by hand:")
    if target is not None:
        echo(f"   export LEDGER_URL=...    # the URL you gave --target ({mask_url(target)})")
    echo(f"   cdc status {config}")
    echo(f"   sqlite3 {directory / 'erp.db'} \"UPDATE customers SET city = 'Bodø' WHERE id = 1\"")
    echo(f"   cdc run --once {config}        # or without --once to keep streaming (Ctrl-C stops)")
    audit = "SELECT op, key, applied_at FROM cdc_audit_log ORDER BY id DESC LIMIT 5"
    echo(f"   psql \"$LEDGER_URL\" -c \"{audit}\"" if target is not None
         else f"   sqlite3 {directory / 'ledger.db'} \"{audit}\"")
    return equal


def _write_config(config: Path, own_ledger: bool) -> None:
    """The demo's config; with a ledger of the user's own (``--target``) it reads the ledger's URL from
    $LEDGER_URL with no fallback: a later command run without it stops (exit 2) instead of quietly
    syncing into a new SQLite ledger, whose acknowledgements would release changes the real ledger
    still needs."""
    text = (files("cdc.mappings") / "demo.yaml").read_text(encoding="utf-8")
    if own_ledger:
        text = text.replace(DEMO_LEDGER, "ledger: ${LEDGER_URL}      # the URL given to `cdc demo --target`; "
                                         "export it to go on by hand")
    config.write_text(text, encoding="utf-8")


#: The ledger connection in the shipped demo config (a SQLite file unless $LEDGER_URL is set).
DEMO_LEDGER = "ledger: ${LEDGER_URL:-sqlite:///ledger.db}"
