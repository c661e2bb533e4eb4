"""The contracts every adapter fulfils: the Source and Target protocols and the records they share.

Errors: RetryableError means "try again with back-off" (lock, lost connection);
RowError concerns one row (parked or fatal by the pair's on_error); every other
CdcError stops the pair with its message.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol

import sqlalchemy as sa

from cdc import state
from cdc.changes import ApplyResult, Batch, Position, Row
from cdc.mapping import MappedChange

@dataclass(frozen=True)
class TableInfo:
    """A table as reflected: its columns (SQLAlchemy Column objects) and primary key."""

    name: str
    columns: list[sa.Column]
    primary_key: tuple[str, ...]

    @property
    def column_names(self) -> list[str]:
        return [str(c.name) for c in self.columns]  # plain str: reflected names are str subclasses


class Source(Protocol):
    """Reads committed changes from one source database for one pair."""

    def describe(self, table: str) -> TableInfo:
        """The table's columns and primary key; SchemaError if it does not exist."""

    def watch(self, keys: dict[str, tuple[str, ...]]) -> None:
        """The tables to capture and their key columns; call before any other method but describe."""

    def prepare(self, keep: Iterable[str] = ()) -> list[str]:
        """Install what capture needs (idempotent); returns what it created. ``keep``: tables no
        longer in the pair whose capture stays, because the pair's checkpoint still streams them
        (see cdc.commands.install): taken down, their changes would be lost if they come back."""

    def unprepare(self) -> list[str]:
        """Remove what prepare installed for this pair and nothing else (idempotent)."""

    def current_position(self) -> Position:
        """The position a snapshot taken now joins the stream at (no gap, no loss)."""

    def begin_snapshot(self) -> Position:
        """Like current_position, for a first snapshot; a source that can make its snapshot reads
        see exactly that position (no overlap either) holds it until end_snapshot."""

    def end_snapshot(self) -> None:
        """Release what begin_snapshot holds (idempotent)."""

    def join_stream(self, position: Position, tables: list[str]) -> Position:
        """The stream position from which ``tables`` (watched, but not yet copied: the first
        snapshot, or tables added to a streaming pair) are captured too: their changes after the
        returned position are streamed, so a snapshot of them read after this call, with those
        changes applied over it, gives their current rows. Idempotent; SourceError naming
        `cdc install CONFIG` when capture does not cover them yet (nothing may be copied then)."""

    def uncaptured(self, tables: list[str]) -> list[str]:
        """The ones of ``tables`` whose changes capture does not see (trigger capture: not
        registered by `cdc install`, or a capture trigger missing, attached to another table or
        disabled; logical: not in the pair's publication); [] when it sees
        every table's changes. Read-only and idempotent (`cdc status` asks it); RetryableError
        on a passing fault."""

    def snapshot(self, table: str, key: tuple[str, ...], after_key: tuple | None, limit: int) -> list[Row]:
        """Up to ``limit`` rows after ``after_key`` in key order; short transactions, no long lock."""

    def read(self, after: Position, max_changes: int) -> Batch:
        """Committed changes after ``after`` in commit order, ending on a transaction boundary."""

    def stream(self, after: Position, max_changes: int) -> Iterator[Batch]:
        """Like read, in parts a large transaction is split into (bounded memory); the last part is complete."""

    def pending(self, after: Position) -> int | str | None:
        """How many changes wait after ``after``, or a description of the backlog (None: cannot tell)."""

    def format_position(self, position: Position) -> str:
        """A position as the database's own people write it (an LSN as X/Y, a changelog id)."""

    def acknowledge(self, position: Position) -> None:
        """Release what the target has committed up to ``position`` (idempotent)."""

    def generation(self) -> str | None:
        """The identity of the capture installation this source reads, which `cdc install` makes anew
        whenever it re-creates the changelog or slot (None when the mode installs nothing that could be
        re-created, e.g. timestamp polling); read-only and idempotent; SourceError if capture is not
        installed, RetryableError on a passing fault."""

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """SourceError naming the fix (`cdc run --resnapshot CONFIG`) when ``position`` cannot be a
        position of this installation (ahead of the newest position the source has issued, or a log
        that no longer holds it) or lies behind what the source has already released (a purged
        changelog, a slot confirmed past it: a target restored from a backup). ``written_at``: when the
        checkpoint was committed, for a capture that can tell a source restored from an older copy by
        it (SQLite's changelog). Read-only and idempotent; RetryableError on a passing fault."""

    def diagnose(self) -> list[tuple[str, str]]:
        """Findings (level ok|info|warn|fail, text with the fix) about the source's settings; read-only."""

    def warnings(self) -> list[tuple[str, str]]:
        """What `cdc status` shows next to a running pair: (level warn|fail, text naming table, count and
        fix) about rows capture cannot vouch for (fail: changes to them may be missing); read-only."""

    def idle(self, seconds: float, stop: Any) -> None:
        """Wait after a read that brought nothing: until ``seconds`` have passed, ``stop`` (an Event-like
        object with ``wait``/``is_set``) is set, or (for a capture that learns of them as they happen)
        changes are ready to read, whichever comes first."""

    def caught_up(self) -> bool:
        """After a read that only moved the position: whether the reader has reached the end of the
        source's log (`cdc run --once` goes on reading until it has)."""

    def close(self) -> None: ...


class Target(Protocol):
    """Writes mapped changes, audit rows and the checkpoint to one target in one transaction."""

    def apply(self, pair: str, mapped: list[MappedChange], *, position: Position, snapshot: dict | None,
              on_error: str, reason: str = "change", tables: dict[str, dict | None] | None = None) -> ApplyResult:
        """ONE transaction: rows, audit, dead letters, checkpoint (with ``snapshot`` progress and the
        streamed ``tables``, each with its mapping identity; None keeps the stored ones). Idempotent
        only with the checkpoint check."""

    def checkpoint(self, pair: str) -> state.Checkpoint | None: ...

    def advance(self, pair: str, position: Position, *, snapshot: dict | None = None,
                tables: dict[str, dict | None] | None = None) -> None:
        """Store ``position`` (and snapshot progress, streamed tables) as the checkpoint without changes."""

    def set_generation(self, pair: str, generation: str | None) -> None:
        """Record the capture installation the pair's checkpoint belongs to, once (a checkpoint that has
        one keeps it; nothing without a checkpoint; idempotent); RetryableError on a passing fault."""

    def close(self) -> None: ...
