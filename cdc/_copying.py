"""A running pair's copy of its tables: the first snapshot and tables added to a streaming pair."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import sqlalchemy as sa
from tqdm import tqdm

from . import apply
from ._streaming import _first_line, _prefetched
from .mapping import TableMapping, map_snapshot

if TYPE_CHECKING:
    from .pipeline import RunResult

logger = logging.getLogger("cdc.pipeline")  # the name `cdc run` prints with every line


class _Copying:
    """PairRunner's part that copies tables, with COPY or in row chunks (mixed into PairRunner)."""

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
                    self.observer.copied(table, rows)

                while not progress["done"] and not self.stop.is_set():
                    if self._bulk_ok(table, mapping):
                        counted(self._bulk_or_rows(table, mapping, position, progress))
                    else:
                        self._row_chunks(table, mapping, position, progress, counted)
            if progress["done"]:
                logger.info("pair %s: snapshot of %s done (%d rows)", self.pair.name, table, total,
                            extra={"pair": self.pair.name, "table": table})

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
            self.observer.copied(table, rows)

        deadline = time.monotonic() + self.pair.poll_interval
        while not progress["done"] and not self.stop.is_set() and time.monotonic() < deadline:
            if self._bulk_ok(table, mapping):
                counted(self._bulk_or_rows(table, mapping, position, progress))
            else:
                self._row_chunks(table, mapping, position, progress, counted, deadline)
        if progress["done"]:
            logger.info("pair %s: snapshot of added table %s done (%d rows); it streams from now on",
                        self.pair.name, table, progress["rows"], extra={"pair": self.pair.name, "table": table})
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
            # A table kept by row hash (capture timestamp) is copied as rows: the hash of each is stored.
            capable = self._copy_format() is not None and not mapping.spec.row_hashes
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
