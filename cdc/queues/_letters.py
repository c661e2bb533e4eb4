"""`cdc dead-letters retry` and `discard`: a parked change made right from the source's current row,
or dropped with a reason; either way the changes held behind it go on, in order.

Retry re-reads the source's current row for the letter's key (as a repair reads it: the user may
have fixed the source row, the target table or the mapping since), builds an upsert of it, or a
delete when the source no longer has the key, and applies it through the normal audited path in
ONE transaction with the letter marked ``retried`` and the later changes of its key held behind it
marked ``resolved`` (the source's current row supersedes them). A retry the target refuses again
changes nothing but the letter's error: it stays parked. A letter of kind ``balance`` or ``closed``
(of a table with ``balance``) is retried with its whole voucher: the open such letters of its
table in that voucher (a voucher fixed by a posting added in a later transaction is retried with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .. import state
from ..apply import apply
from ..apply._rules import RETRY
from ..changes import Change
from ..config import Pair
from ..errors import ConfigError, RowError
from ..mapping import TableMapping, map_changes
from ..pipeline import open_source
from ._applying import Marks, audit_row, chained, claimed, mapping_of, release, revived, set_letters, write_audit
from ._rows import OPEN_LETTERS, Letter, read_conflicts, read_letters


@dataclass
class Outcome:
    """What became of one retried or discarded letter (``status``: its status now) and the letters
    that went with it (a voucher's, the held ones released or superseded)."""

    letter: int
    status: str
    text: str
    letters: list[int] = field(default_factory=list)
    #: The conflict the retried change opened (policy manual), which a person must still resolve.
    conflict: int | None = None

    @property
    def failed(self) -> bool:
        """Whether it left something for a person: a letter still parked, or a conflict opened."""
        return self.status in OPEN_LETTERS or self.conflict is not None


class _ParkedAgain(Exception):
    """The apply parked the retried change again (it waits behind an open conflict, or a rule refused
    it): raised inside the transaction so that it rolls back."""

    def __init__(self, letter: Letter):
        super().__init__(letter.error)
        self.letter = letter


def retry_letters(pair: Pair, letters: list[Letter], wait: bool) -> list[Outcome]:
    """Retry these letters of ``pair`` in id order, holding the pair's claim throughout (see module)."""
    outcomes: list[Outcome] = []
    with claimed(pair, wait, "retry") as target:
        source, mappings = open_source(pair, target)
        try:
            target.prepare_tables(m.target for m in mappings.values())
            handled: set[int] = set()
            for letter in letters:
                if letter.id not in handled:
                    outcome = _retry_one(target, pair, source, mappings, letter.id)
                    handled.update(outcome.letters)
                    outcomes.append(outcome)
        finally:
            source.close()
    return outcomes


def _retry_one(target: Any, pair: Pair, source: Any, mappings: dict[str, TableMapping], number: int) -> Outcome:
    queue = _queue(target, pair, mappings, number)
    if isinstance(queue, Outcome):
        return queue
    letter, group, held = queue
    changes, refused = [], []
    for member in group:
        built = _current(target, pair, source, mapping_of(pair, mappings, member.source_table), member)
        if isinstance(built, str):
            refused.append((member, RowError(built, table=member.source_table, key=tuple(member.key))))
        else:
            changes += built
    if refused:
        return _still_parked(target, pair, group, refused)
    opened: dict[str, int] = {}
    finish = _finisher(target, pair, group, held, bool(changes), Marks(target, pair.name), opened)
    try:
        result = apply(target, pair.name, map_changes(changes, mappings), position=None, snapshot=None,
                       on_error="stop", reason="retry", holds=False, finish=finish)
    except RowError as exc:
        return _still_parked(target, pair, group, [(_named(group, exc), exc)])
    except _ParkedAgain as again:
        error = RowError(again.letter.error, table=letter.source_table, key=tuple(letter.key),
                         kind=again.letter.kind if again.letter.kind != "held" else letter.kind)
        return _still_parked(target, pair, group, [(letter, error)])
    ids = [g.id for g in group]
    what = f"{len(changes)} change(s) from the source's current rows applied" if changes else \
        "nothing to apply: the target already holds the source's current row"
    if result.conflicts and not opened:  # decided by target_wins or newest_wins, maybe kept as it is
        what = (f"the source's current row met a target row someone else changed ({result.conflicts} conflict(s)): "
                "decided by the table's conflict policy, as its audit row says (`cdc audit`)")
    if opened:
        what = (f"the source's current row met a target row someone else changed: conflict {opened['id']} "
                f"(`cdc conflicts resolve CONFIG {opened['id']} --take source|target`)")
    also = f"; {len(held)} held change(s) behind it superseded" if held else ""
    others = ", ".join(str(i) for i in ids if i != letter.id)
    members = f" with its voucher's dead letters {others}" if others else ""
    return Outcome(letter.id, "retried", f"dead letter {letter.id}{members} retried: {what}{also}",
                   ids + [h.id for h in held], opened.get("id"))


def _queue(target: Any, pair: Pair, mappings: dict[str, TableMapping],
           number: int) -> tuple[Letter, list[Letter], list[Letter]] | Outcome:
    """(the letter as it is now, under the claim; the letters retried with it; the held letters of
    their keys), or the Outcome saying why it is not retried (closed already, or not the head)."""
    with target.reading() as conn:
        letter = read_letters(conn, [pair.name], statuses=None, ids=[number])[0]
        if letter.status not in OPEN_LETTERS:
            return Outcome(number, letter.status, f"dead letter {number} is {letter.status} already: nothing to do",
                           [number])
        ahead = blocker(conn, pair.name, letter)
        if ahead is not None:
            return Outcome(number, letter.status, f"dead letter {number} waits behind {ahead} of the same key: "
                           "retry, discard or resolve that first", [number])
        group = _voucher(conn, pair, mappings, letter) if letter.kind in _VOUCHER_KINDS else [letter]
        ids = {g.id for g in group}
        keys = sorted({(g.source_table, g.key_text) for g in group})
        held = [h for key in keys for h in read_letters(conn, [pair.name], statuses=("held",), key=key)
                if h.id not in ids]
    return letter, group, held


def _finisher(target: Any, pair: Pair, group: list[Letter], held: list[Letter], changed: bool, marks: Marks,
              opened: dict):
    """``finish(conn)`` of a retry's apply: _ParkedAgain (the transaction rolls back) when the apply
    parked the change again; else the group ``retried`` (audited here when there was nothing to
    apply) and the held letters of their keys ``resolved``; a conflict the retry opened goes into
    ``opened``."""

    def finish(conn: sa.Connection) -> None:
        again = marks.new_letters(conn)
        if again:
            raise _ParkedAgain(again[0])
        conflicts = marks.new_conflicts(conn)
        now = state._store.now()
        note = "retried: the source's current row was applied"
        if conflicts:
            opened["id"] = conflicts[0][0]
            note = f"retried: the source's current row met a target row someone else changed: conflict {opened['id']}"
        if not changed:  # audited all the same: the letter is closed by this retry
            note = "retried: nothing to apply, the target already holds the source's current row"
            write_audit(target, conn, [audit_row(pair.name, g.source_table, g.target_table, g.op, "retry", g.key,
                                                 None, None, position=None, txid=RETRY, decision="retried",
                                                 policy=None, detail=note) for g in group])
        set_letters(conn, [g.id for g in group], status="retried", resolved_at=now, note=note)
        set_letters(conn, [h.id for h in held], status="resolved", resolved_at=now,
                    note=f"superseded by the retry of dead letter {group[0].id} (the source's current row)")

    return finish


def _current(target: Any, pair: Pair, source: Any, mapping: TableMapping, letter: Letter) -> list[Change] | str:
    """The changes that make the letter's key what the source has now (read as a repair reads it):
    an upsert of the current row, a delete when the source has no row with the key, none when the
    target holds it already; or why the key cannot be applied (a row the mapping cannot map).

    Their before image is the letter's: the row as the pair last wrote it (nothing of the key was
    written since: later changes waited behind the letter), so a target row someone else changed
    meanwhile is a conflict, decided by the table's policy, not overwritten unseen."""
    from ..reconcile import RepairPlan, plan_source_keys

    plan = RepairPlan()
    stored = revived(letter.change, source, mapping).change
    before = stored.before if stored.before is not None and not _omits(stored.before) else None
    plan_source_keys(source, target, mapping, [stored.key], plan)
    if plan.kept:
        return f"the source's current row: {plan.kept[0]['why']}"
    now = state._store.now()
    changes = []
    for op, read in zip(plan.ops, plan.sources):
        if read is None:
            changes.append(Change("delete", mapping.source, stored.key, before, None, now, None, RETRY))
        else:
            kind = "update" if before is not None or op.change.before is not None else "insert"
            changes.append(Change(kind, mapping.source, read[1], before, read[2], now, None, RETRY))
    return changes


def _omits(row: dict) -> bool:
    """Whether the stored image kept a value only as its length and SHA-256 (too large to store)."""
    return any(isinstance(v, dict) and "$omitted" in v for v in row.values())


def _still_parked(target: Any, pair: Pair, group: list[Letter], refused: list[tuple[Letter, RowError]]) -> Outcome:
    """Nothing of the retry was applied: each refused letter keeps status parked with the new error
    (and an audit row saying so); the target is as it was."""
    now = state._store.now()
    with target.begin() as conn:
        state.claims.fence(conn, target.claim(pair.name))
        rows = []
        for letter, error in refused:
            set_letters(conn, [letter.id], error=str(error), column_name=error.column,
                        kind=error.kind if error.kind != "held" else letter.kind,
                        note=f"retried at {now.isoformat()}: refused again")
            rows.append(audit_row(pair.name, letter.source_table, letter.target_table, letter.op, "retry",
                                  letter.key, None, None, position=letter.source_position, txid=letter.source_txid,
                                  decision="parked", policy=error.kind,
                                  detail=f"retry of dead letter {letter.id} refused: {error}"))
        write_audit(target, conn, rows)
    error = refused[0][1]
    return Outcome(group[0].id, "parked", f"dead letter {group[0].id} refused again, still parked: "
                   f"{error.describe()}", [g.id for g in group])


def _named(group: list[Letter], error: RowError) -> Letter:
    """The letter of the group whose key the error names (the first when it names none)."""
    key = [str(v) for v in error.key]
    return next((g for g in group if [str(v) for v in g.key] == key), group[0])


def blocker(conn: sa.Connection, pair: str, letter: Letter) -> str | None:
    """What ``letter`` still waits behind: an open conflict of its key, or an earlier open letter of it."""
    key = (letter.source_table, letter.key_text)
    for conflict in read_conflicts(conn, [pair], key=key):
        return f"conflict {conflict.id}"
    earlier = [o for o in read_letters(conn, [pair], key=key) if o.id < letter.id]
    return f"dead letter {earlier[0].id}" if earlier else None


#: Letters of a balance table that are retried with their whole voucher: an unbalanced one, a
#: posting parked for a closed period, and one the target refused (without it, the rest of its
#: voucher did not balance, and was parked with it).
_VOUCHER_KINDS = ("balance", "closed", "error")


def _voucher(conn: sa.Connection, pair: Pair, mappings: dict[str, TableMapping], letter: Letter) -> list[Letter]:
    """The open balance and closed-period letters of the letter's table that share its voucher (by
    voucher only: SQLite trigger capture's txid is a read epoch that other vouchers share too)."""
    mapping = mapping_of(pair, mappings, letter.source_table)
    column = mapping.spec.balance.group_by if mapping.spec.balance is not None else None
    if column is None:
        return [letter]

    def voucher(one: Letter) -> Any:
        image = one.change.get("after") or one.change.get("before")
        return None if column is None or not image else str(mapping.image(image).get(column))

    mine = voucher(letter)
    return [o for o in read_letters(conn, [pair.name], table=letter.source_table, statuses=("parked",))
            if o.kind in _VOUCHER_KINDS and o.source_table == letter.source_table
            and (o.id == letter.id or (mine is not None and voucher(o) == mine))]


def discard_letter(pair: Pair, number: int, reason: str, wait: bool) -> Outcome:
    """Mark the letter discarded with ``reason`` and its audit row (decision discarded), and release
    the changes held behind it in id order, in ONE transaction (see release)."""
    with claimed(pair, wait, "discard") as target:
        source, mappings = open_source(pair, target)
        try:
            with target.reading() as conn:
                letter = read_letters(conn, [pair.name], statuses=None, ids=[number])[0]
                if letter.status not in OPEN_LETTERS:
                    raise ConfigError(f"dead letter {number} is {letter.status} already: nothing to discard")
                head = blocker(conn, pair.name, letter) is None
                # The held changes after it of its key (and, where one moved its row, of the key it moved to).
                held = [h for h in chained(read_letters(conn, [pair.name], statuses=("held",)), [letter], pair,
                                           mappings) if h.id != letter.id] if head else []

            def first(conn: sa.Connection) -> None:
                set_letters(conn, [number], status="discarded", resolved_at=state._store.now(), note=reason)
                write_audit(target, conn, [_discard_row(pair, mappings, letter, reason)])

            done = release(target, pair, source, mappings, held, f"released: dead letter {number} was discarded",
                           reason="retry", first=first)
        finally:
            source.close()
    text = f"dead letter {number} discarded"
    if held:
        text += (f"; {len(held)} held change(s) behind it released: {done['applied']} applied, "
                 f"{done['parked']} parked again, {done['conflicts']} conflict(s)")
    return Outcome(number, "discarded", text, [number] + [h.id for h in held])


def _discard_row(pair: Pair, mappings: dict[str, TableMapping], letter: Letter, reason: str) -> dict:
    """The audit row of a discard: the change's images as the mapping makes them (what was not applied)."""
    mapping = mappings.get(letter.source_table)
    images = [None if image is None or mapping is None else mapping.image(image)
              for image in (letter.change.get("before"), letter.change.get("after"))]
    return audit_row(pair.name, letter.source_table, letter.target_table, letter.op, "discard", letter.key,
                     images[0], images[1], position=letter.source_position, txid=letter.source_txid,
                     decision="discarded", policy=None, detail=reason)
