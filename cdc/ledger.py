"""Append-only ledger mode: source changes become journal entries and reversals, never an UPDATE or DELETE.

Policy, per target table whose mapping says `mode: ledger` (``TableSpec.ledger``):

* the target key is the mapping's target key plus the ``sequence`` column: a source key's entries
  are numbered 1, 2, 3, ... in the order they were posted; ``reverses`` is NULL in an entry and, in
  a reversal, the sequence number of the entry it reverses;
* the **current entry** of a key is its newest row when that row is an entry (not a reversal); a
  key whose newest row is a reversal, or that has no row, has none;
* a source insert or update becomes a **new entry**; when the key has a current entry, a
  **reversal** of it comes first: a copy of it with every amount column negated, dated like the
  new entry (an update is corrected in the period it is posted in; a delete's reversal keeps the
  date of the entry it reverses); a source delete becomes a reversal of the current entry;
* a change that leaves the current entry as it is (every mapped column equal: a replay, a copy of
  a table again) writes nothing and is noted ``skipped``; so is a delete of a key with no current
  entry: there is nothing to reverse;
* hence, per source key, the sum of the target's amounts is the source row's current amount (0
  after a delete), and the target only ever sees INSERTs.

The current entries of a part's keys are read set-wise (one statement per target table and part,
through ``Target.read_rows`` with ``latest``); several changes to one key in one part are chained
in memory. Each change's ``note`` says what was written ("reversal of entry 3, new entry 4").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .changes import Row
from .mapping import MappedChange, TargetOp

__all__ = ["Journal", "entries"]


@dataclass(slots=True)
class _Key:
    """What is known of one target key while a part is turned into entries."""

    last: int  #: the key's highest sequence number (0: no row yet)
    current: Row | None  #: its current entry (None: none, or reversed)


def _own_columns(spec: Any) -> tuple[str, str]:
    """The two target columns a ledger table has that its mapping does not fill: (sequence, reverses)."""
    return spec.ledger.sequence, spec.ledger.reverses


class Journal:
    """The current entries of a part's ledger keys, read once (one statement per target table):
    what the bookkeeping rules weigh a change against, then what ``entries`` posts from."""

    def __init__(self, target: Any, conn: Any, items: list[MappedChange]):
        ledgers = _ledgers(items)
        self.known = _current_entries(target, conn, ledgers) if ledgers else {}

    def before_of(self, item: MappedChange) -> Row | None:
        """The journal's current entry for ``item``'s key (None: none, or reversed): what the target
        holds for it, where the change's before image may be what a retry has since replaced."""
        key = self.known.get((item.ops[0].table, item.ops[0].key)) if item.ops else None
        return None if key is None else key.current


def _ledgers(items: list[MappedChange]) -> list[MappedChange]:
    return [item for item in items  # a change the mapping filtered out has no ops, and stays silent
            if item.ops and item.error is None and item.mapping.spec.ledger is not None]


def entries(target: Any, conn: Any, items: list[MappedChange], journal: Journal | None = None) -> None:
    """Rewrite the ops of the ledger tables' changes among ``items`` into inserts of entries and
    reversals (see the module's policy), in order; other items are left as they are. Reads the
    current entries of all their keys first, one statement per target table (or takes them from
    ``journal``, read for the same part before anything was written). Errors of the read are
    raised as the target raises them (the caller's transaction decides). Whether the target
    table can hold a journal was checked when the pair was opened (schema.ledger_problem)."""
    ledgers = _ledgers(items)
    if not ledgers:
        return
    known = journal.known if journal is not None else _current_entries(target, conn, ledgers)
    for item in ledgers:
        written, said = [], []
        for op in item.ops:
            ops, text = _rewrite(op, item.mapping, known.setdefault((op.table, op.key), _Key(0, None)))
            written += ops
            said.append(text)
        item.ops = written
        item.note = ("applied" if written else "skipped", "ledger", "; ".join(said), None)


def _current_entries(target: Any, conn: Any, ledgers: list[MappedChange]) -> dict[tuple, _Key]:
    """(table, target key) -> its last sequence and current entry, for every key the ops touch."""
    wanted: dict[tuple[str, tuple[str, ...], str], set] = {}
    reverses: dict[str, str] = {}
    for item in ledgers:
        sequence, reverses[item.mapping.target] = _own_columns(item.mapping.spec)
        for op in item.ops:
            wanted.setdefault((op.table, op.key_columns, sequence), set()).add(op.key)
    known: dict[tuple, _Key] = {}
    for (table, columns, sequence), keys in wanted.items():
        for row in target.read_rows(conn, table, columns, list(keys), latest=sequence):
            key = tuple([row[c] for c in columns])
            known[(table, key)] = _Key(int(row[sequence]), row if row[reverses[table]] is None else None)
    return known


def _rewrite(op: TargetOp, mapping: Any, key: _Key) -> tuple[list[TargetOp], str]:
    """One mapped op (upsert or delete of one key) as entries, ``key`` moved on; and what was written."""
    if op.op == "delete":
        if key.current is None:
            return [], "no current entry to reverse"
        reversal = _reversal(op, mapping, key, None)
        return [reversal], f"reversal of entry {reversal.row[mapping.spec.ledger.reverses]}"
    if key.current is not None and all(_same(key.current.get(c), v) for c, v in op.row.items()):
        return [], f"entry {key.last} already holds this row"
    written, said = [], []
    if key.current is not None:
        written.append(_reversal(op, mapping, key, op.row))
        said.append(f"reversal of entry {written[-1].row[mapping.spec.ledger.reverses]}")
    written.append(_entry(op, mapping, key))
    said.append(f"new entry {key.last}")
    return written, ", ".join(said)


def _reversal(op: TargetOp, mapping: Any, key: _Key, new_row: Row | None) -> TargetOp:
    """The reversal of ``key``'s current entry: a copy with its amounts negated; the key moves on."""
    spec = mapping.spec.ledger
    row = dict(key.current)
    for column in spec.amounts:
        if row.get(column) is not None:
            row[column] = _negated(row[column])
    if spec.entry_date is not None and new_row is not None and spec.entry_date in new_row:
        row[spec.entry_date] = new_row[spec.entry_date]
    reversed_entry = key.current[spec.sequence]
    key.last, key.current = key.last + 1, None
    row[spec.sequence], row[spec.reverses] = key.last, reversed_entry
    return _insert(op, mapping, row)


def _negated(value: Any) -> Any:
    """-value, exactly: a Decimal's unary minus rounds to the context's 28 digits (a numeric(38,10)
    amount lost its last digits, and the key's entries no longer summed to the source's amount)."""
    return value.copy_negate() if isinstance(value, Decimal) else -value


def _entry(op: TargetOp, mapping: Any, key: _Key) -> TargetOp:
    """A new entry holding the mapped row; it becomes the key's current entry."""
    spec = mapping.spec.ledger
    key.last += 1
    row = {**op.row, spec.sequence: key.last, spec.reverses: None}
    key.current = row
    return _insert(op, mapping, row)


def _insert(op: TargetOp, mapping: Any, row: Row) -> TargetOp:
    """An INSERT of ``row`` keyed by the op's key columns and the sequence (the full target key)."""
    columns = op.key_columns + (mapping.spec.ledger.sequence,)
    return TargetOp("insert", op.table, columns, tuple([row[c] for c in columns]), row, op.change)


def _same(stored: Any, value: Any) -> bool:
    """Whether a stored entry's value is the mapped value (numbers by value: 10.50 is 10.5)."""
    try:
        return stored == value
    except TypeError:  # an aware and a naive timestamp, say: not provably the same
        return False
