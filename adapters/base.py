"""The contracts every adapter fulfils: Adapter, Source, Target, Fingerprints and the records they share.

Errors: RetryableError means "try again with back-off" (lock, lost connection); RowError concerns one row
(parked or fatal by the pair's on_error); every other CdcError stops the pair with its message."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol

import sqlalchemy as sa

from cdc import state
from cdc.changes import Batch, Position, Row

from ._capabilities import Capabilities, CopyRoute  # noqa: F401 (the records adapters import from here)


@dataclass(frozen=True)
class TableInfo:
    """A table as reflected: its columns (SQLAlchemy Column objects) and primary key."""

    name: str
    columns: list[sa.Column]
    primary_key: tuple[str, ...]

    @property
    def column_names(self) -> list[str]:
        return [str(c.name) for c in self.columns]  # plain str: reflected names are str subclasses


class Fingerprints(Protocol):
    """SQL fragments that fingerprint rows inside one database, for reconciliation (cdc/reconcile):
    pure and idempotent (they build SQL text) but ``usable`` and ``read_only``; SQL the database
    rejects raises ``sa.exc.DBAPIError`` when run, and reconciliation stops with it."""

    #: The digest families this database computes, the fastest first ('md5' is everywhere).
    families: tuple[str, ...]

    def read_only(self, engine: sa.Engine) -> None:
        """Make every later transaction on ``engine`` read-only (idempotent); called by ``Reads.read_only``."""

    def usable(self, conn: sa.Connection) -> bool:
        """Whether these fingerprints give the canonical text here (e.g. a UTF-8 database); read-only."""

    def canonical(self, name: str, column: sa.Column, as_type: sa.types.TypeEngine) -> str | None:
        """SQL for column ``name``'s canonical text as ``as_type`` (the target's type), or None: none in SQL."""

    def month(self, name: str, column: sa.Column) -> str | None:
        """SQL for the YYYY-MM of date column ``name`` (control totals), or None: none in SQL."""

    def part(self, text: str, prefixed: bool) -> str:
        """One column's canonical text as a part of a row's text (``prefixed``: length-prefixed)."""

    def join(self, parts: list[str]) -> str:
        """SQL joining column parts into one row (or key) text."""

    def bucket(self, key_text: str, buckets: int, family: str = "md5") -> str:
        """SQL for the bucket (0..buckets-1) of a key text, by ``family``'s digest."""

    def int_bucket(self, name: str, buckets: int) -> str:
        """SQL for the bucket of integer key column ``name`` (its value modulo ``buckets``)."""

    def digest(self, row_text: str, family: str = "md5") -> str:
        """SQL for a row text's digest as an integer, the same number on every database."""

    def total(self, digest: str) -> str:
        """SQL summing digests exactly (no overflow) over a group."""


