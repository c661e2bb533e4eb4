"""What retry, discard and resolve share: the pair's claim, stored changes made Python values again,
what one apply transaction parked anew, and releasing the changes held behind a key."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
from decimal import Decimal
from typing import Any, Iterator

import sqlalchemy as sa

from .. import state
from ..apply import apply
from ..changes import Change, dumps
from ..config import Pair
from ..errors import ConfigError, RowError
from ..mapping import MappedChange, TableMapping, map_changes
from ._rows import Letter, letter_of

@contextlib.contextmanager
def claimed(pair: Pair, wait: bool, purpose: str) -> Iterator[Any]:
    """Hold the pair's claim for the block, as `cdc reconcile --repair` does (lease state per
    ``purpose``: retry, discard or resolve, see state.claims.STATES): ClaimHeldError (exit 3)
    naming the process that runs the pair, or with ``wait`` wait for it. Yields the target
    holding the claim."""
    from ..reconcile import claimed as claimed_as_repair

    with claimed_as_repair(pair, wait=wait, purpose=purpose) as target:
        yield target


def mapping_of(pair: Pair, mappings: dict[str, TableMapping], table: str) -> TableMapping:
    """The pair's current mapping of source ``table``; ConfigError when the mapping dropped it."""
    if table not in mappings:
        raise ConfigError(f"pair {pair.name}: source table {table} is no longer in the pair's mapping, so its "
                          "changes cannot be applied: discard them (`cdc dead-letters discard ID --reason ...`)")
    return mappings[table]


def revived(record: dict, source: Any, mapping: TableMapping) -> MappedChange:
    """A change as a dead letter or conflict stored it (JSON: numbers as text, bytes as base64),
    with its values typed again by the source columns, mapped with the pair's current mapping. A
    value the letter kept only as length and SHA-256 (too large for the target's statement limit)
    cannot be applied again: the change carries that as its error (it is parked again)."""
    columns = {c.name: c for c in source.describe(mapping.source).columns}
    key = tuple(_typed(v, columns.get(k)) for k, v in zip(mapping.source_key, record.get("key") or []))
    images = [None if image is None else {c: _typed(v, columns.get(c)) for c, v in image.items()}
              for image in (record.get("before"), record.get("after"))]
    change = Change(record["op"], mapping.source, key, images[0], images[1], None, record.get("position"),
                    record.get("txid"))
    omitted = [c for image in images if image for c, v in image.items() if isinstance(v, dict) and "$omitted" in v]
    if omitted:
        error = RowError("the dead letter kept only the length and SHA-256 of this value (too large for the "
                         "target's statement limit): retry it, which reads the source's current row",
                         table=mapping.source, key=key, column=omitted[0])
        return MappedChange(change, mapping, [], error)
    return map_changes([change], {mapping.source: mapping})[0]


def _typed(value: Any, column: sa.Column | None) -> Any:
    """A JSON value as the source column holds it: Decimal, datetime, date, time, bytes."""
    if isinstance(value, dict) and set(value) == {"$base64"}:
        return base64.b64decode(value["$base64"])
    if not isinstance(value, str) or column is None:
        return value
    kind = column.type
    try:
        if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float):
            return Decimal(value)
        if isinstance(kind, sa.DateTime):
            return dt.datetime.fromisoformat(value)
        if isinstance(kind, sa.Date):
            return dt.date.fromisoformat(value)
        if isinstance(kind, sa.Time):
            return dt.time.fromisoformat(value)
    except ValueError:
        return value  # as it was captured: the mapping or the target says what is wrong with it
    return value


class Marks:
    """The highest dead letter and conflict ids of a pair before an apply: what has a higher id was
    parked or opened by that apply (the claim is held, so nothing else writes them meanwhile)."""

    def __init__(self, target: Any, pair: str):
        self.pair = pair
        with target.reading() as conn:
            self.letter = _highest(conn, state.dead_letters, pair)
            self.conflict = _highest(conn, state.conflicts, pair)

    def new_letters(self, conn: sa.Connection) -> list[Letter]:
        letters = state.dead_letters
        rows = conn.execute(sa.select(letters).where(letters.c.pair == self.pair, letters.c.id > self.letter)
                            .order_by(letters.c.id))
        return [letter_of(row) for row in rows]

    def new_conflicts(self, conn: sa.Connection) -> list[tuple[int, str, str, str]]:
        """(id, source table, source key text, source position text) of each conflict opened since."""
        conflicts = state.conflicts
        return [tuple(r) for r in conn.execute(
            sa.select(conflicts.c.id, conflicts.c.source_table, conflicts.c.source_key, conflicts.c.source_position)
            .where(conflicts.c.pair == self.pair, conflicts.c.id > self.conflict).order_by(conflicts.c.id))]


def _highest(conn: sa.Connection, table: sa.Table, pair: str) -> int:
    return conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c.id), 0)).where(table.c.pair == pair)).scalar()


