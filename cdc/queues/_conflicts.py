"""`cdc conflicts resolve`: a change parked under policy ``manual`` decided by a person, and the changes
of its key held behind it released in order.

``--take source`` applies the stored change through the normal audited path with policy
``source_wins`` (the conflict is marked resolved in that transaction); ``--take target`` keeps the
target row, writes an audit row saying so (decision ``conflict``, policy ``manual``) and marks the
conflict resolved. Then the held changes are applied in id order under the table's own policy, so
they may conflict again: a new conflict, which is right. With ``--take target`` that is one
transaction; with ``--take source`` two (the source's change, then the release): a process that
stops between leaves the held changes held behind a resolved conflict, and running the same
`cdc conflicts resolve` again releases them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .. import state
from ..apply import apply
from ..config import Pair
from ..errors import CdcError, ConfigError, RowError
from ..pipeline import open_source
from ._applying import Marks, audit_row, chained, claimed, mapping_of, release, revived, set_letters, write_audit
from ._letters import Outcome
from ._rows import Conflict, read_conflicts, read_letters

TAKES = ("source", "target")


def resolve_conflict(pair: Pair, number: int, take: str, wait: bool) -> Outcome:
    """Resolve conflict ``number`` of ``pair`` by taking the source's change or keeping the target's row."""
    if take not in TAKES:
        raise ConfigError(f"--take {take!r}: take source or target")
    with claimed(pair, wait, "resolve") as target:
        source, mappings = open_source(pair, target)
        try:
            with target.reading() as conn:
                conflict = read_conflicts(conn, [pair.name], statuses=None, ids=[number])[0]
                held = _held_behind(conn, pair, mappings, conflict)
            why = f"released: conflict {number} was resolved"
            if conflict.status != "open":
                if not held:
                    raise ConfigError(f"conflict {number} is resolved already (took the {conflict.resolution})")
                done = release(target, pair, source, mappings, held, why, reason="resolve")
                return _outcome(conflict, f"conflict {number} was resolved already", held, done)
            if take == "source":
                _take_source(target, pair, source, mappings, conflict, held)
                done = release(target, pair, source, mappings, held, why, reason="resolve")
            else:
                first = _keep_target(target, pair, mappings, conflict)
                done = release(target, pair, source, mappings, held, why, reason="resolve", first=first)
        finally:
            source.close()
    taken = "the source's change applied" if take == "source" else "the target row kept"
    return _outcome(conflict, f"conflict {number} resolved: {taken}", held, done)


def _held_behind(conn: sa.Connection, pair: Pair, mappings: dict, conflict: Conflict) -> list:
    """The changes waiting behind this conflict, in id order: those it holds (a released change that
    conflicted again holds the later ones behind a conflict of its own), and the held changes after
    them of every key they touch (a key change moves its row: see chained)."""
    held_now = read_letters(conn, [pair.name], statuses=("held",))
    return chained(held_now, [h for h in held_now if h.blocked_by == f"conflict {conflict.id}"], pair, mappings)


def _outcome(conflict: Conflict, text: str, held: list, done: dict) -> Outcome:
    if held:
        text += (f"; {len(held)} held change(s) behind it released: {done['applied']} applied, "
                 f"{done['parked']} parked again, {done['conflicts']} conflict(s)")
    return Outcome(conflict.id, "resolved", text, [h.id for h in held])


def _take_source(target: Any, pair: Pair, source: Any, mappings: dict, conflict: Conflict, held: list) -> None:
    """Apply the conflict's change with policy source_wins, the conflict marked resolved in the same
    transaction; CdcError (the conflict stays open) when the target refuses it."""
    item = revived(conflict.change, source, mapping_of(pair, mappings, conflict.source_table))
    marks = Marks(target, pair.name)

    def finish(conn: sa.Connection) -> None:
        again = marks.new_letters(conn)
        if again:
            raise CdcError(f"conflict {conflict.id}: the source's change was not applied ({again[0].error}); the "
                           "conflict stays open")
        _resolved(conn, conflict, "source", "resolved: the source's change was applied")
        # The held changes wait for the release that follows, not for this change: what the apply
        # marked resolved (it wrote their key) is held again until they are applied in order.
        set_letters(conn, [h.id for h in held], status="held", resolved_at=None, note=None)

    target.prepare_tables(m.target for m in mappings.values())
    try:
        apply(target, pair.name, [item], position=None, snapshot=None, on_error="stop", reason="resolve",
              policy="source_wins", holds=False, finish=finish)
    except RowError as exc:
        raise CdcError(f"conflict {conflict.id}: the target refused the source's change, the conflict stays open: "
                       f"{exc.describe()}") from None


def _keep_target(target: Any, pair: Pair, mappings: dict, conflict: Conflict):
    """``first(conn)`` of the release: the audit row of the kept target row, the conflict resolved."""
    read = _target_row_reader(target, mappings, conflict)  # reflected now: not inside the write transaction

    def first(conn: sa.Connection) -> None:
        row = read(conn)
        write_audit(target, conn, [audit_row(
            pair.name, conflict.source_table or conflict.target_table, conflict.target_table,
            conflict.change.get("op", "update"), "resolve", conflict.key, row, row,
            position=conflict.source_position, txid=conflict.change.get("txid"), decision="conflict",
            policy="manual", detail="resolved: kept the target row")])
        _resolved(conn, conflict, "target", "resolved: kept the target row")

    return first


def _target_row_reader(target: Any, mappings: dict, conflict: Conflict):
    """``read(conn)``: the target row of the conflict's key as it is now (as the conflict found it
    when the mapping or the table is gone)."""
    from ..reconcile._keys import converted

    mapping = mappings.get(conflict.source_table)
    if mapping is None or not target.exists(conflict.target_table):
        return lambda conn: conflict.target_row
    table = target.table(conflict.target_table)
    key = converted(tuple(conflict.key), [table.c[k] for k in mapping.target_key])

    def read(conn: sa.Connection) -> dict | None:
        rows = target.read_rows(conn, conflict.target_table, mapping.target_key, [key]) if key is not None else []
        return {c: rows[0][c] for c in mapping.target_columns} if rows else None

    return read


def _resolved(conn: sa.Connection, conflict: Conflict, resolution: str, note: str) -> None:
    conflicts = state.conflicts
    conn.execute(conflicts.update().where(conflicts.c.id == conflict.id)
                 .values(status="resolved", resolution=resolution, resolved_at=state._store.now(), note=note))
