"""The decision step: which changes of a part reach the target, and how.

In order, per change: a key held behind an open dead letter or conflict waits (parked as held);
a change the mapping refused is parked; an update that changed no mapped column is skipped;
then, with the target rows read set-wise (one statement per table and part): changes to closed
periods and unbalanced vouchers are parked; a ledger table's changes become journal entries
(cdc/ledger.py); every other change is compared with the target row, and a target row that
changed since this pair last wrote it is a conflict, decided by the table's policy (cdc/conflicts.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .. import conflicts, state
from ..errors import RowError
from ..mapping import MappedChange
from ._holds import Holds
from ._records import conflict_rows
from ._target_rows import TargetRows

#: Called with a change that does not reach the target and why: parked, or the pair stops (on_error).
Park = Callable[[MappedChange, RowError], None]


@dataclass
class Context:
    """What one apply transaction decides by: why it runs, a policy that overrides every table's,
    whether parked changes hold their keys, and what holds which key."""

    pair: str
    reason: str
    policy: str | None = None
    holds_on: bool = True
    holds: Holds = field(default_factory=Holds)
    conn: Any = None

    @property
    def ignores_letters(self) -> bool:
        """Whether parked letters hold nothing back here (holds off, or a repair): conflicts still do."""
        return not self.holds_on or self.reason == "repair"

    def open_conflict(self, item: MappedChange, found: dict | None) -> int:
        """Record a conflict for a person to decide, now (its id names what later changes wait behind)."""
        (row,) = conflict_rows(self.pair, [(item, found)], state._store.now())
        return self.conn.execute(state.conflicts.insert().values(**row)).inserted_primary_key[0]


@dataclass
class Decided:
    """A part decided: the changes to write (ops possibly rewritten), those decided and audited but
    not written, row hashes to store, and counts."""

    write: list[MappedChange] = field(default_factory=list)
    unwritten: list[MappedChange] = field(default_factory=list)
    hashes: dict[tuple, str | None] = field(default_factory=dict)  # see TargetRows.hashes
    skipped: int = 0
    conflicted: int = 0


def decide(conn: Any, target: Any, ctx: Context, mapped: list[MappedChange], park: Park) -> Decided:
    """Decide one part (see the module docstring); ``park`` takes what is parked (or raises to stop)."""
    decided = Decided()
    if ctx.reason == "snapshot":  # a copy decides nothing but how a journal takes its rows
        _ledger(target, conn, [i for i in mapped if i.ops and i.mapping.spec.ledger is not None])
        decided.write = mapped
        # Tables kept by row hash: the hash of each row copied, so that a person's edit between the
        # copy and the key's next change is a conflict like any later one.
        decided.hashes = TargetRows.hashing(target).written([i for i in mapped if i.ops and i.mapping.spec.row_hashes
                                                             and i.mapping.spec.ledger is None])
        return decided
    live = _unheld(ctx, mapped, park, decided)
    rows = TargetRows(conn, target, ctx.pair, [i for i in live if _reads_target(i, ctx)])
    journal = _journal_of(target, conn, live)
    live = _by_rules(ctx, live, rows, park, decided, journal)
    _ledger(target, conn, [i for i in live if i.mapping.spec.ledger is not None], journal)
    for item in live:
        # What an earlier change of this part left: a conflict it opened, or a change held behind one
        # (a key change holds its new key too, so the changes after it there wait as well).
        blocker = ctx.holds.blocker(item, ctx.ignores_letters)
        if blocker is not None:
            _park(ctx, item, park, _held(blocker))
        elif item.mapping.spec.ledger is not None:
            _journal(item, decided)
        else:
            try:
                if conflicts.decide(item, ctx, rows, decided):
                    decided.write.append(item)
            except RowError as error:  # a policy that cannot decide this change (see conflicts._newer_or_same)
                _park(ctx, item, park, error)
    decided.hashes = rows.hashes
    return decided


def _unheld(ctx: Context, mapped: list[MappedChange], park: Park, decided: Decided) -> list[MappedChange]:
    """The changes whose keys nothing holds, that mapped, and that change a mapped column."""
    live = []
    for item in mapped:
        blocker = ctx.holds.blocker(item, ctx.ignores_letters)
        if blocker is not None:
            if ctx.reason == "repair":  # a repair leaves a key with an open conflict to its resolution
                decided.skipped += 1
                continue
            _park(ctx, item, park, _held(blocker))
        elif item.error is not None:
            _park(ctx, item, park, item.error)
        elif _unchanged(item):
            decided.skipped += 1
        else:
            live.append(item)
    return live


def _by_rules(ctx: Context, live: list[MappedChange], rows: TargetRows, park: Park,
              decided: Decided, journal: Any) -> list[MappedChange]:
    """``live`` without the changes to closed periods and unbalanced vouchers, parked (and the later
    changes of their keys, held). A change is weighed against the row the target holds for its key:
    a ledger table's current entry (``journal``), else the row read, else its before image."""
    specs = {id(i.mapping): i.mapping.spec for i in live}
    if not any(s.closed_before is not None or s.balance is not None for s in specs.values()):
        return live
    from . import _rules  # only pairs with bookkeeping rules need them

    def before_of(item: MappedChange) -> Any:
        return journal.before_of(item) if item.mapping.spec.ledger is not None else rows.before_of(item)

    refused = {id(item): error for item, error in _rules.closed(live, before_of)}
    # A voucher is weighed without its postings parked already: one posting in a closed period
    # leaves the rest unbalanced, so the whole voucher is parked.
    rest = [item for item in live if id(item) not in refused]
    refused.update((id(item), error) for item, error in _rules.unbalanced(rest, before_of))
    kept = []
    for item in live:
        blocker = ctx.holds.blocker(item, not ctx.holds_on)
        if id(item) in refused and ctx.reason == "repair":
            decided.skipped += 1  # a repair parks nothing: the rule's dead letter (if any) stays the one
        elif id(item) in refused:
            _park(ctx, item, park, refused[id(item)])
        elif blocker is not None:
            _park(ctx, item, park, _held(blocker))
        else:
            kept.append(item)
    return kept


