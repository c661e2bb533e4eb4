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
