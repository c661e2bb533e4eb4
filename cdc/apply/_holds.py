"""What holds a key back: its open dead letters and conflicts, read once per apply transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .. import state
from ..changes import dumps
from ..mapping import MappedChange

#: A key as holds know it: (source table, the source key as JSON), as dead letters and conflicts store it.
HoldKey = tuple[str, str]

_OPEN_LETTERS = ("parked", "held")


def hold_key(item: MappedChange) -> HoldKey:
    return item.change.table, dumps(list(item.change.key))


def hold_keys(item: MappedChange) -> list[HoldKey]:
    """The keys a change touches: its own, and for a key change (an update whose before image has
    another key) the old one too, which it deletes: it waits behind what holds either."""
    keys = [hold_key(item)]
    change = item.change
    if change.op == "update" and change.before is not None:
        try:
            old = item.mapping.source_key_of(change.before)
        except KeyError:  # a before image of the key only, or none whole: no key change seen
            return keys
        if old != change.key:
            keys.append((change.table, dumps(list(old))))
    return keys


@dataclass
class Holds:
    """Per key, what it waits behind ("dead letter 7", "conflict 3") and whether that is a conflict
    (a conflict holds its key whatever ``hold_parked_keys`` says); and the open letters per key,
    which a change that is written anyway (holding off, a repair) resolves."""

    blockers: dict[HoldKey, tuple[str, bool]] = field(default_factory=dict)
    letters: dict[HoldKey, list[int]] = field(default_factory=dict)

    @classmethod
    def load(cls, conn: Any, pair: str, conflicts_hold: bool = True) -> Holds:
        """The open letters and (unless not ``conflicts_hold``: a resolve carries its conflict's own
        change) open conflicts of ``pair``."""
        holds = cls()
        letters, conflicts = state.dead_letters, state.conflicts
        rows = conn.execute(sa.select(letters.c.id, letters.c.source_table, letters.c.key)
                            .where(letters.c.pair == pair, letters.c.status.in_(_OPEN_LETTERS))
                            .order_by(letters.c.id))
        for id_, table, key in rows:
            holds.letters.setdefault((table, key), []).append(id_)
            holds.blockers.setdefault((table, key), (f"dead letter {id_}", False))
        rows = conn.execute(sa.select(conflicts.c.id, conflicts.c.source_table, conflicts.c.source_key)
                            .where(conflicts.c.pair == pair, conflicts.c.status == "open").order_by(conflicts.c.id))
        for id_, table, key in rows if conflicts_hold else ():
            holds.blockers[(table, key)] = (f"conflict {id_}", True)
        return holds

    def blocker(self, item: MappedChange, ignore_letters: bool) -> str | None:
        """What ``item`` must wait behind, or None: a conflict always holds its key; a parked change
        holds it where the table's ``hold`` says so, unless ``ignore_letters`` (a retry, a repair)."""
        if not self.blockers:  # the common case: nothing is held
            return None
        for key in hold_keys(item):
            found = self.blockers.get(key)
            if found is None:
                continue
            text, is_conflict = found
            if is_conflict or (item.mapping.spec.hold is not False and not ignore_letters):
                return text
        return None

    def park(self, item: MappedChange, text: str, is_conflict: bool = False) -> None:
        """From now on in this transaction, later changes of ``item``'s key wait behind ``text`` (a
        conflict opened now holds them even where parked letters hold nothing back)."""
        for key in hold_keys(item):
            if is_conflict:
                self.blockers[key] = (text, True)
            else:
                self.blockers.setdefault(key, (text, False))

    def resolved_by(self, items: list[MappedChange]) -> list[int]:
        """The open letters of keys these written changes made right (each id once)."""
        ids: list[int] = []
        if not self.letters:
            return ids
        for item in items:  # its own key only: a key change's old key may have letters of changes after it
            ids.extend(self.letters.pop(hold_key(item), ()))
        return ids


def mark_resolved(conn: Any, ids: list[int], note: str, now: Any) -> None:
    """Mark these dead letters resolved: a later change or a repair wrote their key."""
    if ids:
        letters = state.dead_letters
        conn.execute(letters.update().where(letters.c.id.in_(ids), letters.c.status.in_(_OPEN_LETTERS))
                     .values(status="resolved", resolved_at=now, note=note))