def _held(blocker: str) -> RowError:
    return RowError(f"waits behind {blocker} of the same key (order per key is kept): it is applied when that is "
                    "retried, discarded or resolved", kind="held", blocked_by=blocker)


def _park(ctx: Context, item: MappedChange, park: Park, error: RowError) -> None:
    park(item, error)
    ctx.holds.park(item, "a change of the same key parked in the same transaction")


def _unchanged(item: MappedChange) -> bool:
    """Whether an update changed no column the mapping copies: its before image, mapped, is the row
    it writes (only where the capture gives a whole before image)."""
    ops = item.ops
    if item.change.op != "update" or len(ops) != 1 or ops[0].op != "upsert":
        return False
    before = item.before_row()  # NOT_WHOLE or None (filtered out) never equals a row
    return before == ops[0].row  # a value its transform refuses is an {"$error"}: never equal


def _reads_target(item: MappedChange, ctx: Context) -> bool:
    spec = item.mapping.spec
    if not item.ops or spec.ledger is not None:
        return False
    return bool(spec.detect or ctx.reason == "repair" or spec.balance or spec.closed_before)


def _journal(item: MappedChange, decided: Decided) -> None:
    """A ledger table's change: its entries written, or (nothing to post: see cdc/ledger.py) skipped."""
    if item.ops:
        decided.write.append(item)
    else:
        decided.skipped += 1
        decided.unwritten.append(item)


def _journal_of(target: Any, conn: Any, live: list[MappedChange]) -> Any:
    """The current entries of the ledger tables' keys among ``live`` (None: no ledger table)."""
    items = [i for i in live if i.mapping.spec.ledger is not None]
    if not items:
        return None
    from .. import ledger  # only pairs with journals need it

    return ledger.Journal(target, conn, items)


def _ledger(target: Any, conn: Any, items: list[MappedChange], journal: Any = None) -> None:
    if items:
        from .. import ledger  # only pairs with journals need it

        ledger.entries(target, conn, items, journal)
