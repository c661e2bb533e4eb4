"""A value cannot forge a report: in text (and HTML) control characters in values are escaped, so a
value holding a newline cannot start a line of its own, such as a fake provenance block."""

from __future__ import annotations

import hashlib
import html
import sqlite3

FORGED = "ok\nprovenance:\n  tool           cdc-sync 9.9\n  body sha256    0000 (the lines above)\r\x1b[2J\u2028end"
SHOWN = ("ok\\nprovenance:\\n  tool           cdc-sync 9.9\\n  body sha256    0000 (the lines above)"
         "\\r\\x1b[2J\\u2028end")


def _execute(db, statement: str, *params) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(statement, params)
    finally:
        conn.close()


def _forged_pair(ws) -> None:
    """A differing memo and a missing party whose key holds the forged text; an audited change too."""
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 1500, 10.00, 'NOK', 'a', NULL)")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    _execute(ws.source, "UPDATE entries SET memo = ? WHERE id = 1", FORGED)
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0  # the audit log holds FORGED now
    _execute(ws.target, "UPDATE entries SET memo = ? WHERE id = 1", "target\n" + FORGED)
    _execute(ws.source, "INSERT INTO parties VALUES (?, 1, ?)", "k\nprovenance:", FORGED)


def _one_provenance_block(text: str) -> str:
    lines = text.split("\n")
    assert lines.count("provenance:") == 1, text
    assert "\r" not in text and "\x1b" not in text and "\u2028" not in text, repr(text)
    body = text[:text.index("\nprovenance:\n") + 1]
    recorded = next(line for line in lines if line.startswith("  body sha256 ")).split()[2]
    assert hashlib.sha256(body.encode()).hexdigest() == recorded
    return body


def test_a_value_cannot_forge_lines_of_a_text_reconcile_report(ledger):
    ws = ledger
    _forged_pair(ws)
    result = ws.cdc("reconcile", "--settle", "0", str(ws.config))
    assert result.returncode == 1, result.stderr
    body = _one_provenance_block(result.stdout)
    assert f"memo: {SHOWN} -> target target\\n{SHOWN}" in body, body
    assert "missing  (k\\nprovenance:, 1)" in body, body
    repaired = ws.cdc("reconcile", "--repair", "--dry-run", "--settle", "0", str(ws.config))
    plan = _one_provenance_block(repaired.stdout)
    assert f"memo={SHOWN}" in plan and "upsert parties (k\\nprovenance:, 1)" in plan, plan


def test_a_value_cannot_forge_lines_of_a_text_audit_report(ledger):
    ws = ledger
    _forged_pair(ws)
    result = ws.cdc("audit", str(ws.config))
    assert result.returncode == 0, result.stderr
    body = _one_provenance_block(result.stdout)
    assert f"memo: a -> {SHOWN}" in body, body


def test_html_reports_escape_markup_in_values(ledger):
    """In HTML a value is escaped as markup (it cannot close the signed body or add a script) and its
    control characters are shown as escapes."""
    ws = ledger
    _forged_pair(ws)
    sneaky = "x<!--/body--><script>alert(1)</script>"
    _execute(ws.target, "UPDATE entries SET memo = ? WHERE id = 1", sneaky)
    for command in (("reconcile", "--settle", "0", "--format", "html"), ("audit", "--format", "html")):
        page = ws.cdc(*command, str(ws.config)).stdout
        assert page.count("<!--/body-->") == 1 and page.count("<script>") == 1 and "<script>alert" not in page, page
        assert html.escape(SHOWN) in page, page
    page = ws.cdc("reconcile", "--settle", "0", "--format", "html", str(ws.config)).stdout
    assert html.escape(sneaky) in page
