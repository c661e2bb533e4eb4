"""Run one pair: initial snapshot, then capture -> map -> apply(+checkpoint+audit) -> acknowledge."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from tqdm import tqdm

from . import apply, registry, values
from ._typecheck import check_types
from .changes import ApplyResult, Batch, dumps
from .config import Connection, Pair
from .errors import CdcError, ConfigError, RetryableError, SchemaError, SourceError, TargetError, first_line
from .state import ClaimHeldError, ClaimLostError
from .mapping import TableMapping, TableSpec, identity_change, map_changes, map_snapshot

logger = logging.getLogger(__name__)
MAX_BACKOFF = 30.0


@dataclass
class RunResult:
    """What one run of a pair did."""

    pair: str
    snapshot_rows: int = 0
    applied: int = 0
    parked: int = 0
    batches: int = 0
    tables_snapshotted: list[str] = field(default_factory=list)


def resolve_mappings(pair: Pair, source: Any, target: Any = None) -> dict[str, TableMapping]:
    """The pair's table specs checked against the source schema; ConfigError names file and line.

    With ``target``, an identity mapping copies only the columns its existing target table has:
    a column added to the source later is ignored (with a warning), not a reason to stop; and
    each mapping is checked against the column types of both tables (cdc/_typecheck.py).
    """
    result = {}
    for spec in pair.mapping.tables.values():
        _require_stored_spelling(pair, spec, source, target)
        try:
            info = source.describe(spec.source)
        except SchemaError:
            raise ConfigError(f"tables.{spec.source}: source table {spec.source!r} does not exist in "
                              f"{pair.source.name} ({spec.origin})") from None
        key = spec.key or info.primary_key
        if not key:
            raise ConfigError(f"tables.{spec.source}: table {spec.source} has no primary key; name the columns that "
                              f"identify a row with `key: [..]` in a mapping file ({spec.origin})")
        unknown = [k for k in key if k not in info.column_names]
        if unknown:
            raise ConfigError(f"tables.{spec.source}.key: source table {spec.source} has no column "
                              f"{unknown[0]!r} ({spec.origin})")
        _require_key_kept(spec, key)
        columns = info.column_names
        if spec.columns is None and target is not None and target.exists(spec.target):
            have = target.describe(spec.target).column_names
            gone = [c for c in have if c not in columns]
            if gone:
                raise SchemaError(f"source table {spec.source} has no column {gone[0]!r}, which target table "
                                  f"{spec.target} has: dropped or renamed at the source? The pair stops; to go on "
                                  "without it, list the columns in a mapping file")
            ignored = [c for c in columns if c not in have]
            if ignored:
                logger.warning("pair %s: source table %s has column(s) %s that target table %s lacks; they are "
                               "not copied", pair.name, spec.source, ", ".join(ignored), spec.target)
                columns = [c for c in columns if c in have]
        mapping = TableMapping(spec, columns, tuple(key), pair.source_timezone)
        existing = target.table(spec.target) if target is not None and target.exists(spec.target) else None
        check_types(mapping, info.columns, existing)
        result[spec.source] = mapping
    return result


#: Transforms that can make two source values one (``'a'`` and ``'A '`` both ``'A'``).
_MERGING = frozenset({"trim", "upper", "lower", "map", "null_if", "boolean", "date_from_timestamp"})


def _require_key_kept(spec: TableSpec, key: tuple[str, ...]) -> None:
    """ConfigError when a key column goes through a transform that can make two source keys one
    target key: the second row would overwrite the first, and deleting either would delete both."""
    for column in spec.columns or ():
        merging = [name for name, _ in column.transforms if name in _MERGING]
        if column.source in key and merging:
            raise ConfigError(f"tables.{spec.source}.columns.{column.target}: key column {column.source} goes through "
                              f"{', '.join(merging)}, which can give two source rows one target key (the second "
                              f"would overwrite the first); copy key columns as they are ({column.origin})")


def _require_stored_spelling(pair: Pair, spec: TableSpec, source: Any, target: Any) -> None:
    """ConfigError when a table is named in another letter case than its database stores it
    (``LEDGER_ROWS`` for ``ledger_rows``): SQLite would take both for one table, but the rest of
    the pair (reflection, the changelog, the checkpoint) would not."""
    stored = source.stored_name(spec.source)
    if stored is not None:
        raise ConfigError(f"tables.{spec.source}: source table {spec.source!r} is stored as {stored!r} in "
                          f"{pair.source.name}: write the name as the database stores it ({spec.origin})")
    stored = target.stored_name(spec.target) if target is not None else None
    if stored is not None:
        raise ConfigError(f"tables.{spec.source}: target table {spec.target!r} is stored as {stored!r} in "
                          f"{pair.target.name}: write `target: {stored}` ({spec.origin})")


def open_source(pair: Pair, target: Any = None) -> tuple[Any, dict[str, TableMapping]]:
    """(source, mappings) for a pair, the mappings checked against the source schema."""
    source = registry.adapter_for(pair.source.url).source(pair.source.url, pair)
    try:
        mappings = resolve_mappings(pair, source, target)
    except Exception:
        source.close()
        raise
    source.watch({name: m.source_key for name, m in mappings.items()})
    return source, mappings


def open_target(connection: Connection, *, create: bool = False) -> Any:
    """A Target for ``connection``.

    Only `cdc init` (``create``) may make a database: where connecting would create one that does
    not exist (a SQLite file), every other command gets a TargetError naming the file and the fix,
    and leaves no empty file behind for a later command to mistake for a real target.
    """
    adapter = registry.adapter_for(connection.url)
    if not create and adapter.capabilities.creates_database_on_connect and not adapter.database_exists(connection.url):
        raise TargetError(f"target database {make_url(connection.url).database} does not exist (connection "
                          f"{connection.name}): `cdc init CONFIG` creates it; or correct the path in the config")
    return adapter.target(connection.url)


def open_pair(pair: Pair, *, create: bool = False) -> tuple[Any, Any, dict[str, TableMapping]]:
    """(source, target, mappings) for a pair, checked against the source schema; ``create``: see
    open_target."""
    target = open_target(pair.target, create=create)
    try:
        source, mappings = open_source(pair, target)
    except Exception:
        target.close()
        raise
    return source, target, mappings


#: The mark a table's entry in the checkpoint gets when its copy found rows in its target already.
OLD_ROWS = "old_rows"


def missing_targets(pair: str, target: Any, mappings: dict[str, TableMapping]) -> str | None:
    """Why the pair cannot run because a target table of its mapping does not exist (a table added
    to the pair without `cdc init`, or dropped by hand); None when they all exist."""
    missing = sorted({m.target for m in mappings.values() if not target.exists(m.target)})
    if not missing:
        return None
    return (f"pair {pair}: target table{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"do{'' if len(missing) > 1 else 'es'} not exist: run `cdc init CONFIG` to create "
            f"{'them' if len(missing) > 1 else 'it'}, then `cdc run` copies what the source has")


def _short(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[:size - 3] + "..."


def capture_gap(pair: Pair, uncovered: list[str], streamed: Iterable[str]) -> str | None:
    """Why the pair must not run, said once for `cdc status` and `cdc run`: capture does not cover
    ``uncovered`` (``source.uncaptured``): `cdc install` has not run since a table was added, or its
    capture was undone behind our back (triggers dropped with the table, disabled, moved to a
    renamed table; a table taken out of the publication). A streamed table comes first: its
    changes are being lost, and the rows that changed meanwhile need a repair."""
    streamed = set(streamed)
    lost = [t for t in uncovered if t in streamed]
    if lost:
        return (f"table {lost[0]} of pair {pair.name} streams, but {pair.capture} capture does not cover it: its "
                f"changes are not captured. Run `cdc install CONFIG`, then repair what changed meanwhile with "
                f"`cdc reconcile CONFIG --pair {pair.name} --table {lost[0]} --repair`")
    if uncovered:
        return (f"table {uncovered[0]} of pair {pair.name} is not covered by {pair.capture} capture yet, so it cannot "
                "be copied: run `cdc install CONFIG`, then `cdc run` copies it")
    return None


def verify_checkpoint(pair: str, source: Any, checkpoint: Any) -> str | None:
    """The source's capture generation, once the checkpoint is known to be a position of it.

    SourceError with the fix when the checkpoint was written for another installation of capture
    (uninstalled and installed again: what changed in between was never captured), lies ahead
    of what the source has, or lies behind what the source has already released (a target restored
    from a backup): streaming from it would skip changes without a word.
    """
    generation = source.generation()
    if checkpoint.generation is not None and checkpoint.generation != generation:
        raise SourceError(
            f"pair {pair}: the checkpoint belongs to capture installation {checkpoint.generation} but the source "
            f"now has {generation or 'none'} (capture was uninstalled and installed again?): changes made in "
            "between were not captured. Copy the tables again with `cdc run --resnapshot CONFIG` (rows deleted "
            "meanwhile are then removed by `cdc reconcile CONFIG --repair`)")
    try:
        source.check_position(checkpoint.position, checkpoint.updated_at)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # not a position of this capture
        raise SourceError(
            f"pair {pair}: the checkpoint ({_short(dumps(checkpoint.position))}) is not a position the pair's "
            "capture mode reads (the capture mode changed since it was written?): it cannot tell where to go on. Copy "
            "the tables again with `cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed by "
            "`cdc reconcile CONFIG --repair`)") from exc
    return generation



class PairRunner:
    """Runs one pair until drained (``once``) or until ``stop`` is set."""

    def __init__(self, pair: Pair, *, progress: bool = False, stop: threading.Event | None = None,
                 max_attempts: int | None = None):
        self.pair = pair
        self.max_attempts = max_attempts
        self.progress = progress
        self.stop = _Stop(stop or threading.Event())
        self.lost: str | None = None  # why this process lost the pair's claim (set by the heartbeat)
        self._claimed = False
        self._retrying_since: str | None = None
        self.source, self.target, self.mappings = open_pair(pair)
        self.target.prepare_tables(m.target for m in self.mappings.values())
        self._bulk: dict[str, bool] = {}
        self._streamed: list[str] = []  # source tables copied whole, whose changes the pair streams
        self._progress: dict[str, dict] = {}  # snapshot progress of the tables being copied
        self._old_rows: set[str] = set()  # streamed tables whose copy found rows in the target already
        self._copy_types: dict[str, dict] = {}  # target column types a source makes COPY text for
        for table, mapping in self.mappings.items():
            if self._bulk_ok(table, mapping) and table not in self._copy_types:  # same kind, same types
                self.target.trust(mapping.target, mapping.target_columns)
            elif self.source.capabilities.enforces_types and self.target.exists(mapping.target):
                self.target.trust(mapping.target, self._always_fit(table, mapping))

    def _always_fit(self, table: str, mapping: TableMapping) -> list[str]:
        """Target columns copied untransformed from a source column whose every value fits them."""
        source = {c.name: c for c in self.source.describe(table).columns}
        target = {c.name: c for c in self.target.table(mapping.target).columns}
        # A source whose date columns may hold zero dates ('0000-00-00', MySQL) has them checked.
        dates = (sa.Date, sa.DateTime) if self.source.capabilities.zero_dates else ()
        return [name for name, origin, transforms in mapping.column_specs()
                if origin in source and name in target and not transforms
                and not isinstance(source[origin].type, dates)
                and values.always_fits(source[origin].type, target[name].type)]

    def close(self) -> None:
        self.source.close()
        self.target.close()

    def run(self, *, once: bool, resnapshot: bool = False, wait: bool = False) -> RunResult:
        """Claim the pair, then snapshot if needed and stream; the claim is released as stopped or
        failed (with the error, for `cdc status`). ``resnapshot``: forget the checkpoint first.
        ``wait``: wait for a process that holds the pair to stop instead of refusing to start."""
        self._claim(wait)
        self._claimed = True
        heartbeat = _Heartbeat(self)
        try:
            missing = missing_targets(self.pair.name, self.target, self.mappings)
            if missing:  # checked once the state tables are known to exist (the claim reads them)
                raise TargetError(missing)
            if resnapshot and self.target.forget_checkpoint(self.pair.name):
                logger.warning("pair %s: checkpoint dropped; copying every table again", self.pair.name)
            result = self._run(once)
            if self.lost:  # the heartbeat found another process holding the pair: stop, non-zero
                raise ClaimLostError(self.lost)
        except BaseException as exc:
            heartbeat.stop()
            self._release(first_line(exc) if isinstance(exc, Exception) else f"stopped by {type(exc).__name__}")
            raise
        heartbeat.stop()
        self._release(None)
        return result

    def _claim(self, wait: bool) -> None:
        while True:
            try:
                self._retrying(lambda: self.target.take_claim(self.pair.name, self.pair.claim_timeout))
                return
            except ClaimHeldError as exc:
                if not wait or self.stop.is_set():
                    raise
                logger.warning("%s; waiting", exc)
                self.stop.wait(min(self.pair.claim_timeout / 3, 5.0))

    def _release(self, error: str | None) -> None:
        try:
            self.target.release_claim(self.pair.name, error)
        except (sa.exc.SQLAlchemyError, CdcError) as exc:  # the target is gone: the claim expires by itself
            logger.warning("pair %s: could not record how the run ended: %s", self.pair.name, _first_line(exc))

    def _run(self, once: bool) -> RunResult:
        result = RunResult(self.pair.name)
        checkpoint = self._retrying(lambda: self.target.checkpoint(self.pair.name))
        try:
            if checkpoint is None:
                position = self._retrying(self.source.begin_snapshot)
                generation = self._retrying(self.source.generation)
            else:
                generation = self._retrying(lambda: verify_checkpoint(self.pair.name, self.source, checkpoint))
                position = checkpoint.position
                # A crash between commit and acknowledge left this unreleased; release it now.
                self._retrying(lambda: self.source.acknowledge(position))
            if checkpoint is not None and checkpoint.generation is None and generation is not None:
                # Written before generations existed: it adopts the installation it runs on.
                self._retrying(lambda: self.target.set_generation(self.pair.name, generation))
            position = self._plan_tables(checkpoint, position)
            if not self._streamed:
                self._snapshot(position, result)
            if checkpoint is None:  # the first chunk created the checkpoint
                self._retrying(lambda: self.target.set_generation(self.pair.name, generation))
        finally:
            self.source.end_snapshot()
        self._stream(position, once, result)
        return result

    # -- which tables stream, which are copied ------------------------------------------
    def _plan_tables(self, checkpoint: Any, position: Any) -> Any:
        """Split the mapping's tables into streamed ones and ones (still) to copy; returns the position.

        Capture must still cover every streamed table (SourceError otherwise). A table the checkpoint
        has neither as streamed nor in its snapshot progress (new to the pair, or removed once and
        added again) joins the stream (the source checks that capture
        covers it) and is copied. So is a table copied under another mapping identity (its target,
        columns, transforms, filter or key changed since): the rows its target has are not the rows
        the mapping now writes, or not there at all. A table no longer in the mapping is forgotten,
        and the checkpoint says so at once, so a table added back later is copied again rather
        than trusted.
        """
        self._identities = {t: m.identity() for t, m in self.mappings.items()}
        copied = checkpoint.tables if checkpoint is not None else {}
        stored = (checkpoint.snapshot or {}).get("tables", {}) if checkpoint is not None else {}
        remapped = self._remapped(copied, stored)
        self._streamed = [t for t in copied if t in self.mappings and t not in remapped]
        # Tables whose copy found rows in the target: kept in the checkpoint for `cdc status` until a repair.
        self._old_rows = {t for t in self._streamed if (copied[t] or {}).get(OLD_ROWS)}
        self._progress = {t: {**p, "mapping": self._identities[t]} for t, p in stored.items()
                          if t in self.mappings and t not in self._streamed and t not in remapped}
        self._require_capture()
        added = [t for t in self.mappings if t not in self._streamed and t not in self._progress]
        if added:
            position = self._retrying(lambda: self.source.join_stream(position, added))
            self._progress.update({t: {"after": None, "done": False, "rows": 0, "mapping": self._identities[t]}
                                   for t in added})
        if self._streamed:
            new = [t for t in added if t not in remapped]
            if new:
                logger.info("pair %s: copying added table(s) %s while %s stream", self.pair.name, ", ".join(new),
                            ", ".join(self._streamed))
            for progress in self._progress.values():
                progress["direct"] = False  # the stream may write rows before the snapshot reaches them
        for table in self._warn_of_old_rows(added, remapped):
            self._progress[table][OLD_ROWS] = True
        if checkpoint is not None:
            snapshot, tables = self._to_commit()
            if not checkpoint.tables_recorded or checkpoint.tables != tables \
                    or dumps(checkpoint.snapshot) != dumps(snapshot) or dumps(checkpoint.position) != dumps(position):
                self._retrying(lambda: apply.advance(self.target, self.pair.name, position, snapshot=snapshot,
                                                     tables=tables))
        return position

    def _require_capture(self) -> None:
        """SourceError (the words of `cdc status`) when capture no longer covers a streamed table:
        streaming on would skip its changes without a word. Tables still to copy are checked by
        ``join_stream``."""
        if not self._streamed:
            return
        uncovered = self._retrying(lambda: self.source.uncaptured(self._streamed))
        gap = capture_gap(self.pair, uncovered, self._streamed)
        if gap:
            raise SourceError(gap)

    def _remapped(self, copied: dict[str, dict | None], stored: dict[str, dict]) -> dict[str, str]:
        """Tables copied (or being copied) under another mapping identity than the mapping's now,
        with why; each is said loudly, since the next commit forgets its old copy."""
        remapped = {}
        for table in self.mappings:
            if table in copied or table in stored:
                was = copied[table] if table in copied else stored[table].get("mapping")
                why = identity_change(was, self._identities[table])
                if why:
                    remapped[table] = why
        for table, why in remapped.items():
            old = (copied.get(table) or stored.get(table, {}).get("mapping") or {}).get("target")
            left = f"; target table {old} is no longer written and keeps its rows" \
                if old not in (None, self.mappings[table].target) else ""
            logger.warning("pair %s: table %s was copied under another mapping (%s%s): copying it again into %s",
                           self.pair.name, table, why, left, self.mappings[table].target)
        return remapped

    def _warn_of_old_rows(self, added: list[str], remapped: dict[str, str]) -> list[str]:
        """Say so when a table to copy already has rows in its target (say, it was in the pair
        before, or its mapping changed): the copy updates them and adds the missing ones, but a row
        the source deleted meanwhile (or one the mapping no longer writes) stays. Returns those
        tables: the checkpoint keeps the fact (``old_rows``) so `cdc status` says it until a
        `cdc reconcile --repair` of the table."""
        found = []
        for table in added:
            target = self.mappings[table].target
            if not self._streamed and table not in remapped:
                continue  # the first snapshot: a target with rows is the user's own doing, as before
            if self.target.exists(target) and not self.target.is_empty(target):
                logger.warning("pair %s: target table %s already has rows; the copy of %s updates them and adds the "
                               "missing ones but does not remove rows the source no longer has (or the mapping no "
                               "longer writes): once it streams, run `cdc reconcile CONFIG --pair %s --table %s "
                               "--repair`", self.pair.name, target, table, self.pair.name, table)
                found.append(table)
        return found

    def _to_commit(self) -> tuple[dict | None, dict[str, dict]]:
        """The snapshot progress and the streamed tables (with their mapping identities) the next
        checkpoint stores.

        During the first snapshot nothing streams yet and every table's progress is kept until all
        are copied; after it, a table whose copy is done moves from the progress to the streamed tables.
        """
        copying = {t: p for t, p in self._progress.items() if not p["done"]}
        if not self._streamed and copying:
            return {"tables": _copy(self._progress)}, {}
        streamed = sorted(set(self._streamed) | {t for t, p in self._progress.items() if p["done"]})
        old = self._old_rows | {t for t, p in self._progress.items() if p.get(OLD_ROWS)}
        return ({"tables": _copy(copying)} if copying else None), \
            {t: {**self._identities[t], **({OLD_ROWS: True} if t in old else {})} for t in streamed}

    def _settle(self, tables: dict[str, dict]) -> None:
        """After a commit that stored ``tables`` as streamed: their progress is no longer kept."""
        if tables:
            self._streamed = list(tables)
            self._old_rows |= {t for t, identity in tables.items() if identity.get(OLD_ROWS)}
            self._progress = {t: p for t, p in self._progress.items() if t not in tables}

    # -- snapshot ------------------------------------------------------------------
    def _snapshot(self, position: Any, result: RunResult) -> None:
        """The first snapshot: every table copied, in chunks, before the stream starts."""
        for table, mapping in self.mappings.items():
            progress = self._progress.get(table)
            if progress is None or progress["done"]:
                continue
            result.tables_snapshotted.append(table)
            total = self.source.count(table)
            with tqdm(total=total, disable=not self.progress, unit="rows", desc=f"{self.pair.name} {table}",
                      leave=False) as bar:
                def counted(rows: int) -> None:
                    result.snapshot_rows += rows
                    bar.update(rows)

                while not progress["done"] and not self.stop.is_set():
                    if self._bulk_ok(table, mapping):
                        counted(self._bulk_or_rows(table, mapping, position, progress))
                    else:
                        self._row_chunks(table, mapping, position, progress, counted)
            if progress["done"]:
                logger.info("pair %s: snapshot of %s done (%d rows)", self.pair.name, table, total)

    def _copy_pending(self) -> bool:
        """Whether a table added to the streaming pair is still to be copied."""
        return any(not p["done"] for p in self._progress.values())

    def _snapshot_step(self, position: Any, result: RunResult) -> bool:
        """Chunks of a table added to the streaming pair for up to ``poll_interval`` seconds (at
        least one chunk); False when no table is left to copy.

        The stream reads between two slices, so the other tables keep streaming, their changes
        delayed by at most about the pair's poll interval, as when it is idle. A chunk is read
        only after the last stream read committed, never ahead of it (a chunk read ahead is dropped
        at the end of a slice): a chunk read before the stream applies a newer change to one of its
        rows would write the row back to its older state. Changes to the table streamed before its
        chunk is copied are whole rows, so copying the chunk over them, or applying them again over
        it, converges to the source's rows.
        """
        table = next((t for t, p in self._progress.items() if not p["done"]), None)
        if table is None:
            return False
        mapping, progress = self.mappings[table], self._progress[table]
        if table not in result.tables_snapshotted:
            result.tables_snapshotted.append(table)

        def counted(rows: int) -> None:
            result.snapshot_rows += rows

        deadline = time.monotonic() + self.pair.poll_interval
        while not progress["done"] and not self.stop.is_set() and time.monotonic() < deadline:
            if self._bulk_ok(table, mapping):
                counted(self._bulk_or_rows(table, mapping, position, progress))
            else:
                self._row_chunks(table, mapping, position, progress, counted, deadline)
        if progress["done"]:
            logger.info("pair %s: snapshot of added table %s done (%d rows); it streams from now on",
                        self.pair.name, table, progress["rows"])
        return True

    def _bulk_or_rows(self, table: str, mapping: TableMapping, position: Any, progress: dict) -> int:
        """One chunk as raw COPY data; a chunk the target refuses goes row by row instead."""
        try:
            return self._bulk_chunk(table, mapping, position, progress)
        except sa.exc.DBAPIError as exc:
            if self.target.classify(exc) != "row":
                raise
            # A row the target refuses: from here the table goes row by row, to be parked or stop alone.
            logger.warning("pair %s: bulk copy of %s refused (%s); copying the chunk row by row",
                           self.pair.name, table, _first_line(exc))
            self._bulk[table] = False
            return 0

    def _row_chunks(self, table: str, mapping: TableMapping, position: Any, progress: dict,
                    counted: Callable[[int], None], deadline: float | None = None) -> None:
        """The rest of the table (or what is copied until ``deadline``) chunk by chunk; the next
        chunk is read in a second thread while this one is applied. Each chunk commits with the
        progress after it."""
        if progress["after"] is None and "direct" not in progress:
            # An empty target at the first chunk may take plain inserts: chunks never overlap.
            progress["direct"] = self.target.is_empty(mapping.target)
        self.target.load_directly(mapping.target, progress.get("direct", False))
        try:
            self._read_ahead(table, mapping, position, progress, counted, deadline)
        finally:
            self.target.load_directly(mapping.target, False)

    def _read_ahead(self, table: str, mapping: TableMapping, position: Any, progress: dict,
                    counted: Callable[[int], None], deadline: float | None) -> None:
        size = self.pair.snapshot_chunk

        def chunks() -> Any:
            after = self._decode_key(table, mapping, progress["after"])
            while True:
                rows = self._retrying(lambda: self.source.snapshot(table, mapping.source_key, after, size))
                yield len(rows), map_snapshot(rows, mapping)  # mapped here, while the last chunk is written
                if len(rows) < size:
                    return
                after = mapping.source_key_of(rows[-1])

        for count, mapped in _prefetched(chunks, depth=1):
            self._commit_chunk(mapped, count, position, progress)
            counted(count)
            if self.stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                break  # a chunk read ahead is dropped: it is read again after the next stream read

    def _commit_chunk(self, mapped: list, count: int, position: Any, progress: dict) -> None:
        """Apply one chunk of ``count`` rows read, with the progress after it, in one target transaction."""
        if mapped:
            progress["after"] = list(mapped[-1].change.key)
        progress["done"] = count < self.pair.snapshot_chunk
        progress["rows"] = progress.get("rows", 0) + count
        snapshot, tables = self._to_commit()
        self._apply(mapped, position, snapshot, "snapshot", tables)
        self._settle(tables)

    def _bulk_ok(self, table: str, mapping: TableMapping) -> bool:
        """Whether a chunk can go as raw COPY data: identity mapping, and the same database kind with
        the same column types, or a source that makes the target's COPY text itself (copy_compatible)."""
        if table not in self._bulk:
            self._bulk[table] = False
            mine, theirs = self.source.capabilities, self.target.capabilities
            capable = self._copy_format() is not None
            if capable and mapping.is_identity and self.target.exists(mapping.target):
                have = self.target.column_types(mapping.target)
                if mine.name == theirs.name:
                    wanted = {c: t for c, t in self.source.column_types(table).items() if c in mapping.target_columns}
                    self._bulk[table] = all(have.get(c) == t for c, t in wanted.items())
                else:
                    self._copy_types[table] = {c: have.get(c) for c in mapping.target_columns}
                    self._bulk[table] = self.source.copy_compatible(table, self._copy_types[table])
        return self._bulk[table]

    def _copy_format(self) -> str | None:
        """The COPY format this pair's source writes for its target's bulk_load, or None (row by row)."""
        return self.source.capabilities.copy_format(self.pair.capture, self.target.capabilities)

    def _bulk_chunk(self, table: str, mapping: TableMapping, position: Any, progress: dict) -> int:
        after = self._decode_key(table, mapping, progress["after"])
        chunk, copied = self.pair.snapshot_chunk, progress.get("rows", 0)
        if after is None and "direct" not in progress:
            # An empty target at the first chunk may take COPY straight in: chunks never overlap.
            progress["direct"] = self.target.is_empty(mapping.target)
        stored: list = []

        def finish(count: int, last_key: list | None) -> tuple[dict | None, list[str]]:
            """Called in the chunk's transaction (again on a retry): the progress after the chunk."""
            if count:
                progress["after"] = last_key
            progress["done"], progress["rows"] = count < chunk, copied + count
            stored[:] = [self._to_commit()]
            return stored[0]

        count = self._retrying(lambda: apply.bulk_snapshot(
            self.target, self.pair.name, table, mapping.target, mapping.target_columns, mapping.target_key,
            lambda write: self._copy_out(table, mapping, after, chunk, write),
            position, finish, direct=progress.get("direct", False), fmt=self._copy_format()))
        self._settle(stored[0][1])
        return count

    def _copy_out(self, table: str, mapping: TableMapping, after: tuple | None, chunk: int, write: Callable) -> None:
        if table in self._copy_types:  # COPY text made by another kind of database for these target types
            self.source.copy_out(table, mapping.target_columns, mapping.source_key, after, chunk, write,
                                 self._copy_types[table])
        else:
            self.source.copy_out(table, mapping.target_columns, mapping.source_key, after, chunk, write)

    def _decode_key(self, table: str, mapping: TableMapping, stored: list | None) -> tuple | None:
        """A key read back from the checkpoint's JSON, in the source's own types."""
        if stored is None:
            return None
        info = self.source.describe(table)
        columns = dict(zip(info.column_names, info.columns))
        return tuple(self.source.reader(columns[k])(v) for k, v in zip(mapping.source_key, stored))

    # -- stream --------------------------------------------------------------------
    def _stream(self, position: Any, once: bool, result: RunResult) -> None:
        """Read, apply and acknowledge until drained (``once``) or stopped; a table added to the pair
        is copied one chunk between two reads until it streams too."""
        moved_before, caught_up = False, False
        while not self.stop.is_set():
            # A table added to the streaming pair is copied only once the stream has caught up with
            # the source: its changelog or slot may still hold changes logged before this run (while
            # it was out of the pair, before capture was taken down and set up again), and those,
            # applied after a chunk read now, would write older rows over it for good.
            copying = self._snapshot_step(position, result) if caught_up else self._copy_pending()
            read = _Read(position)

            def mapped() -> Any:
                try:
                    for part in _joined(self.source.stream(position, self.pair.batch_size), self.pair.batch_size):
                        yield part, map_changes(part.changes, self.mappings)
                except sa.exc.DBAPIError as exc:  # raised inside the target's transaction: say whose it is
                    raise _source_fault(exc) from None

            def parts() -> Any:
                read.reset()
                # The next part is read, decoded and mapped in a second thread while this one is
                # applied: the apply thread is the one that sets the pace.
                for part, changes in _prefetched(mapped):
                    read.add(part)
                    yield changes

            applied = self._apply_parts(parts, read)
            caught_up = caught_up or not read.changes or (read.complete and read.changes < self.pair.batch_size)
            moved = False
            if not read.changes and read.complete and dumps(read.position) != dumps(position):
                # Only transactions of other tables (a binlog), or a slot's heartbeat: keep the
                # checkpoint up with them, then let the source release them (never before: a source
                # released past the checkpoint would mean changes lost, see verify_checkpoint).
                to, (snapshot, tables) = read.position, self._to_commit()
                self._retrying(lambda: apply.advance(self.target, self.pair.name, to, snapshot=snapshot, tables=tables))
                self._retrying(lambda: self.source.acknowledge(to))
                position, moved = to, True
            if not read.changes:
                # A read that only moved the position ended at a part that had arrived; what comes
                # after it may be on its way: --once ends after a read that found nothing, or a
                # second move in a row (other tables' transactions that never stop).
                if once and not copying and (not moved or (moved_before and self.source.caught_up())):
                    return
                moved_before = moved
                if not copying:
                    self.source.idle(self.pair.poll_interval, self.stop)
                continue
            position, moved_before = read.position, False
            self._retrying(lambda: self.source.acknowledge(position))
            result.applied += applied.applied
            result.parked += applied.parked
            result.batches += 1
            logger.debug("pair %s: applied %d changes up to %s", self.pair.name, applied.applied, dumps(position))

    def _apply_parts(self, parts: Callable, read: "_Read") -> Any:
        """Stream a read into one target transaction, with retries that never apply it twice; the
        checkpoint carries the progress of tables still being copied."""
        attempts = []
        snapshot, tables = self._to_commit()

        def attempt() -> Any:
            if attempts and read.complete and self._committed(read.position, snapshot, tables):
                return ApplyResult(0, 0)  # the connection broke after COMMIT: never apply twice
            attempts.append(1)
            return apply.apply_parts(self.target, self.pair.name, parts, position=lambda: read.position,
                                     snapshot=snapshot, on_error=self.pair.on_error, tables=tables)

        return self._retrying(attempt)

    def _apply(self, mapped: list, position: Any, snapshot: dict | None, reason: str, tables: dict[str, dict]) -> Any:
        """Apply with retries; a retry first asks the target whether the lost attempt had committed."""
        attempts = []

        def attempt() -> Any:
            if attempts and self._committed(position, snapshot, tables):
                return ApplyResult(0, 0)  # the connection broke after COMMIT: never apply twice
            attempts.append(1)
            return apply.apply(self.target, self.pair.name, mapped, position=position, snapshot=snapshot,
                               on_error=self.pair.on_error, reason=reason, tables=tables)

        return self._retrying(attempt)

    def _committed(self, position: Any, snapshot: dict | None, tables: dict[str, dict]) -> bool:
        checkpoint = self.target.checkpoint(self.pair.name)
        return checkpoint is not None and dumps(checkpoint.position) == dumps(position) \
            and dumps(checkpoint.snapshot) == dumps(snapshot) and checkpoint.tables == tables

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """Run ``call``; a passing fault is retried with back-off until it works or we are stopped.
        While it retries, the claim's row says so (``cdc status``: retrying, unhealthy)."""
        delay, attempt = 0.5, 0
        while True:
            attempt += 1
            try:
                outcome = call()
            except (RetryableError, sa.exc.OperationalError) as exc:
                if self.stop.is_set() or (self.max_attempts is not None and attempt >= self.max_attempts):
                    raise
                logger.warning("pair %s: %s; retrying in %.1fs", self.pair.name, _first_line(exc), delay)
                self._say_retrying(_first_line(exc))
                self.stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            if self._retrying_since is not None:
                self._say_retrying(None)
            return outcome

    def _say_retrying(self, error: str | None) -> None:
        """Record in the claim's row that the run retries ``error`` (None: it works again). When the
        target itself is away this cannot be written; `cdc status` then fails to read it too."""
        if not self._claimed or error == self._retrying_since:
            return
        try:
            self.target.note_retrying(self.pair.name, error)
            self._retrying_since = error
        except (sa.exc.SQLAlchemyError, CdcError) as exc:
            logger.debug("pair %s: could not record the retry: %s", self.pair.name, _first_line(exc))


