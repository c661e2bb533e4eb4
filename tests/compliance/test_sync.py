"""The cheap scenarios, over every source case x every target: snapshot, stream, exact types."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from compliance.cases import PAIRING_IDS, PAIRINGS
from compliance.databases import UTC, canonical

every_pairing = pytest.mark.parametrize("case, target_kind", PAIRINGS, ids=PAIRING_IDS)


@every_pairing
def test_snapshot_copies_existing_rows_once(make_pair, case, target_kind):
    pair = make_pair(case, target_kind)
    pair.source.transaction([pair.insert(pair.plain_row(f"rad {i} æøå")) for i in range(5)])
    pair.setup()
    out = pair.ok("run", "--once")
    assert "snapshot 5 rows" in out, out
    pair.assert_target_equals_source()
    chunks = [json.loads(after) for _, _, _, after, _, _ in pair.target.audit("op = 'snapshot'")]
    assert sum(chunk["rows"] for chunk in chunks) == 5, chunks
    assert "0 changes applied" in pair.ok("run", "--once")  # nothing read twice
    assert pair.streamed() == []


@every_pairing
def test_stream_applies_inserts_updates_deletes_once(make_pair, case, target_kind):
    pair = make_pair(case, target_kind)
    pair.source.transaction([pair.insert(pair.plain_row()) for _ in range(4)])
    pair.setup()
    pair.ok("run", "--once")
    first = pair.plain_row("ny"), pair.plain_row("ny igjen")
    pair.source.transaction([pair.insert(first[0]), pair.insert(first[1]), pair.update(1, "10.01", "endret ø"),
                             pair.delete(2)])
    pair.ok("run", "--once")
    changes = [("insert", [5]), ("insert", [6]), ("update", [1]), ("delete", [2])]
    assert pair.streamed() == pair.expected(changes)
    pair.assert_target_equals_source()
    pair.source.transaction([pair.update(5, "-3.50", "Åse")])
    pair.source.transaction([pair.update(3, "0.01", "")])
    pair.source.transaction([pair.delete(6)])
    pair.ok("run", "--once")
    changes += [("update", [5]), ("update", [3]), ("delete", [6])]
    assert pair.streamed() == pair.expected(changes)
    pair.assert_target_equals_source()
    assert [row[0] for row in pair.target.rows()] == [1, 3, 4, 5]


TYPED = [
    (1, Decimal("12345678901234567890.0123456789"), dt.datetime(2024, 3, 31, 22, 30, 15, 123456, tzinfo=UTC),
     dt.date(2024, 2, 29), "Blåbærsyltetøy æøå ÆØÅ ☕", b"\x00\xff\x10", True),
    (2, None, None, None, None, None, None),
    (3, Decimal("-0.0000000001"), dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
     dt.date(1999, 12, 31), "", b"", False),
]


@every_pairing
def test_exact_types_survive_snapshot_and_stream(make_pair, case, target_kind):
    pair = make_pair(case, target_kind)
    pair.source.transaction([pair.insert(TYPED[0]), pair.insert(TYPED[1])])
    pair.setup()
    pair.ok("run", "--once")  # the snapshot
    pair.source.transaction([pair.insert(TYPED[2])])
    pair.source.transaction([pair.update(1, Decimal("12345678901234567891.0123456789"), "Ærlig ☕ endret")])
    pair.ok("run", "--once")  # the stream
    wanted = [canonical((1, Decimal("12345678901234567891.0123456789"), *TYPED[0][2:4], "Ærlig ☕ endret",
                         *TYPED[0][5:])), canonical(TYPED[1]), canonical(TYPED[2])]
    assert [row[:7] for row in pair.source.rows()] == wanted  # the source holds them exactly
    assert [row[:7] for row in pair.target.rows()] == wanted, "a value was altered on the way"
    # The audit log keeps the streamed images exactly too: the amount as exact text, never a float.
    after = [json.loads(after) for _, key, _, after, _, _ in pair.target.audit() if json.loads(key) == [1]][-1]
    assert Decimal(str(after["amount"])) == wanted[0][1] and after["note"] == wanted[0][4], after
    pair.assert_target_equals_source()
