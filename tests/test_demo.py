"""The README's first command: `cdc demo` builds, syncs, changes and re-syncs, ending equal."""

from __future__ import annotations

import sqlite3
from decimal import Decimal


def test_demo_ends_with_source_and_ledger_equal(ws):
    result = ws.cdc("demo", "--dir", str(ws.root / "demo"))
    assert result.returncode == 0, result.stderr
    assert "Source and ledger are equal." in result.stdout
    for table in ("kunder", "fakturaer", "fakturalinjer", "bilag", "posteringer"):
        assert f"-> {table}" in result.stdout
    ledger = sqlite3.connect(ws.root / "demo" / "ledger.db")
    # Every voucher balances to the øre, and the names survived with æøå.
    sums = ledger.execute("SELECT bilag_id, sum(CAST(belop AS TEXT)) FROM posteringer GROUP BY bilag_id").fetchall()
    assert sums and all(Decimal(str(s)).quantize(Decimal("0.01")) == 0 for _, s in sums)
    names = [n for (n,) in ledger.execute("SELECT navn FROM kunder ORDER BY kundenr")]
    assert names[0] == "Blåbærsyltetøy AS" and names[-1] == "Vågå Økogård AS"  # trimmed by the mapping
    assert ledger.execute("SELECT count(*) FROM fakturaer WHERE status = 'draft'").fetchone() == (0,)
    status = ws.cdc("status", "--json", str(ws.root / "demo" / "config.yaml"))
    assert status.returncode == 0 and '"pending": 0' in status.stdout


def test_demo_into_postgresql(ws, pg_url):
    result = ws.cdc("demo", "--dir", str(ws.root / "demo"), "--target", pg_url)
    assert result.returncode == 0, result.stderr
    assert "Source and ledger are equal." in result.stdout
    again = ws.cdc("demo", "--dir", str(ws.root / "demo2"), "--target", pg_url)
    assert again.returncode == 2 and "give the demo an empty database" in again.stderr


def test_demo_into_postgresql_never_falls_back_to_a_sqlite_ledger(ws, pg_url, monkeypatch):
    """The demo's config for a ledger of the user's own reads $LEDGER_URL without a SQLite default: run
    without it, `cdc status`/`run` stop and say so, instead of syncing into a new ledger.db whose
    acknowledgements would release changes the PostgreSQL ledger still needs. The way on by hand
    reads the audit log with psql, not sqlite3."""
    monkeypatch.delenv("LEDGER_URL", raising=False)
    result = ws.cdc("demo", "--dir", str(ws.root / "demo"), "--target", pg_url)
    assert result.returncode == 0, result.stderr
    by_hand = result.stdout.split("Go on by hand:")[1]
    assert "export LEDGER_URL=" in by_hand and 'psql "$LEDGER_URL"' in by_hand, by_hand
    assert "ledger.db" not in result.stdout, result.stdout
    assert [line for line in by_hand.splitlines() if "sqlite3" in line and "erp.db" not in line] == [], by_hand
    config = str(ws.root / "demo" / "config.yaml")
    for command in (("status",), ("run", "--once"), ("init",)):
        stopped = ws.cdc(*command, config)
        assert stopped.returncode == 2 and "LEDGER_URL is not set" in stopped.stderr, stopped.stdout + stopped.stderr
        assert "Traceback" not in stopped.stderr
    assert not (ws.root / "demo" / "ledger.db").exists()
    monkeypatch.setenv("LEDGER_URL", pg_url)
    status = ws.cdc("status", config)
    assert status.returncode == 0 and "pending     0" in status.stdout, status.stdout + status.stderr


def test_demo_shows_sqlite3_for_its_own_sqlite_ledger(ws):
    result = ws.cdc("demo", "--dir", str(ws.root / "demo"))
    assert result.returncode == 0, result.stderr
    assert f"sqlite3 {ws.root / 'demo' / 'ledger.db'}" in result.stdout and "psql" not in result.stdout