def set_letters(conn: sa.Connection, ids: list[int], **values: Any) -> None:
    """Change these dead letters (status, note, ...) in the caller's transaction."""
    if ids:
        conn.execute(state.dead_letters.update().where(state.dead_letters.c.id.in_(ids)).values(**values))


def write_audit(target: Any, conn: sa.Connection, rows: list[dict]) -> None:
    """Audit rows written by these commands themselves (a discard, a conflict kept as the target has it)."""
    from ..apply._records import write_records

    write_records(target, conn, rows, [], target.statement_limit(conn))


def audit_row(pair: str, source_table: str, target_table: str, op: str, reason: str, key: list,
              before: dict | None, after: dict | None, *, position: Any, txid: Any, decision: str, policy: str | None,
              detail: str) -> dict:
    """An audit row in the one shape the apply path writes (cdc/apply/_records.py)."""
    from ..apply._records import audit_row as shaped

    return shaped(pair, source_table, target_table, op, reason, dumps(list(key)),
                  None if before is None else dumps(before), None if after is None else dumps(after),
                  state._store.now(), dumps(position), None if txid is None else str(txid), None, decision, policy,
                  detail)


def release(target: Any, pair: Pair, source: Any, mappings: dict[str, TableMapping], held: list[Letter], why: str,
            *, reason: str, first: Any = None) -> dict:
    """Apply the ``held`` letters' changes in id order through the normal path (holds off: they
    were the head of their keys' queues; the pair's conflict policies decide, so they may conflict
    again), in ONE transaction, together with ``first(conn)`` (what released them). A change the
    target refuses is parked again as a new dead letter, and the later changes of its key are held
    behind it (never lost: a release parks rather than stops, whatever the pair's on_error).
    Returns {"applied", "parked", "conflicts"}; each released letter is marked ``retried`` with a
    note saying what became of it."""
    items = [revived(letter.change, source, mapping_of(pair, mappings, letter.source_table)) for letter in held]
    marks = Marks(target, pair.name)
    outcome: dict[str, int] = {}

    def finish(conn: sa.Connection) -> None:
        if first is not None:
            first(conn)
        _mark_released(conn, held, marks, why, outcome)

    target.prepare_tables(m.target for m in mappings.values())
    result = apply(target, pair.name, items, position=None, snapshot=None, on_error="park", reason=reason,
                   holds=False, finish=finish)
    return {"applied": result.applied, "parked": outcome.get("parked", 0), "conflicts": outcome.get("conflicts", 0)}


def _mark_released(conn: sa.Connection, held: list[Letter], marks: Marks, why: str, outcome: dict) -> None:
    """Each released letter ``retried``, noting what became of its change: parked again (a new dead
    letter), a new conflict, or released (applied, or decided otherwise: its audit row says). A new
    letter or conflict is told to be this change's by its key and source position."""
    found: dict[tuple, list[str]] = {}
    for letter in marks.new_letters(conn):
        found.setdefault((letter.source_table, letter.key_text, dumps(letter.change.get("position"))),
                         []).append(f"parked again as dead letter {letter.id}")
    for number, table, key, position in marks.new_conflicts(conn):
        found.setdefault((table, key, position), []).append(f"became conflict {number}")
    now = state._store.now()
    for letter in held:
        became = found.get((letter.source_table, letter.key_text, dumps(letter.change.get("position"))))
        what = became.pop(0) if became else "released through the normal path (its audit row says what was decided)"
        kind = "parked" if what.startswith("parked") else "conflicts" if what.startswith("became") else None
        if kind:
            outcome[kind] = outcome.get(kind, 0) + 1
        set_letters(conn, [letter.id], status="retried", resolved_at=now, note=f"{why}; {what}")


def chained(held_now: list[Letter], chosen: list[Letter], pair: Pair, mappings: dict) -> list[Letter]:
    """``chosen`` and, again and again, the held letters after one of them that touch a key it touches
    (its own key, or the old key of a key change), in id order: a key change moves its row, so the
    changes after it under either key are released with it, never left behind a change already gone."""
    def keys_of(letter: Letter) -> set[tuple[str, str]]:
        keys = {(letter.source_table, letter.key_text)}
        before = letter.change.get("before")
        mapping = mappings.get(letter.source_table)
        if before and mapping is not None and all(c in before for c in mapping.source_key):
            keys.add((letter.source_table, dumps([before[c] for c in mapping.source_key])))
        return keys

    out = {letter.id: letter for letter in chosen}
    first: dict[tuple[str, str], int] = {}
    for letter in out.values():
        for key in keys_of(letter):
            first[key] = min(first.get(key, letter.id), letter.id)
    grown = True
    while grown:
        grown = False
        for letter in held_now:
            if letter.id in out or not any(first.get(key, letter.id) < letter.id for key in keys_of(letter)):
                continue
            out[letter.id] = letter
            for key in keys_of(letter):
                first[key] = min(first.get(key, letter.id), letter.id)
            grown = True
    return sorted(out.values(), key=lambda letter: letter.id)