def _source_fault(exc: sa.exc.DBAPIError) -> CdcError:
    """A database error of the source read: retried when the server or connection failed
    (OperationalError), else the pair stops."""
    text = f"source: {first_line(exc.orig)}"
    retry = exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError)
    return RetryableError(text) if retry else SourceError(text)


class _Stop:
    """A runner's stop signal: the run's shared one (SIGTERM stops every pair), or its own (this
    pair alone must stop: its claim was lost)."""

    def __init__(self, shared: threading.Event):
        self.shared, self.own = shared, threading.Event()

    def is_set(self) -> bool:
        return self.shared.is_set() or self.own.is_set()

    def set(self) -> None:
        self.own.set()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                break
            self.own.wait(left)
        return self.is_set()


class _Heartbeat:
    """Refreshes a runner's claim every third of its timeout in a thread of its own, so an idle pair
    keeps it; says so loudly if another process took the pair (whose next commit then fails)."""

    def __init__(self, runner: PairRunner):
        self.runner = runner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"cdc-claim-{runner.pair.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        pair, timeout = self.runner.pair.name, self.runner.pair.claim_timeout
        while not self._stop.wait(timeout / 3):
            try:
                if not self.runner.target.heartbeat(pair, timeout):
                    self.runner.lost = (f"pair {pair}: another process took the pair (its heartbeat was older than "
                                        f"claim_timeout {timeout:g}s, or the pair was claimed over it); this one "
                                        "stopped and committed nothing more. See `cdc status` for who runs it now")
                    logger.error("%s", self.runner.lost)
                    self.runner.stop.set()
                    return
            except (sa.exc.SQLAlchemyError, CdcError) as exc:  # busy or away: the next beat tries again
                logger.debug("pair %s: claim heartbeat failed: %s", pair, _first_line(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _joined(parts: Iterable[Batch], size: int) -> Iterator[Batch]:
    """Consecutive whole transactions joined into parts of about ``size`` changes: an OLTP load's
    many small transactions are then mapped and written a few statements per part, not per
    transaction. A part of a larger transaction (not complete) is passed on as it is."""
    pending: list = []
    position, held = None, False
    for part in parts:
        if not part.complete or (not held and len(part.changes) >= size):
            if held:
                yield Batch(pending, position)
                pending, held = [], False
            yield part
            continue
        pending.extend(part.changes)
        position, held = part.position, True
        if len(pending) >= size:
            yield Batch(pending, position)
            pending, held = [], False
    if held:
        yield Batch(pending, position)


def _prefetched(make: Callable[[], Any], depth: int = 2) -> Any:
    """Iterate ``make()`` in a worker thread, at most ``depth`` items ahead; errors re-raise here.

    If the consumer stops early, the worker is told to stop and its generator is closed in its
    own thread (which releases the source connection it holds).
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        source = make()
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((done, None))
        except BaseException as exc:  # handed to the consumer
            items.put((done, exc))
        finally:
            source.close()

    worker = threading.Thread(target=work, name="cdc-read", daemon=True)
    worker.start()
    try:
        while True:
            item, error = items.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)


class _Read:
    """What one streamed read brought: how many changes, and the position its last complete part ends at."""

    def __init__(self, start: Any):
        self.start = start
        self.reset()

    def reset(self) -> None:
        self.changes, self.position, self.complete = 0, self.start, False

    def add(self, part: Any) -> None:
        self.changes += len(part.changes)
        self.complete = part.complete
        if part.complete:
            self.position = part.position


def _copy(progress: dict[str, dict]) -> dict[str, dict]:
    return {t: dict(p) for t, p in progress.items()}


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
