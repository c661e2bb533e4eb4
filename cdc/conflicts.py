"""Conflict policies: a target row that changed since this pair last wrote it, and what wins.

What this pair last wrote is the change's before image, mapped (trigger, binlog, and logical with
REPLICA IDENTITY FULL), or else the hash of the row it wrote, kept in cdc_row_hashes (capture
timestamp). A target row equal to the change's new row is no conflict (already so). Every
conflict gets an audit row, whatever the policy: the target row as it was found is its before image.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from .changes import Row
from .errors import RowError
from .mapping import NOT_WHOLE, MappedChange

#: What a missing target row means, per op: (the table setting, its default action).
_MISSING = {"upsert": "update_missing", "delete": "delete_missing"}


def decide(item: MappedChange, ctx: Any, rows: Any, decided: Any) -> bool:
    """Whether ``item`` is written; sets its note, and records what was decided in ``decided``
    (``ctx``, ``rows``, ``decided``: the apply's Context, TargetRows and Decided)."""
    spec = item.mapping.spec
    item.note = None  # decided anew when a transaction runs again: what its first run noted no longer holds
    if not item.ops or not (spec.detect or ctx.reason == "repair"):
        rows.wrote(item)
        return True
    op = item.ops[-1]
    if op.op == "insert":  # decided before, in a transaction that ran again: an upsert as mapped
        op = item.ops[-1] = op._replace(op="upsert")
    if len(item.ops) == 1 and not spec.row_hashes and ctx.reason != "repair" and rows.as_left(item, op):
        return True  # the common case, in short: the target row is the change's before image
    moved = _moved_away(item, ctx, rows) if len(item.ops) > 1 and item.ops[0].op == "delete" else None
    if moved is not None:  # a key change, whose row under the old key a person changed
        return _conflict(item, ctx, rows, decided, *moved)
    read, found = rows.current(op)
    written = _decide(item, ctx, rows, decided, op, read, found)
    if written and read and found is None and op.op == "upsert":
        # A row read as missing is inserted, not upserted: should someone insert that key between the
        # read and the write, the INSERT fails, the transaction runs again, and its read finds the row.
        item.ops[-1] = op._replace(op="insert")
    return written


def _decide(item: MappedChange, ctx: Any, rows: Any, decided: Any, op: Any, read: bool, found: Row | None) -> bool:
    """``decide`` for a change of a table with detection (or a repair), whose last ``op`` met ``found``."""
    spec = item.mapping.spec
    repair = ctx.reason == "repair"
    new = op.row if op.op == "upsert" else None
    if new is not None and spec.touches and not repair and rows.stored_hash(op) == rows.row_hash(item, new):
        decided.skipped += 1  # no mapped column changed since this pair wrote the row (capture timestamp)
        return False
    if not read:
        rows.wrote(item)
        return True
    if repair:  # a repair expects nothing: any row it would change is the target's own
        if found is None and new is not None and spec.update_missing != "insert":
            return _missing(item, ctx, rows, decided, op)  # a row the target lacks, as its table says
        if found is None or rows.same(item, found, new):
            rows.wrote(item)
            return True
        return _conflict(item, ctx, rows, decided, found, rows.differences(item, found, new))
    expected = _expected(item, rows, op)
    # As this pair left it (the common case, asked first), nothing tells otherwise, or already so.
    if expected is _UNKNOWN or (expected is not _CHANGED and rows.same(item, found, expected)) \
            or (found is not None and rows.same(item, found, new)) or _left_so(item, rows, op, found, expected):
        rows.wrote(item)
        return True
    if found is None and expected is not None:
        return _missing(item, ctx, rows, decided, op)
    if expected is _CHANGED and new is not None and rows.stored_hash(op) == rows.row_hash(item, new):
        # No mapped column changed since this pair wrote the row (an update of unmapped columns only,
        # told without a before image): nothing to write over the person's edit, as with one.
        decided.skipped += 1
        return False
    return _conflict(item, ctx, rows, decided, found, _differences(item, rows, found, expected))


_UNKNOWN, _CHANGED = object(), object()


def _moved_away(item: MappedChange, ctx: Any, rows: Any) -> tuple[Row, str] | None:
    """For a change that moves its row to another key (its first op deletes the old key): the row
    under the old key and what differs, when it is not the row this pair last wrote there."""
    first = item.ops[0]
    read, found = rows.current(first)
    if not read or found is None or ctx.reason == "repair":
        return None
    expected = _expected(item, rows, first)
    if expected is _UNKNOWN or expected is None or (expected is not _CHANGED and rows.same(item, found, expected)):
        return None
    return found, f"the row under the old key {list(first.key)}: {_differences(item, rows, found, expected)}"


def _differences(item: MappedChange, rows: Any, found: Row | None, expected: Any) -> str:
    """In words, how the target row differs from the row this pair last wrote (``expected``)."""
    if expected is _CHANGED:
        return "the target row changed since this pair wrote it (its row hash differs)"
    return rows.differences(item, found, expected)


def _left_so(item: MappedChange, rows: Any, op: Any, found: Row | None, expected: Any) -> bool:
    """Whether the target row is as this pair left it although the before image says otherwise: an
    earlier change of the key was parked or discarded, so the target never got the row the before
    image shows (the hash of the row it did get is kept for such keys: see divergences)."""
    if expected is _CHANGED or item.mapping.spec.row_hashes or found is None:
        return False
    stored = rows.divergent_hash(op)
    return stored is not None and rows.row_hash(item, found) == stored


def _expected(item: MappedChange, rows: Any, op: Any) -> Any:
    """The row this pair last wrote with ``op``'s key (None: no row); _UNKNOWN when nothing tells;
    by row hash, the row found itself when its hash is the one stored, else _CHANGED."""
    if item.change.op == "insert":
        return None
    # Under capture timestamp a delete's "before" is the soft-deleted row as it is now: only the hash tells.
    if not item.mapping.spec.row_hashes:
        before = item.before_row()
        if before is not NOT_WHOLE:
            return before
    stored = rows.stored_hash(op)
    if stored is None:  # a row the pair never wrote (or deleted), where it knows every row it wrote
        return None if rows.whole(op.table) else _UNKNOWN
    _, found = rows.current(op)
    return found if rows.row_hash(item, found) == stored else _CHANGED


def _missing(item: MappedChange, ctx: Any, rows: Any, decided: Any, op: Any) -> bool:
    """An update or delete whose target row is gone: the table's update_missing / delete_missing."""
    setting = _MISSING[op.op]
    action = getattr(item.mapping.spec, setting)
    if action == "conflict":
        return _conflict(item, ctx, rows, decided, None, "the target row is missing")
    if action == "insert":
        item.note = ("applied", f"{setting}: insert", "the target row was missing: inserted", None)
        rows.wrote(item)
        return True
    item.note = ("skipped", f"{setting}: skip", "the target row was missing: nothing to "
                 + ("update" if op.op == "upsert" else "delete"), None)
    decided.unwritten.append(item)
    return False


def _conflict(item: MappedChange, ctx: Any, rows: Any, decided: Any, found: Row | None, detail: str) -> bool:
    spec = item.mapping.spec
    policy = ctx.policy or spec.conflict or "source_wins"
    repair = ctx.reason == "repair"
    if policy == "source_wins":
        if repair:  # the target made equal, over a row that differed: audited as the conflict it is
            decided.conflicted += 1
            # A repair cannot tell a person's edit from a change the pair never got: it says so.
            item.note = ("conflict", policy, f"the target row differs from the source's (a person's edit, or a change "
                                             f"this pair never got): {detail}; a repair made it as the source has it",
                         found)
            rows.wrote(item)
            return True
        if ctx.reason == "resolve":  # a person took the source's side of a manual conflict
            item.note = ("resolved", "manual: source", f"{detail}; the source's change was applied", found)
            rows.wrote(item)
            return True
        decided.conflicted += 1
        item.note = ("conflict", policy, f"{detail}; the source's change was applied", found)
        rows.wrote(item)
        return True
    if policy == "newest_wins":
        source_time, target_time = _times(item, found, spec.newest)
        newer = target_time is None or (source_time is not None and _newer_or_same(source_time, target_time,
                                                                                  spec.newest))
    decided.conflicted += 1
    if policy == "newest_wins":
        if newer:
            item.note = ("conflict", f"newest_wins: {spec.newest}",
                         f"{detail}; the source's change is as new or newer ({_when(source_time)} >= {_when(target_time)}): "
                         "applied",
                         found)
            rows.wrote(item)
            return True
        item.note = ("conflict", f"newest_wins: {spec.newest}",
                     f"{detail}; the target row is newer ({_when(target_time)} > {_when(source_time)}): kept", found)
    elif policy == "target_wins":
        item.note = ("conflict", policy, f"{detail}; the target row was kept", found)
    elif repair:  # a repair's images are target rows, not a change `cdc conflicts resolve` could apply
        item.note = ("conflict", "manual", f"{detail}; a repair leaves it to a person (policy manual): not written",
                     found)
    else:
        item.note = ("conflict", "manual", f"{detail}; parked: `cdc conflicts resolve` decides", found)
        ctx.holds.park(item, f"conflict {ctx.open_conflict(item, found)}", True)
    decided.unwritten.append(item)
    return False


def _times(item: MappedChange, found: Row | None, column: str) -> tuple[Any, Any]:
    """(the source's time, the target row's time) of a newest_wins conflict, comparable."""
    op = item.ops[-1]
    source = op.row.get(column) if op.row is not None else item.change.committed_at
    if source is None and op.row is None:  # capture timestamp: a soft delete's time is its deleted row's own
        before = item.before_image()
        source = None if before is None else before.get(column)
    target = None if found is None else found.get(column)
    if _naive(source) and _naive(target):
        return source, target  # both wall-clock times of one convention: compared as they are
    zone = ZoneInfo(item.mapping.source_zone)  # a zone-less time is in the pair's source_timezone
    return _instant(source, zone), _instant(target, zone)


def _newer_or_same(source: Any, target: Any, column: str) -> bool:
    """Whether the source's time is at least the target row's; RowError (parked, or the pair stops)
    where they cannot be compared (a text column of a SQLite table declared with a type of no
    affinity to time, say) rather than a traceback that names no row."""
    try:
        return bool(source >= target)
    except TypeError:
        raise RowError(f"newest_wins cannot tell which is newer: the source's {column} is {type(source).__name__} "
                       f"{source!r}, the target row's is {type(target).__name__} {target!r}; make the target column "
                       "a TIMESTAMP/DATETIME of the same kind as the source's, or name another column",
                       column=column) from None


def _when(value: Any) -> str:
    return "NULL" if value is None else str(value)


def _naive(value: Any) -> bool:
    return isinstance(value, dt.datetime) and value.tzinfo is None


def _instant(value: Any, zone: dt.tzinfo) -> Any:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=zone)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=zone)
    return value
