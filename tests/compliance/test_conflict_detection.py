"""Conflict detection on every source case x every target: a row a person changed in the target since
the pair last wrote it is found, whatever gives the comparison (a before image from trigger, binlog, or
logical capture with REPLICA IDENTITY FULL; the row hash cdc_row_hashes keeps for timestamp capture),
and audited with the target row as the person left it as its before image. The policy itself is the
core's (tests/test_conflicts.py).

Logical capture without REPLICA IDENTITY FULL has no before images either: it keeps row hashes too.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from compliance.cases import PAIRING_IDS, PAIRINGS, SOURCES
from compliance.databases import UTC

every_pairing = pytest.mark.parametrize("case, target_kind", PAIRINGS, ids=PAIRING_IDS)


def conflicts(pair) -> list[tuple[int, str, dict]]:
    """(key, policy, before image) of every audit row that records a conflict, in order."""
    q = pair.target.quote
    found = pair.target.execute(f"SELECT {q('key')}, policy, {q('before')} FROM cdc_audit_log "
                                "WHERE decision = 'conflict' ORDER BY id")
    return [(json.loads(key)[0], policy, json.loads(before) if before else None) for key, policy, before in found]


def decisions(pair) -> list[tuple]:
    """Every streamed audit row as (op, key, decision, the start of its detail): the failure message."""
    q = pair.target.quote
    found = pair.target.execute(f"SELECT op, {q('key')}, decision, detail FROM cdc_audit_log "
                                "WHERE op <> 'snapshot' ORDER BY id")
    return [(op, key, decision, (detail or "")[:60]) for op, key, decision, detail in found]


@every_pairing
def test_a_row_the_person_changed_is_a_conflict_and_audited_as_they_left_it(make_pair, case, target_kind):
    pair = make_pair(case, target_kind)
    pair.source.transaction([pair.insert(pair.plain_row(f"rad {i}")) for i in range(3)])
    if case.capture == "logical":  # the whole before image (`cdc doctor` says so without it)
        pair.source.execute("ALTER TABLE items REPLICA IDENTITY FULL")
    pair.setup()
    pair.ok("run", "--once")  # the snapshot: rows 1, 2, 3
    hashed = case.capture == "timestamp"
    if hashed:  # the pair writes each row once more: the hashes are then those of changes, not of the copy
        pair.source.transaction([pair.update(key, f"{key}.25", f"rad {key - 1}") for key in (1, 2, 3)])
        pair.ok("run", "--once")
    # The person at the target: corrects row 1, and enters row 10 before the source has it.
    pair.target.transaction([("UPDATE items SET note = %s, amount = %s WHERE id = %s", ("retta av regnskap", "9999", 1)),
                             ("INSERT INTO items (id, amount, note, updated_at, deleted) VALUES (%s, %s, %s, %s, %s)",
                              (10, "10.10", "ført for hånd", dt.datetime(2026, 1, 1, tzinfo=UTC), False))])
    pair.source.transaction([pair.update(1, "1.50", "kilde 1"), pair.update(2, "2.50", "kilde 2")])
    pair.next_id = 10
    pair.source.transaction([pair.insert(pair.plain_row("kilde 10"))])
    pair.ok("run", "--once")
    found = conflicts(pair)
    wanted = [(1, "source_wins"), (10, "source_wins")]
    assert [(key, policy) for key, policy, _ in found] == wanted, decisions(pair)
    assert [before["note"] for _, _, before in found] == ["retta av regnskap", "ført for hånd"][:len(wanted)], found
    pair.assert_target_equals_source()  # source_wins, the pair's default
    if case.capture == "timestamp":  # no before images: the stored hash of what the pair last wrote
        assert pair.target.execute("SELECT count(*) FROM cdc_row_hashes WHERE pair = 'p'")[0][0] >= 4
    # Row 2 and row 3 were the pair's own: a further change to them is no conflict; row 1 now is.
    pair.source.transaction([pair.update(1, "1.75", "kilde 1 igjen"), pair.update(3, "3.50", "kilde 3")])
    pair.ok("run", "--once")
    assert len(conflicts(pair)) == len(wanted), decisions(pair)
    pair.assert_target_equals_source()


HASHED = [(case, target) for case, target in PAIRINGS if case.capture == "timestamp"]


@pytest.mark.parametrize("case, target_kind", HASHED, ids=[f"{c.id}-to-{t}" for c, t in HASHED])
def test_under_timestamp_capture_a_row_the_person_edits_straight_after_the_snapshot_is_a_conflict(
        make_pair, case, target_kind):
    """The common case in a ledger: the initial copy, then an accountant corrects row 1 and enters row 10
    by hand before the source inserts it. The copy stored the hash of every row it wrote (and a mark
    that it did), so the correction is a conflict though the pair never streamed a change of row 1, and
    row 10, which has no hash, is not the pair's: both audited with the rows as the accountant left them."""
    pair = make_pair(case, target_kind)
    pair.source.transaction([pair.insert(pair.plain_row(f"rad {i}")) for i in range(3)])
    pair.setup()
    pair.ok("run", "--once")
    assert pair.target.execute("SELECT count(*) FROM cdc_row_hashes WHERE pair = 'p' AND key_digest NOT IN ('whole', 'hashing')")[0][0] == 3
    pair.target.transaction([("UPDATE items SET note = %s WHERE id = %s", ("retta av regnskap", 1)),
                             ("INSERT INTO items (id, amount, note, updated_at, deleted) VALUES (%s, %s, %s, %s, %s)",
                              (10, "10.10", "ført for hånd", dt.datetime(2026, 1, 1, tzinfo=UTC), False))])
    pair.source.transaction([pair.update(1, "1.50", "kilde 1"), pair.update(2, "2.50", "kilde 2")])
    pair.next_id = 10
    pair.source.transaction([pair.insert(pair.plain_row("kilde 10")), pair.insert(pair.plain_row("kilde 11"))])
    pair.ok("run", "--once")
    found = conflicts(pair)
    assert [(key, policy, before["note"]) for key, policy, before in found] == \
        [(1, "source_wins", "retta av regnskap"), (10, "source_wins", "ført for hånd")], decisions(pair)
    pair.assert_target_equals_source()