class Reads(Protocol):
    """What a source and a target share: reflection, keyed reads and reconciliation's reads; all
    read-only and idempotent, ``sa.exc.DBAPIError``/``SchemaError`` raised as they are (retry or stop)."""

    #: What the adapter that made this object can do (set by its factory).
    capabilities: Capabilities
    #: SQL for reconciliation fingerprints in this dialect, or None: rows are fingerprinted in Python.
    fingerprints: Fingerprints | None

    @property
    def backend(self) -> str:
        """The SQLAlchemy backend name of the SQL the database speaks (one of ``capabilities.backends``)."""

    def describe(self, table: str) -> TableInfo:
        """The table's columns and primary key (cached); SchemaError if it does not exist."""

    def stored_name(self, name: str) -> str | None:
        """How the database spells a table whose name differs from ``name`` only in letter case, or None."""

    def reader(self, column: sa.Column) -> Callable[[Any], Any]:
        """How a driver value of ``column`` becomes the change model's value (pure)."""

    def selected(self, info: TableInfo, plain: sa.TableClause) -> list[sa.ColumnElement]:
        """What a read selects for each column of ``plain`` (``info``'s), in order: the columns themselves,
        or an expression where the driver would hand a column's value over wrong (psqlODBC's money)."""

    def snapshot(self, table: str, key: tuple[str, ...], after_key: tuple | None, limit: int,
                 where: str | None = None) -> list[Row]:
        """Up to ``limit`` rows after ``after_key`` in key order (meeting ``where``); no long lock."""

    def rows_by_keys(self, table: str, key: tuple[str, ...], keys: list[tuple]) -> list[Row]:
        """The rows with these key values, those that exist."""

    def count(self, table: str) -> int:
        """How many rows ``table`` holds."""

    def reading(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """A connection for reads, closed when the block ends (a source may pin it to its snapshot)."""

    def quote(self, name: str) -> str:
        """``name`` as an identifier in this database's SQL (pure)."""

    def sql_text(self, clause: sa.ClauseElement) -> str:
        """The SQL text of ``clause`` in this database's dialect, its values written in (pure)."""

    def read_only(self) -> None:
        """Make every later transaction read-only (reconciliation); idempotent."""

    def close(self) -> None:
        """Release connections (idempotent)."""


class Source(Reads, Protocol):
    """Reads committed changes from one source database for one pair."""

    def watch(self, keys: dict[str, tuple[str, ...]]) -> None:
        """The tables to capture and their key columns; call before any other method but describe."""

    def prepare(self, keep: Iterable[str] = ()) -> list[str]:
        """Install what capture needs (idempotent); returns what it created. ``keep``: tables no longer in the
        pair whose capture stays, as the checkpoint still streams them (see cdc.commands.install)."""

    def unprepare(self) -> list[str]:
        """Remove what prepare installed for this pair and nothing else (idempotent)."""

    def current_position(self) -> Position:
        """The position a snapshot taken now joins the stream at (no gap, no loss)."""

    def begin_snapshot(self) -> Position:
        """Like current_position, for a first snapshot; a source whose snapshot reads can see exactly
        that position (no overlap either) holds it until end_snapshot."""

    def end_snapshot(self) -> None:
        """Release what begin_snapshot holds (idempotent)."""

    def join_stream(self, position: Position, tables: list[str]) -> Position:
        """The stream position from which ``tables`` (watched, not yet copied: the first snapshot, or tables
        added to a streaming pair) are captured too: a snapshot read after this call, with their changes after
        it applied over it, gives their current rows. Idempotent; SourceError naming `cdc install CONFIG` when
        capture does not cover them yet."""

    def uncaptured(self, tables: list[str]) -> list[str]:
        """The ones of ``tables`` whose changes capture does not see (trigger capture: not registered by
        `cdc install`, or a trigger missing, on another table or disabled; logical: not in the publication);
        [] when it sees them all. Read-only, idempotent; RetryableError on a passing fault."""

    def whole_before_images(self, table: str) -> bool:
        """Whether updates and deletes of ``table`` carry the whole old row (else conflicts go by row hash)."""

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
        """The identity of the capture installation this source reads, made anew whenever `cdc install`
        re-creates the changelog or slot (None: the mode installs nothing, e.g. timestamp polling);
        read-only, idempotent; SourceError if capture is not installed, RetryableError on a passing fault."""

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """SourceError naming the fix (`cdc run --resnapshot CONFIG`) when ``position`` cannot be a position
        of this installation (ahead of the newest position the source has issued, or a log that no longer
        holds it) or lies behind what the source has already released (a purged changelog, a slot confirmed
        past it: a target restored from a backup). ``written_at``: the checkpoint's commit time, by which
        SQLite's changelog tells a restored source. Read-only, idempotent; RetryableError on a passing fault."""

    def diagnose(self) -> list[tuple[str, str]]:
        """Findings (level ok|info|warn|fail, text with the fix) about the source's settings; read-only."""

    def warnings(self) -> list[tuple[str, str]]:
        """What `cdc status` shows next to a running pair: (level warn|fail, text naming table, count and
        fix) about rows capture cannot vouch for (fail: changes to them may be missing); read-only."""

    def idle(self, seconds: float, stop: Any) -> None:
        """Wait after a read that brought nothing: until ``seconds`` have passed, ``stop`` (an Event-like object
        with ``wait``/``is_set``) is set, or (a capture that learns of them) changes are ready to read."""

    def caught_up(self) -> bool:
        """After a read that only moved the position: whether the reader has reached the end of the
        source's log (`cdc run --once` goes on reading until it has)."""

    # Only where ``capabilities.copy_routes`` names this source's capture mode:
    def column_types(self, table: str) -> dict[str, str]:
        """Column name -> type as the database writes it, to compare with a same-kind target's (read-only)."""

    def copy_compatible(self, table: str, target_types: dict[str, str | None]) -> bool:
        """Whether every column can go as COPY text into these target column types (read-only)."""

    def copy_out(self, table: str, columns: list[str], key: tuple[str, ...], after_key: tuple | None, limit: int,
                 write: Callable[[bytes], Any], target_types: dict[str, str | None] | None = None) -> None:
        """One keyed chunk (as ``snapshot``) as COPY data into ``write``; read-only; DBAPIError as raised."""


class Target(Reads, Protocol):
    """A target's dialect: statements for runs of rows, bulk loading, its state tables and the claim.

    The transaction writing rows, audit rows, dead letters and the checkpoint together is cdc/apply's; inside
    it a ``sa.exc.DBAPIError`` is raised as it is and ``classify`` says: retry, one bad row, or stop."""

    #: The server setting that limits one statement's size, as messages name it ("" if none).
    statement_limit_setting: str
    #: Bytes the driver joins one executemany's rows into at most, or None (unknown).
    driver_statement_bytes: int | None

    def begin(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """One target transaction, committed when the block ends and rolled back when it raises; a
        ``DBAPIError`` from it is classified by ``classify`` (a failed COMMIT leaves the outcome uncertain)."""

    def claim(self, pair: str) -> state.Claim:
        """This process's claim of ``pair`` (no database access, idempotent); ClaimLostError (stop) if none."""

    def table(self, name: str) -> sa.Table:
        """The reflected target table, cached (idempotent); TargetError (stop) if it does not exist."""

    def binding(self, column: sa.Column) -> Callable[[Any], Any] | None:
        """How a value already checked to fit ``column`` is bound for the driver, or None when it goes
        as it is (pure, idempotent); TransformError when it cannot be bound (one bad row)."""

    def trust(self, name: str, columns: list[str]) -> None:
        """Mark these columns' values as coming from identical source columns, so only NOT NULL is
        checked (in memory, idempotent, never fails)."""

    def trusted(self, name: str) -> frozenset[str]:
        """The columns of ``name`` last passed to ``trust``: a new set after each call (never fails)."""

    def classify(self, exc: sa.exc.DBAPIError) -> str:
        """'row' (this row is bad: parked or stop by on_error), 'retry' (passing fault) or 'fatal' (stop)."""

    def statement_limit(self, conn: sa.Connection) -> int | None:
        """The most bytes one statement may carry on ``conn``, or None: no limit a row can reach
        (idempotent; no error of its own)."""

    def statement_size(self, row: dict, exact: bool = False) -> int:
        """Bytes ``row``'s values take in one statement (``exact`` False: a quick upper bound); pure,
        needed only where ``statement_limit`` gives a limit."""

    def write_run(self, conn: sa.Connection, op: str, name: str, key: tuple[str, ...], params: list[dict]) -> None:
        """Upsert (``op`` 'upsert'; idempotent), insert (``op`` 'insert': a key that exists is an error) or
        delete (by ``key``) these rows of table ``name`` on ``conn``, in order. DBAPIError as raised."""

    def read_rows(self, conn: sa.Connection, name: str, key: tuple[str, ...], keys: list[tuple],
                  latest: str | None = None) -> list[dict]:
        """Rows of ``name`` whose ``key`` holds one of ``keys`` (read-only); ``latest``: each key's newest by it."""

    def write_audit(self, conn: sa.Connection, rows: list[dict]) -> None:
        """Append these audit rows on ``conn`` (once: by the transaction's checkpoint). DBAPIError as raised."""

    def write_dead_letters(self, conn: sa.Connection, rows: list[dict]) -> None:
        """Append these dead letters on ``conn`` (once: by the transaction's checkpoint). DBAPIError as raised."""

    def bulk_load(self, conn: sa.Connection, table: str, columns: list[str], key: tuple[str, ...],
                  copy_out: Callable, *, direct: bool = False, fmt: str = "binary") -> tuple[int, list | None]:
        """Only on a target that bulk-loads (COPY): load one snapshot chunk that ``copy_out(write)``
        writes as COPY data in ``fmt`` into ``table`` on ``conn`` (``direct``: straight in, the table
        was empty; else upserted, so idempotent); returns the rows and the last key. DBAPIError as
        raised: 'row' means copy the chunk row by row instead."""

    def checkpoint(self, pair: str) -> state.Checkpoint | None:
        """The pair's checkpoint, or None (read-only, idempotent); a database error is raised as it is,
        for the caller to retry or stop."""

    def other_writers(self, pair: str) -> dict[str, list[tuple[str, bool]]]:
        """Per target table, the other pairs whose checkpoints here write it, and whether each marks it shared."""

    def set_generation(self, pair: str, generation: str | None) -> None:
        """Record the capture installation the pair's checkpoint belongs to, once (a checkpoint that has
        one keeps it; nothing without a checkpoint; idempotent); RetryableError on a passing fault."""

    def exists(self, name: str) -> bool:
        """Whether table ``name`` exists (read-only)."""

    def column_types(self, table: str) -> dict[str, str]:
        """Only on a target that bulk-loads: column name -> type as the database writes it (read-only)."""

    def table_definition(self, name: str, columns: list[sa.Column], key: tuple[str, ...],
                         source_dialect: str = "") -> sa.Table:
        """The table `cdc init` would create (not created): types kept from a source of the same
        backend (``source_dialect``), else translated; SchemaError naming a column it cannot declare."""

    def create_tables(self, tables: list[sa.Table]) -> None:
        """Create these tables (idempotent: an existing one is left as it is)."""

    def init_state(self) -> tuple[str | None, str]:
        """Create or upgrade our state tables (idempotent); (revision before, revision after)."""

    def prepare_tables(self, names: Iterable[str]) -> None:
        """Reflect these tables before any apply transaction (idempotent)."""

    def is_empty(self, table: str) -> bool:
        """Whether ``table`` holds no row (read-only)."""

    def load_directly(self, table: str, on: bool) -> None:
        """While on, upserts into ``table`` are plain inserts (disjoint chunks); in memory, idempotent."""

    def forget_tables(self, pair: str, tables: list[str]) -> None:
        """Under this process's claim, drop ``tables`` from the checkpoint (copied again); ClaimLostError stops."""

    def forget_old_rows(self, pair: str, tables: list[str], mark: str) -> None:
        """Under this process's claim, clear ``mark`` of ``tables`` (a repair made them equal); ClaimLostError stops."""

    def forget_checkpoint(self, pair: str) -> bool:
        """Drop the pair's checkpoint (the next run snapshots again); True if there was one; idempotent."""

    def take_claim(self, pair: str, timeout: float, purpose: str = "run") -> state.Claim:
        """Claim the pair for this process (idempotent); ClaimHeldError (stop) if a live process holds it."""

    def heartbeat(self, pair: str, timeout: float) -> bool:
        """Refresh this process's claim; False when another process holds it now (stop the pair)."""

    def note_retrying(self, pair: str, error: str | None) -> None:
        """Record in the claim that the pair retries ``error`` (None: running again); idempotent."""

    def release_claim(self, pair: str, error: str | None = None) -> None:
        """Give the pair up: stopped, or failed with ``error``; idempotent (nothing without a claim)."""

    def record_failure(self, pair: str, error: str) -> None:
        """A pair that failed before it could claim: its lease row says so (idempotent)."""

    def diagnose(self) -> list[tuple[str, str]]:
        """Findings (level ok|info|warn|fail, text with the fix) about the target's settings; read-only."""


class Adapter(Protocol):
    """One database kind, found by the `cdc.adapters` entry point named ``capabilities.name``. The
    factories connect to nothing; they raise only what they tell without a connection."""

    capabilities: Capabilities

    def database_exists(self, connection_url: str) -> bool:
        """False only for a missing database that connecting would create; never connects (idempotent)."""

    def identity(self, connection_url: str) -> tuple:
        """What identifies the database ``connection_url`` reaches however the URL is spelt (user, password,
        driver aside): equal for URLs that may reach one database. Never connects; ConfigError if unreadable."""

    def capabilities_for(self, connection_url: str) -> Capabilities:
        """What sources and targets made for ``connection_url`` carry (ODBC: the database it reaches)."""

    def source(self, connection_url: str, pair: Any) -> Source:
        """A Source for ``pair``'s capture mode reading ``connection_url``; SourceError (stop) when the
        database cannot be a source as it stands."""

    def target(self, connection_url: str) -> Target:
        """A Target writing ``connection_url`` (never fails: a fault shows at the first member called)."""
