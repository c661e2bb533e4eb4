"""The guarantees, each source case into PostgreSQL: a transaction applied whole, a snapshot resumed
after SIGKILL, exactly-once across SIGKILL while streaming, park vs stop, drift found and repaired,
capture installed again.

Each runs against one target because what it checks belongs to the source side (its positions,
its installation) or to the core's apply path, which every target shares; the targets' own
differences are the cheap scenarios' cross product (test_sync.py), and park vs stop, where how a
target refuses a row is its own, runs into every target from one cheap source too.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from decimal import Decimal

import pytest

from compliance.cases import SOURCE_IDS, SOURCES, TARGETS

every_source = pytest.mark.parametrize("case", SOURCES, ids=SOURCE_IDS)
TARGET = "postgresql"

CHEAP = next(case for case in SOURCES if case.id == "sqlite-trigger")
#: Every source case into PostgreSQL, and the cheapest source into every other target: what a target
#: does (refuse a row, survive a kill in its transaction, be compared and repaired) is the target's.
EVERY = [(case, TARGET) for case in SOURCES] + [(CHEAP, kind) for kind in TARGETS if kind != TARGET]
REFUSING = EVERY
every_pairing = pytest.mark.parametrize("case, target_kind", EVERY, ids=[f"{c.id}-to-{t}" for c, t in EVERY])




@every_source
def test_a_source_transaction_is_applied_whole_in_one_target_transaction(make_pair, case):
    if not case.transactions:
        pytest.skip(f"{case.capture} capture polls row versions by change time and has no source "
                    "transactions to keep whole (README, capture mode timestamp)")
    pair = make_pair(case, TARGET)
    pair.source.transaction([pair.insert(pair.plain_row()) for _ in range(4)])
    pair.setup(batch_size=5)
    pair.ok("run", "--once")
    # One source transaction of 14 changes, almost three batches long.
    pair.source.transaction([pair.insert(pair.plain_row("del av helheten")) for _ in range(10)] +
                            [pair.update(key, f"{key}.99", "endret i samme") for key in range(1, 5)])
    out = pair.ok("run", "--once")
    assert "14 changes applied in 1 target transactions" in out, out
    audit = pair.target.audit()
    assert Counter(op for op, *_ in audit) == {"insert": 10, "update": 4}
    assert len({txid for *_, txid in audit}) == 1 and audit[0][-1], "the changes carry one source transaction"
    # Two more committed between two reads, the second again longer than a batch: each whole.
    pair.source.transaction([pair.update(5, "5.55", "alene")])
    pair.source.transaction([pair.delete(key) for key in range(6, 13)])
    pair.ok("run", "--once")
    # xmin: the target transaction that wrote an audit row. A capture that numbers epochs rather than
    # transactions (SQLite and MySQL trigger capture) may give both one source_txid: never two to one.
    written_by = pair.target.execute("SELECT source_txid, op, xmin::text FROM cdc_audit_log WHERE op <> 'snapshot'")
    assert all(len({x for t, _, x in written_by if t == txid}) == 1 for txid, _, _ in written_by), written_by
    deletes = [x for _, op, x in written_by if op == "delete"]
    assert len(deletes) == 7 and len(set(deletes)) == 1, f"a transaction of 7 deletes was split: {written_by}"
    pair.assert_target_equals_source()


def random_changes(pair, rng: random.Random, transactions: int, log: list, enough=lambda: True) -> None:
    """Small source transactions of inserts, updates and deletes, up to ``transactions`` of them and at
    least 20, until ``enough()``; ``log`` gets each change's (op, key)."""
    live = [row[0] for row in pair.source.live_rows()]
    for made in range(transactions):
        if made >= 20 and enough():
            break
        statements, keys = [], set()
        for _ in range(rng.randint(1, 3)):
            roll = rng.random()
            if roll < 0.45 or len(live) < 3:
                row = pair.plain_row(rng.choice(["æøå", "Kaffe ☕", "", None]))
                statements.append(pair.insert(row))
                live.append(row[0])
                log.append(("insert", [row[0]]))
                continue
            key = rng.choice([k for k in live if k not in keys] or live)
            if key in keys:
                continue
            keys.add(key)
            if roll < 0.8:
                statements.append(pair.update(key, str(Decimal(rng.randint(-10**9, 10**9)) / 100), "oppdatert"))
                log.append(("update", [key]))
            else:
                statements.append(pair.delete(key))
                live.remove(key)
                log.append(("delete", [key]))
        pair.source.transaction(statements)
        time.sleep(0.02)


APPLIED = "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'"


def kill_while_streaming(pair, busy, rng: random.Random, applied_at_kills: list[int], kills: int = 3) -> None:
    """Start `cdc run` and SIGKILL it after it has applied a few more changes (on observed progress,
    not a timer), again and again while ``busy()`` and at least ``kills`` times; appends the changes
    applied at each kill. A run that finds nothing more to apply once ``busy()`` is over is killed
    after 1 s."""
    with pair.target.watching(APPLIED) as applied:
        while busy() or len(applied_at_kills) < kills:
            run, wanted, idle_since = pair.start("run"), applied() + rng.randint(1, 6), None
            while run.alive() and applied() < wanted:
                idle_since = idle_since or (None if busy() else time.monotonic())
                if idle_since and time.monotonic() - idle_since > 1:
                    break
                time.sleep(0.002)
            run.kill()
            applied_at_kills.append(applied())


