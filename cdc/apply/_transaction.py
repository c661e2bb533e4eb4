"""The one target transaction: rows, audit rows, dead letters and the claim-fenced checkpoint commit together."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

import sqlalchemy as sa

from .. import state
from ..changes import ApplyResult, Position, dumps
from ..errors import RetryableError, RowError, TargetError
from ..mapping import MappedChange
from ._decide import Context, decide
from ._holds import Holds, mark_resolved
from ._records import audit_rows, dead_letter, parked_audit_rows, snapshot_row, write_records
from ._target_rows import divergences, settle_hashing, store_hashes
from ._writes import writes_for

#: ``write(position, snapshot, applied, committed_at=None, tables=None)``: the checkpoint of a transaction.
WriteCheckpoint = Callable[..., None]


@contextlib.contextmanager
def checkpointing(target: Any, pair: str | None) -> Iterator[tuple[Any, WriteCheckpoint]]:
    """A target transaction whose checkpoint write is fenced by this process's claim of ``pair``.

    Yields ``(conn, write)``. The claim learns the outcome: committed, or uncertain when the
    COMMIT itself failed. ``pair`` None: a transaction that writes no checkpoint, whose ``write``
    refuses. ClaimLostError (stop) when this process does not hold the pair, or lost it.
    """
    claim, written = (None if pair is None else target.claim(pair)), []

    def write(position: Position, snapshot: dict | None, applied: int, committed_at=None, tables=None) -> None:
        if claim is None:
            raise TypeError("this transaction writes no checkpoint")
        written.append(state.write_checkpoint(conn, claim, position, snapshot, applied, committed_at=committed_at,
                                              tables=tables))

    try:
        with target.begin() as conn:
            yield conn, write
    except BaseException:
        for texts in written:
            state.claims.uncertain(claim, texts)
        raise
    if written:
        state.claims.committed(claim, written[-1])


#: Reasons that move no checkpoint: they hold the pair's claim while they write (see _transaction).
NO_CHECKPOINT = ("repair", "retry", "resolve")


def apply(target: Any, pair: str, mapped: list[MappedChange], *, position: Position, snapshot: dict | None,
          on_error: str, reason: str = "change", tables: dict[str, dict | None] | None = None,
          policy: str | None = None, holds: bool = True, finish: Callable[[Any], None] | None = None) -> ApplyResult:
    """Write rows, audit, dead letters and checkpoint in ONE transaction (see apply_parts)."""
    return apply_parts(target, pair, lambda: [mapped], position=lambda: position, snapshot=snapshot,
                       on_error=on_error, reason=reason, tables=tables, policy=policy, holds=holds, finish=finish)


def apply_parts(target: Any, pair: str, parts: Callable[[], Iterable[list[MappedChange]]], *,
                position: Callable[[], Position], snapshot: dict | None, on_error: str,
                reason: str = "change", tables: dict[str, dict | None] | None = None, policy: str | None = None,
                holds: bool = True, finish: Callable[[Any], None] | None = None) -> ApplyResult:
    """Decide, then write parts of a batch one after another into ONE transaction, then the checkpoint.

    ``parts()`` yields the batch in parts (a large source transaction need not fit in memory);
    ``position()`` is read after the last part. When no part holds a change, nothing is written.
    Each part is decided first (cdc/apply/_decide.py: holds, skips, rules, conflicts, ledger). A row
    the database rejects makes the whole batch roll back and run again from ``parts()`` one change
    per savepoint, so the bad change is parked (or stops the pair) alone. The checkpoint stores
    ``snapshot`` (progress of tables being copied) and ``tables`` (the streamed ones with their
    mapping identities; None keeps the stored ones). ``reason`` repair, retry or resolve: the claim
    is checked first and no checkpoint is written. ``policy`` decides every conflict (None: each
    table's own); ``holds`` False: parked changes hold no key back (a retry carries the head of its
    key's queue); ``finish(conn)`` runs in the transaction after the writes. Idempotent only with
    the checkpoint check. RetryableError: a passing fault, nothing committed; TargetError, RowError
    (``on_error`` stop) and ClaimLostError stop the pair.
    """
    options = (position, snapshot, on_error, reason, tables, policy, holds, finish)
    try:
        return _transaction(target, pair, parts(), *options, isolate=False)
    except sa.exc.DBAPIError as exc:
        if target.classify(exc) != "row":
            raise _translate(target, exc) from None
    try:
        return _transaction(target, pair, parts(), *options, isolate=True)
    except sa.exc.DBAPIError as exc:
        raise _translate(target, exc) from None


def _translate(target: Any, exc: sa.exc.DBAPIError) -> Exception:
    text = str(exc.orig).strip()
    return RetryableError(f"target: {text}") if target.classify(exc) == "retry" else TargetError(f"target: {text}")


def _transaction(target: Any, pair: str, parts: Iterable[list[MappedChange]], position: Callable[[], Position],
                 snapshot: dict | None, on_error: str, reason: str, tables: dict[str, dict | None] | None,
                 policy: str | None, holds: bool, finish: Callable[[Any], None] | None, *,
                 isolate: bool) -> ApplyResult:
    counts = {"applied": 0, "parked": 0, "skipped": 0, "conflicts": 0}
    by_op: dict[str, int] = {}
    seen = 0
    writes = writes_for(target)

    def reject(item: MappedChange, error: RowError, parked: list) -> None:
        error.table, error.key = error.table or item.mapping.target, error.key or item.change.key
        if on_error == "stop" and error.kind != "held":
            raise error
        parked.append((item, error))

    with checkpointing(target, pair) as (conn, write_checkpoint):
        if reason in NO_CHECKPOINT:
            # A repair moves no checkpoint but holds the pair's claim (see cdc/state/_claims.py):
            # fenced first, so a repair that lost the pair to a run writes nothing, and a run
            # taking the pair waits for this transaction.
            state.claims.fence(conn, target.claim(pair))
        context = Context(pair, reason, policy, holds,
                          Holds() if reason == "snapshot" else Holds.load(conn, pair, reason != "resolve"), conn)
        committed_at = None
        limit = target.statement_limit(conn)

        def one(mapped: list[MappedChange]) -> None:
            parked: list = []
            decided = decide(conn, target, context, mapped, lambda item, error: reject(item, error, parked))
            done, refused = _write_vouchers_whole(conn, writes, decided.write, isolate, reject, limit)
            for item, _ in refused:  # the target refused it: later parts' changes of its key wait too
                context.holds.park(item, "a change of the same key the target refused in this transaction")
            parked += refused
            _record(target, conn, pair, reason, context, decided, done, _in_order(mapped, done + decided.unwritten),
                    parked, limit)
            for name, count in (("applied", len(done)), ("parked", len(parked)), ("skipped", decided.skipped),
                                ("conflicts", decided.conflicted)):
                counts[name] += count
            for item in done:
                by_op[item.change.op] = by_op.get(item.change.op, 0) + 1

        # A voucher is weighed whole: the changes of tables with `balance` wait for the transaction's
        # last part (a source transaction larger than batch_size comes in parts), then go together.
        weighed: list[MappedChange] = []
        for mapped in parts:
            seen += len(mapped)
            if reason != "snapshot" and any(m.mapping.spec.balance is not None for m in mapped):
                weighed += [m for m in mapped if m.mapping.spec.balance is not None]
                mapped = [m for m in mapped if m.mapping.spec.balance is None]
            one(mapped)
            committed_at = next((m.change.committed_at for m in reversed(mapped) if m.change.committed_at),
                                committed_at)
        if weighed:
            one(weighed)
            committed_at = next((m.change.committed_at for m in reversed(weighed) if m.change.committed_at),
                                committed_at)
        if finish is not None:
            finish(conn)
        if (seen or reason == "snapshot") and reason not in NO_CHECKPOINT:
            write_checkpoint(position(), snapshot, counts["applied"] if reason != "snapshot" else 0, committed_at,
                             tables=tables)
    return ApplyResult(**counts, by_op=by_op, committed_at=committed_at)


def _write_vouchers_whole(conn: Any, writes: Any, items: list[MappedChange], isolate: bool, reject: Callable,
                          limit: int | None) -> tuple[list[MappedChange], list]:
    """``writes.write_part``, where a voucher the target refused a posting of is never written half:
    its other postings are taken back (the part is written again without them) and parked with it."""
    if not isolate or not any(item.mapping.spec.balance is not None for item in items):
        return writes.write_part(conn, items, isolate, reject, limit)
    from . import _rules  # only pairs with bookkeeping rules need them

    savepoint = conn.begin_nested()
    done, refused = writes.write_part(conn, items, isolate, reject, limit)
    halves = _rules.halves(done, refused)
    if not halves:
        savepoint.commit()
        return done, refused
    savepoint.rollback()
    for item, error in halves:
        reject(item, error, refused)
    out = {id(item) for item, _ in refused}
    done, again = writes.write_part(conn, [item for item in items if id(item) not in out], isolate, reject, limit)
    return done, refused + again


def _in_order(mapped: list[MappedChange], items: list[MappedChange]) -> list[MappedChange]:
    """``items`` in the order their changes came (the audit trail's order)."""
    order = {id(item): i for i, item in enumerate(mapped)}
    return sorted(items, key=lambda item: order[id(item)])


def _record(target: Any, conn: Any, pair: str, reason: str, context: Context, decided: Any, done: list[MappedChange],
            decided_items: list[MappedChange], parked: list, limit: int | None) -> None:
    """A part's records: audit rows of what was written, decided or parked, dead letters, conflicts,
    row hashes, and the dead letters of keys the written changes made right."""
    now = state._store.now()
    audit = audit_rows(pair, decided_items, reason, now) + parked_audit_rows(pair, parked, reason, now)
    write_records(target, conn, audit, [dead_letter(pair, item, error, now, reason) for item, error in parked], limit)
    written = {id(item) for item in done}
    hashes = {(name, digest): row_hash for (item_id, name, digest), row_hash in decided.hashes.items()
              if item_id in written}
    hashes.update(divergences(target, parked))
    if hashes:
        store_hashes(target, conn, pair, hashes)
    if reason != "snapshot":
        resolved = context.holds.resolved_by(done)
        where = done[-1].change.position if done else None
        mark_resolved(conn, resolved, f"made right by a later {reason} (source position {dumps(where)}) at {now}", now)


def advance(target: Any, pair: str, position: Position, *, snapshot: dict | None = None,
            tables: dict[str, dict | None] | None = None) -> None:
    """Move the checkpoint past source transactions that held nothing for this pair (or record a
    changed set of tables), keeping ``snapshot`` progress; idempotent. Errors as the target raises
    them (a passing fault is the caller's to retry); ClaimLostError stops the pair."""
    with checkpointing(target, pair) as (_, write):
        write(position, snapshot, 0, tables=tables)


def settle_row_hashes(target: Any, pair: str, hashed: list[str], unhashed: list[str]) -> list[str]:
    """At the start of a run: the tables whose conflicts are found by row hash marked so, and the
    hashes of tables no longer found so (detection off, or a capture that now gives whole before
    images) dropped: the pair writes those without hashes from here, so kept they would go stale,
    and once hashing is on again would mark rows the pair wrote itself as a person's. Fenced by
    the pair's claim; returns the tables whose hashes were dropped."""
    with target.begin() as conn:
        state.claims.fence(conn, target.claim(pair))
        return settle_hashing(conn, pair, hashed, unhashed)


def bulk_snapshot(target: Any, pair: str, source_table: str, table: str, columns: list[str], key: tuple[str, ...],
                  copy_out: Callable, position: Any, finish: Callable, direct: bool = False,
                  fmt: str = "binary") -> int:
    """One snapshot chunk as COPY data (see Target.bulk_load), in ONE transaction with one audit
    row and the checkpoint; returns the rows copied. ``finish(count, last_key)`` is called inside
    the transaction (again on a retry) and returns the snapshot progress and the streamed tables
    to store with the checkpoint. The target's errors are raised as they are: the caller tells a
    refused row (then copies the chunk row by row) from a passing fault."""
    with checkpointing(target, pair) as (conn, write_checkpoint):
        count, last = target.bulk_load(conn, table, columns, key, copy_out, direct=direct, fmt=fmt)
        summary = {"rows": count, "last_key": last}
        row = snapshot_row(pair, source_table, table, last or [], summary, state._store.now())
        write_records(target, conn, [row], [], target.statement_limit(conn))
        snapshot, tables = finish(count, last)
        write_checkpoint(position, snapshot, 0, tables=tables)
    return count
