"""Repair: make the target equal to the source through the audited apply path, deleting only what
the source has no row for, while holding the pair's claim.

Why the claim: a repair reads a source row, then writes it. A `cdc run` that applied a newer change
to that row in between would have it overwritten with the older value, and its checkpoint has moved
past the change: lost for good. Holding the claim, nothing but the repair writes the pair's tables,
and a source change made after the repair's read lies after the pair's checkpoint, which the repair
does not move: the next `cdc run` applies it over the repaired row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import sqlalchemy as sa

from .. import state
from ..apply import apply
from ..changes import ApplyResult, Change, dumps
from ..config import Pair
from ..errors import CdcError, RowError
from ..mapping import MappedChange, TableMapping, TargetOp
from ..pipeline import open_pair, open_source, open_target
from ._canonical import canonical
from ._compare import read_only, target_columns
from ._journal import journal_columns
from ._keys import converted, paired
from ._report import ReconcileReport, TableReport
from ._side import Side, both

logger = logging.getLogger(__name__)


@dataclass
class RepairPlan:
    """The target operations that make the tables equal, the source row each upsert comes from,
    and the differing target rows a repair keeps because the source still has their key."""

    ops: list[TargetOp] = field(default_factory=list)
    #: Per op: (source table, source key, the source row as read) for an upsert; None for a delete.
    sources: list[tuple[str, tuple, dict] | None] = field(default_factory=list)
    #: {"table", "key", "why"} of each extra target row left in place.
    kept: list[dict] = field(default_factory=list)

    def describe(self, limit: int) -> list[dict]:
        """The first ``limit`` steps as plain data for the report."""
        steps = []
        for op, source in list(zip(self.ops, self.sources))[:limit]:
            step = {"op": op.op, "table": op.table, "key": list(op.key)}
            if source is None:
                step["why"] = "the source has no row with this key"
            else:
                step.update(source_table=source[0], source_key=list(source[1]), source_row=source[2])
            steps.append(step)
        return steps


def repair_plan(pair: Pair, report: ReconcileReport) -> RepairPlan:
    """Upsert missing and differing rows as the source has them now; delete an extra target row
    only after reading, by key and without --where, that the source has no row with its key (one the
    source has but the mapping's filter leaves out, or cannot map, is kept and listed)."""
    source, target, mappings = open_pair(pair)
    try:
        read_only(source)
        read_only(target)
        plan = RepairPlan()
        for table in report.tables:
            if table.keys:
                _plan_table(source, target, mappings[table.source_table], table, plan)
        return plan
    finally:
        source.close()
        target.close()


def _plan_table(source: Any, target: Any, mapping: TableMapping, table: TableReport, plan: RepairPlan) -> None:
    mine, theirs = _sides(source, target, mapping)
    pairs = dict(table.keys)
    # A key the source had no row for is looked up again now, as the comparison did.
    pairs.update(paired(mine, theirs, {text: (None, t) for text, (s, t) in pairs.items() if s is None}))
    _plan_pairs(mine, theirs, mapping, pairs, plan)


def plan_source_keys(source: Any, target: Any, mapping: TableMapping, keys: list[tuple], plan: RepairPlan) -> None:
    """Plan, as a repair would, the keys of these source rows (a dead letter's retry): upsert each
    as the source has it now, delete its target row when the source has no row with the key, and
    nothing where the target already holds the source's row."""
    mine, theirs = _sides(source, target, mapping)
    found = {}
    for key in keys:
        converted_key = converted(tuple(key), mine.key_columns)
        found[dumps(list(key))] = (converted_key if converted_key is not None else tuple(key), None)
    _plan_pairs(mine, theirs, mapping, paired(mine, theirs, found), plan)


def _sides(source: Any, target: Any, mapping: TableMapping) -> tuple[Side, Side]:
    columns = target_columns(target, mapping)
    return (Side(source, mapping.source, mapping.source_key, columns, None, mapping),
            Side(target, mapping.target, mapping.target_key, columns, None, journal=journal_columns(mapping)))


def _plan_pairs(mine: Side, theirs: Side, mapping: TableMapping, pairs: dict[str, tuple], plan: RepairPlan) -> None:
    """Plan each (source key, target key): both read now, by key."""
    columns = mine.target_columns
    present, held = both(lambda: mine.rows([s for s, _ in pairs.values() if s is not None]),
                          lambda: theirs.rows([t for _, t in pairs.values() if t is not None]))
    now = state._store.now()
    for source_key, target_key in pairs.values():
        row = present.get(mine.key_id(source_key)) if source_key is not None else None
        when = now  # a delete's time, for newest_wins: a soft delete's is its row's own stamp
        if row is not None and mapping.soft_delete and row.get(mapping.soft_delete):
            when = _stamp(mapping, row, source_key) or now
            row = None  # soft-deleted at the source (capture timestamp): deleted in the target too
        held_row = held.get(theirs.key_id(target_key)) if target_key is not None else None
        before = theirs.normalised(held_row) if held_row is not None else None
        if row is None:
            if before is not None:
                change = Change("delete", mapping.source, target_key, before, None, when, None, "repair")
                plan.ops.append(TargetOp("delete", mapping.target, mapping.target_key, target_key, None, change))
                plan.sources.append(None)
            continue
        image = mine.image(row)
        if image.row is None:
            if before is not None:
                why = (f"it cannot be mapped: column {image.error.column}: {image.error}" if image.error
                       else "the mapping's filter leaves the source row out")
                plan.kept.append({"table": mapping.target, "key": list(target_key),
                                  "why": f"the source has this key ({why}); not deleted"})
            continue
        _plan_upsert(plan, mine, mapping, columns, source_key, row, image.row, before, now)


def _stamp(mapping: TableMapping, row: dict, source_key: tuple) -> Any:
    """The newest_wins column of a source row as the target would hold it (None: no such column, or
    the row cannot be mapped)."""
    if mapping.spec.newest is None:
        return None
    try:
        return mapping.map_row(row, source_key).get(mapping.spec.newest)
    except RowError:
        return None


def _plan_upsert(plan: RepairPlan, mine: Side, mapping: TableMapping, columns: dict[str, sa.Column],
                 source_key: tuple, row: dict, mapped: dict, before: dict | None, now: dt.datetime) -> None:
    """Upsert the source's row unless the target already holds it (it settled meanwhile)."""
    if before is not None:
        same = {c for c, v in before.items() if canonical(v, columns[c]) == canonical(mapped[c], columns[c])}
        if len(same) == len(columns):
            return
        # The audit shows the target row before (what was wrong) and after (the source's, as mapped);
        # equal values written alike, so only real changes show.
        before = {c: mapped[c] if c in same else v for c, v in before.items()}
    key = tuple(mapped[k] for k in mapping.target_key)
    change = Change("update" if before is not None else "insert", mapping.source, source_key, before, mapped, now,
                    None, "repair")
    plan.ops.append(TargetOp("upsert", mapping.target, mapping.target_key, key, mapped, change))
    plan.sources.append((mapping.source, source_key, _read_by_mapping(mapping, row)))


def _read_by_mapping(mapping: TableMapping, row: dict) -> dict:
    """The source row's columns the mapping reads (key, copied, filtered on): a column it does not
    copy (an e-mail address, say) stays out of the plan, the report and cdc_reconcile_runs."""
    read = set(mapping.source_key) | {source for _, source, _ in mapping.column_specs() if source is not None}
    read |= {f.column for f in mapping.spec.filters}
    return {c: v for c, v in row.items() if c in read}


@contextlib.contextmanager
def claimed(pair: Pair, *, wait: bool = False, purpose: str = "repair") -> Iterator[Any]:
    """Hold the pair's claim as a repair (or another one-off ``purpose``: see state.claims.STATES)
    for the block; yields the target that holds it.

    ClaimHeldError (exit code 3) naming the holder when a live process runs the pair, or, with
    ``wait``, waits until it stops. The claim's heartbeat is kept up meanwhile; at the end the
    pair's claim row is put back as it was found.
    """
    target = open_target(pair.target)  # a missing SQLite target is an error here, not a new empty file
    try:
        _take(target, pair, wait, purpose)
        stop = threading.Event()
        beat = threading.Thread(target=_keep_up, args=(target, pair, stop), name=f"cdc-repair-claim-{pair.name}",
                                daemon=True)
        beat.start()
        try:
            yield target
        finally:
            stop.set()
            beat.join()
            target.release_claim(pair.name)
    finally:
        target.close()


def _take(target: Any, pair: Pair, wait: bool, purpose: str) -> None:
    while True:
        try:
            target.take_claim(pair.name, pair.claim_timeout, purpose=purpose)
            return
        except state.ClaimHeldError as exc:
            if not wait:
                raise
            logger.warning("%s; waiting", exc)
            time.sleep(min(pair.claim_timeout / 3, 5.0))


def _keep_up(target: Any, pair: Pair, stop: threading.Event) -> None:
    """Refresh the repair's claim every third of the claim timeout until ``stop``."""
    while not stop.wait(pair.claim_timeout / 3):
        try:
            if not target.heartbeat(pair.name, pair.claim_timeout):
                logger.error("pair %s: another process took the pair; the repair writes nothing more", pair.name)
                return
        except (sa.exc.SQLAlchemyError, CdcError) as exc:  # busy or away: the next beat tries again
            logger.debug("pair %s: repair claim heartbeat failed: %s", pair.name, exc)


def apply_repair(pair: Pair, plan: RepairPlan, target: Any) -> ApplyResult:
    """Apply the plan through the normal apply path (audited with reason ``repair``) on ``target``,
    which holds the pair's claim (see ``claimed``): the write is fenced by it, so a repair that lost
    the pair writes nothing (ClaimLostError). The pair's checkpoint is not touched. Returns what the
    apply did: the operations written, parked, and those the tables' policies left alone."""
    if not plan.ops:
        return ApplyResult(0, 0)
    source, mappings = open_source(pair, target)
    try:
        by_target = {m.target: m for m in mappings.values()}
        mapped = [MappedChange(op.change, by_target[op.table], [op]) for op in plan.ops]
        target.prepare_tables(by_target)
        return apply(target, pair.name, mapped, position=None, snapshot=None, on_error=pair.on_error,
                     reason="repair")
    finally:
        source.close()