def landed(applied_at_kills: list[int]) -> int:
    """How many kills hit a run that had applied changes (not one idle or still starting)."""
    return sum(later > earlier for earlier, later in zip([0] + applied_at_kills, applied_at_kills))


@every_pairing
def test_sigkill_while_streaming_loses_and_doubles_nothing(make_pair, case, target_kind):
    pair = make_pair(case, target_kind)
    pair.source.transaction([pair.insert(pair.plain_row()) for _ in range(10)])
    pair.setup(batch_size=3, poll_interval=0.05)
    pair.ok("run", "--once")  # the snapshot first: every later change must be audited exactly once
    log: list = []
    at_kills: list[int] = []  # the source changes while three kills land, however slow the machine
    writer = threading.Thread(target=random_changes,
                              args=(pair, random.Random(5), 150, log, lambda: landed(at_kills) >= 3))
    writer.start()
    kill_while_streaming(pair, writer.is_alive, random.Random(12), at_kills)
    writer.join()
    pair.ok("run", "--once")
    assert landed(at_kills) >= 3, f"the kills must land while changes are applied: applied at each kill {at_kills}"
    pair.assert_target_equals_source()
    audit = pair.target.audit()
    if case.every_change:
        assert Counter((op, tuple(key)) for op, key in pair.streamed()) == \
            Counter((op, tuple(key)) for op, key in log), "a change was lost or applied twice"
    else:  # polling sees row versions: each one at most once, the last of every row applied
        versions = [(key, after) for _, key, _, after, _, _ in audit]
        doubled = [v for v, n in Counter(versions).items() if n > 1]
        assert not doubled, f"row versions applied twice: {doubled[:5]}"


SNAPSHOT_ROWS, SNAPSHOT_CHUNK = 3000, 200


CHUNKS_COMMITTED = "SELECT count(*) FROM cdc_audit_log WHERE op = 'snapshot'"


def run_until_chunks(pair, wanted: int) -> int:
    """Start `cdc run --once` and SIGKILL it once the target has committed ``wanted`` snapshot chunks
    (killed on observed progress, not on a timer, so it lands mid-snapshot however fast the machine);
    the chunks committed when it died."""
    with pair.target.watching(CHUNKS_COMMITTED) as chunks:
        run = pair.start("run", "--once")
        while run.alive() and chunks() < wanted:
            time.sleep(0.002)
        run.kill()
        return chunks()


@every_pairing
def test_sigkill_during_the_snapshot_resumes_where_it_stopped(make_pair, case, target_kind):
    pair = make_pair(case, target_kind)
    pair.source.transaction(pair.insert_many([pair.plain_row(f"rad {i} æøå") for i in range(SNAPSHOT_ROWS)]))
    pair.setup(snapshot_chunk=SNAPSHOT_CHUNK)
    rng, seen = random.Random(3), [0]
    for kill in range(3):
        seen.append(run_until_chunks(pair, seen[-1] + rng.randint(1, 3)))
        if kill == 0:  # rows changed while the snapshot is half done: one copied already, one not yet
            pair.source.transaction([pair.update(1, "-1.01", "endret under kopien")])
            pair.source.transaction([pair.update(SNAPSHOT_ROWS, "3.03", "endret før kopien")])
    assert seen == sorted(seen) and seen[1] > 0 and seen[-1] < SNAPSHOT_ROWS // SNAPSHOT_CHUNK, \
        f"every kill must land during the snapshot, after some progress: chunks committed {seen}"
    pair.ok("run", "--once")
    chunks = [json.loads(after)["rows"] for _, _, _, after, _, _ in pair.target.audit("op = 'snapshot'")]
    assert sum(chunks) == SNAPSHOT_ROWS, f"a chunk was copied twice or not at all: {chunks}"
    pair.assert_target_equals_source()
    streamed = pair.streamed()
    assert Counter(key[0] for _, key in streamed)[1] == 1, f"the change to a copied row once: {streamed}"
    assert {key[0] for _, key in streamed} <= {1, SNAPSHOT_ROWS}, f"only the changed rows stream: {streamed}"
    assert "0 changes applied" in pair.ok("run", "--once")