LOGICAL = [case for case in SOURCES if case.capture == "logical"]


@pytest.mark.parametrize("case", LOGICAL, ids=[case.id for case in LOGICAL])
def test_without_replica_identity_full_conflicts_are_found_by_row_hash(make_pair, case):
    """Logical capture without REPLICA IDENTITY FULL: updates carry no before image, so the pair keeps the
    hash of every row it writes, its copy included, as under capture timestamp. An accountant corrects
    row 1 after the copy and enters row 10 by hand before the source inserts it: both are conflicts."""
    pair = make_pair(case, "postgresql")
    pair.source.transaction([pair.insert(pair.plain_row(f"rad {i}")) for i in range(3)])
    pair.setup()
    pair.ok("run", "--once")
    pair.target.transaction([("UPDATE items SET note = %s WHERE id = %s", ("retta av regnskap", 1)),
                             ("INSERT INTO items (id, amount, note, updated_at, deleted) VALUES (%s, %s, %s, %s, %s)",
                              (10, "10.10", "ført for hånd", dt.datetime(2026, 1, 1, tzinfo=UTC), False))])
    pair.source.transaction([pair.update(1, "1.50", "kilde 1"), pair.update(2, "2.50", "kilde 2")])
    pair.next_id = 10
    pair.source.transaction([pair.insert(pair.plain_row("kilde 10"))])
    pair.ok("run", "--once")
    found = conflicts(pair)
    assert [(key, before["note"]) for key, _, before in found] == \
        [(1, "retta av regnskap"), (10, "ført for hånd")], decisions(pair)
    pair.assert_target_equals_source()
    # Row 2 was the pair's own: a further change is no conflict; row 1 is the pair's again.
    pair.source.transaction([pair.update(1, "1.75", "kilde 1 igjen"), pair.update(2, "2.75", "kilde 2 igjen")])
    pair.ok("run", "--once")
    assert len(conflicts(pair)) == 2, decisions(pair)
    pair.assert_target_equals_source()


@pytest.mark.parametrize("case", LOGICAL, ids=[case.id for case in LOGICAL])
def test_without_replica_identity_full_an_update_of_unmapped_columns_leaves_the_accountants_correction(
        make_pair, case):
    """No before image tells that only unmapped columns changed; the stored hash does: the row the
    change would write is the one the pair last wrote, so nothing is written over the correction."""
    pair = make_pair(case, "postgresql")
    pair.source.transaction([pair.insert(pair.plain_row(f"rad {i}")) for i in range(2)])
    pair.setup()
    pair.target.execute("ALTER TABLE items DROP COLUMN raw")  # the target keeps no copy of it
    pair.ok("run", "--once")
    pair.target.execute("UPDATE items SET amount = %s WHERE id = %s", ("3.33", 1))
    pair.source.execute("UPDATE items SET raw = %s WHERE id = %s", (b"only this", 1))
    assert "1 skipped" in pair.ok("run", "--once")
    assert [a for (a,) in pair.target.execute("SELECT amount FROM items WHERE id = 1")] == [Decimal("3.33")]
    assert conflicts(pair) == [], decisions(pair)


@every_pairing
def test_with_detection_off_no_target_row_is_read_and_the_source_is_written(make_pair, case, target_kind):
    """`detect_conflicts: false`: the pair writes as before issue 13 (the source wins) and audits no
    conflict: what the benchmarks' --detect off measures."""
    pair = make_pair(case, target_kind)
    pair.source.transaction([pair.insert(pair.plain_row()) for _ in range(2)])
    pair.setup(detect_conflicts="false")
    pair.ok("run", "--once")
    pair.target.execute("UPDATE items SET note = %s WHERE id = %s", ("retta", 1))
    pair.source.transaction([pair.update(1, "1.50", "kilde")])
    pair.ok("run", "--once")
    assert conflicts(pair) == []
    pair.assert_target_equals_source()
