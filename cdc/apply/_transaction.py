"""The one target transaction: rows, audit rows, dead letters and the claim-fenced checkpoint commit together."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

import sqlalchemy as sa

from .. import state
from ..changes import ApplyResult, Position
from ..errors import RetryableError, RowError, TargetError
from ..mapping import MappedChange
from ._records import audit_rows, dead_letter, snapshot_row, write_records
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


def apply(target: Any, pair: str, mapped: list[MappedChange], *, position: Position, snapshot: dict | None,
          on_error: str, reason: str = "change", tables: dict[str, dict | None] | None = None) -> ApplyResult:
    """Write rows, audit, dead letters and checkpoint in ONE transaction (see apply_parts)."""
    return apply_parts(target, pair, lambda: [mapped], position=lambda: position, snapshot=snapshot,
                       on_error=on_error, reason=reason, tables=tables)


def apply_parts(target: Any, pair: str, parts: Callable[[], Iterable[list[MappedChange]]], *,
                position: Callable[[], Position], snapshot: dict | None, on_error: str,
                reason: str = "change", tables: dict[str, dict | None] | None = None) -> ApplyResult:
    """Write parts of a batch one after another into ONE transaction, then the checkpoint.

    ``parts()`` yields the batch in parts (a large source transaction need not fit in memory);
    ``position()`` is read after the last part. When no part holds a change, nothing is written.
    A row the database rejects makes the whole batch roll back and run again from ``parts()``
    one change per savepoint, so the bad change is parked (or stops the pair) alone. The
    checkpoint stores ``snapshot`` (progress of tables being copied) and ``tables`` (the streamed
    ones with their mapping identities; None keeps the stored ones). ``reason`` ``repair``: the
    claim is checked first and no checkpoint is written. Idempotent only with the checkpoint
    check. RetryableError: a passing fault, nothing committed; TargetError, RowError (``on_error``
    stop) and ClaimLostError stop the pair.
    """
    try:
        return _transaction(target, pair, parts(), position, snapshot, on_error, reason, False, tables)
    except sa.exc.DBAPIError as exc:
        if target.classify(exc) != "row":
            raise _translate(target, exc) from None
    try:
        return _transaction(target, pair, parts(), position, snapshot, on_error, reason, True, tables)
    except sa.exc.DBAPIError as exc:
        raise _translate(target, exc) from None


def _translate(target: Any, exc: sa.exc.DBAPIError) -> Exception:
    text = str(exc.orig).strip()
    return RetryableError(f"target: {text}") if target.classify(exc) == "retry" else TargetError(f"target: {text}")


def _transaction(target: Any, pair: str, parts: Iterable[list[MappedChange]], position: Callable[[], Position],
                 snapshot: dict | None, on_error: str, reason: str, isolate: bool,
                 tables: dict[str, dict | None] | None) -> ApplyResult:
    applied = parked_count = seen = 0
    writes = writes_for(target)

    def reject(item: MappedChange, error: RowError, parked: list) -> None:
        error.table, error.key = error.table or item.mapping.target, error.key or item.change.key
        if on_error == "stop":
            raise error
        parked.append((item, error))

    with checkpointing(target, pair) as (conn, write_checkpoint):
        if reason == "repair":
            # A repair moves no checkpoint but holds the pair's claim (see cdc/state/_claims.py):
            # fenced first, so a repair that lost the pair to a run writes nothing, and a run
            # taking the pair waits for this transaction.
            state.claims.fence(conn, target.claim(pair))
        committed_at = None
        limit = target.statement_limit(conn)
        for mapped in parts:
            seen += len(mapped)
            done, parked = writes.write_part(conn, mapped, isolate, reject, limit)
            now = state._store.now()
            write_records(target, conn, audit_rows(pair, done, reason, now),
                          [dead_letter(pair, item, error, now, reason) for item, error in parked], limit)
            applied, parked_count = applied + len(done), parked_count + len(parked)
            committed_at = next((m.change.committed_at for m in reversed(mapped) if m.change.committed_at),
                                committed_at)
        if (seen or reason == "snapshot") and reason != "repair":
            write_checkpoint(position(), snapshot, applied if reason != "snapshot" else 0, committed_at,
                             tables=tables)
    return ApplyResult(applied, parked_count)


def advance(target: Any, pair: str, position: Position, *, snapshot: dict | None = None,
            tables: dict[str, dict | None] | None = None) -> None:
    """Move the checkpoint past source transactions that held nothing for this pair (or record a
    changed set of tables), keeping ``snapshot`` progress; idempotent. Errors as the target raises
    them (a passing fault is the caller's to retry); ClaimLostError stops the pair."""
    with checkpointing(target, pair) as (_, write):
        write(position, snapshot, 0, tables=tables)


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