@pytest.mark.parametrize("case, target_kind", REFUSING, ids=[f"{c.id}-to-{t}" for c, t in REFUSING])
def test_a_row_the_target_refuses_is_parked_or_stops_the_pair(make_pair, case, target_kind):
    pair = make_pair(case, target_kind, target_note="VARCHAR(10)")
    pair.setup(on_error="park")
    pair.ok("run", "--once")
    too_long = "altfor lang tekst"  # 17 characters for a VARCHAR(10)
    pair.source.transaction([pair.insert((1, "1.00", None, None, "kort", None, True)),
                             pair.insert((2, "2.00", None, None, too_long, None, True)),
                             pair.insert((3, "3.00", None, None, "kort", None, False))])
    out = pair.ok("run", "--once")
    assert "1 parked" in out, out
    assert [row[0] for row in pair.target.rows()] == [1, 3]
    quote = pair.target.quote
    letters = pair.target.execute(f"SELECT {quote('key')}, column_name, {quote('change')} FROM cdc_dead_letters")
    assert [(key, column) for key, column, _ in letters] == [("[2]", "note")]
    assert too_long in letters[0][2], "the dead letter keeps the whole change"
    assert pair.streamed() == pair.expected([("insert", [1]), ("insert", [3])])

    pair.write_config(on_error="stop")
    pair.source.transaction([pair.insert((4, "4.00", None, None, "kort", None, True)),
                             pair.insert((5, "5.00", None, None, too_long, None, True))])
    for _ in range(2):  # stopped, and stopped again: never skipped
        stopped = pair.cdc("run", "--once")
        assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stdout + stopped.stderr
        assert "items" in stopped.stderr and "note" in stopped.stderr and "[5]" in stopped.stderr, stopped.stderr
        assert [row[0] for row in pair.target.rows()] == [1, 3], "part of a stopped batch was applied"
    pair.target.widen_note()  # the DBA's fix
    pair.ok("run", "--once")
    assert [row[0] for row in pair.target.rows()] == [1, 3, 4, 5]
    assert pair.streamed() == pair.expected([("insert", [key]) for key in (1, 3, 4, 5)])
    repaired = pair.cdc("reconcile", "--settle", "0", "--repair")  # the parked row, copied by repair
    assert "repair applied 1 upsert(s)" in repaired.stdout, repaired.stdout + repaired.stderr
    pair.assert_target_equals_source()


def reconcile_report(pair) -> tuple[int, dict]:
    result = pair.cdc("reconcile", "--settle", "0", "--format", "json")
    table = json.loads(result.stdout)["tables"][0]
    kinds = {kind: sorted(int(r["key"][0]) for r in table["rows"] if r["kind"] == kind)
             for kind in ("missing", "extra", "different")}
    kinds["columns"] = {int(r["key"][0]): sorted(r["columns"]) for r in table["rows"] if r["kind"] == "different"}
    return result.returncode, kinds


@every_pairing
def test_drift_is_found_exactly_and_repaired(make_pair, case, target_kind):
    pair = make_pair(case, target_kind)
    pair.source.transaction([pair.insert(pair.plain_row("Blåbær æ")) for _ in range(6)])
    pair.setup()
    pair.ok("run", "--once")
    assert reconcile_report(pair)[0] == 0
    pair.target.transaction([("DELETE FROM items WHERE id = 2", None),
                             ("UPDATE items SET amount = amount + 0.01 WHERE id = 3", None),
                             ("UPDATE items SET note = replace(note, 'æ', 'ae') WHERE id = 4", None),
                             ("INSERT INTO items (id, amount, note, updated_at, deleted) "
                              f"VALUES (99, 1, 'ekstra', {pair.target.now}, 0 = 1)", None)])
    code, found = reconcile_report(pair)
    assert code == 1 and found == {"missing": [2], "extra": [99], "different": [3, 4],
                                   "columns": {3: ["amount"], 4: ["note"]}}, found
    repaired = pair.cdc("reconcile", "--settle", "0", "--repair")
    assert "repair applied 3 upsert(s) and 1 delete(s)" in repaired.stdout, repaired.stdout + repaired.stderr
    assert reconcile_report(pair)[0] == 0
    pair.assert_target_equals_source()
    assert sorted((op, key) for op, key, reason, *_ in pair.target.audit("reason = 'repair'")) == \
        [("delete", "[99]"), ("insert", "[2]"), ("update", "[3]"), ("update", "[4]")]


@every_source
def test_capture_installed_again_stops_with_the_fix_or_misses_nothing(make_pair, case):
    pair = make_pair(case, TARGET)
    pair.source.transaction([pair.insert(pair.plain_row()) for _ in range(5)])
    pair.setup()
    pair.ok("run", "--once")
    pair.source.transaction([pair.update(1, "11.11", "før")])
    pair.ok("run", "--once")
    pair.assert_target_equals_source()
    pair.ok("uninstall")
    pair.source.transaction([pair.update(4, "777.77", "mens ingen fanget")])  # while nothing captures
    pair.ok("install")
    pair.source.transaction([pair.insert(pair.plain_row("etter")), pair.update(2, "2.22", "etter"), pair.delete(3)])
    result = pair.cdc("run", "--once")
    if result.returncode == 0:  # this mode's position survives a reinstall: it must have missed nothing
        pair.assert_target_equals_source()
    else:
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
        assert "--resnapshot" in result.stderr and "pair p" in result.stderr, result.stderr
        assert pair.target.rows() != pair.source.live_rows()
        pair.ok("run", "--once", "--resnapshot")
        pair.cdc("reconcile", "--settle", "0", "--repair")  # the row deleted meanwhile, as the message says
        pair.assert_target_equals_source()
    pair.source.transaction([pair.update(5, "5.55", "strømmer igjen")])
    pair.ok("run", "--once")
    pair.assert_target_equals_source()
