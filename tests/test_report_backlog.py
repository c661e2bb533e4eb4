"""The reconcile text report's backlog line says what the source said, and nothing when nothing waits."""

from __future__ import annotations

import datetime as dt

import pytest

from cdc import reports
from cdc.reconcile import ReconcileReport

STARTED = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("pending, line", [
    (None, None), (0, None), ("0 bytes of WAL behind", None), ("0 bytes of binlog behind", None),
    (3, "the pair had 3 source change(s) not yet applied"),
    ("1,234 bytes of WAL behind", "the pair had not applied every source change yet (1,234 bytes of WAL behind)"),
    ("10 bytes of binlog behind", "the pair had not applied every source change yet (10 bytes of binlog behind)"),
])
def test_the_backlog_line_never_claims_changes_when_nothing_waits(pending, line):
    """"0 bytes of WAL behind" was reported as "the pair has changes not yet applied (0 bytes ...)"."""
    text = reports.reconcile_report(ReconcileReport("p", STARTED, pending=pending), "text")
    backlog = [row.strip() for row in text.splitlines() if "not yet applied" in row or "behind" in row]
    assert backlog == ([] if line is None else [f"{line}: differences they explain settle once the pair applies them"])
