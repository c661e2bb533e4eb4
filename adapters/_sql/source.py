"""The Source over SQLAlchemy Core that the capture modes build on."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Iterator

import sqlalchemy as sa

from cdc.changes import Batch, Position, dumps
from cdc.errors import SourceError

from .reads import KeyedReads, same


def kept_note(table: str, where: str = "triggers on") -> str:
    """What `cdc install` says of a table whose capture it kept (see Source.prepare)."""
    what = f"{table} {where}" if where.startswith("in ") else f"{where} {table}"
    return (f"kept {what}: no longer in the pair, but its checkpoint still streams it (run `cdc run --once "
            f"CONFIG`, then `cdc install CONFIG` again to take it down)")


class SqlSource(KeyedReads):
    """A Source over SQLAlchemy Core; a capture mode adds prepare/read/acknowledge."""

    #: Every stored value fits its column's declared type (not so in SQLite, whose NUMERIC(12,2)
    #: column can hold 3.005): then a target column of a type that holds them all needs no fit check.
    enforces_types = True

    def __init__(self, engine: sa.Engine, pair: str):
        self.engine = engine
        self.pair = pair
        self.keys: dict[str, tuple[str, ...]] = {}

    def watch(self, keys: dict[str, tuple[str, ...]]) -> None:
        """The tables this pair captures and the key columns that identify their rows."""
        self.keys = dict(keys)

    def format_position(self, position: Position) -> str:
        return dumps(position)

    def idle(self, seconds: float, stop: Any) -> None:
        """A polling capture learns of changes only by reading: it waits the whole poll interval."""
        stop.wait(max(0.0, seconds))

    def caught_up(self) -> bool:
        """A read of these sources reads up to the log's end (a log connection kept open may not)."""
        return True

    def generation(self) -> str | None:
        """None: by default a capture mode installs nothing that could be re-created."""
        return None

    def check_position(self, position: Position, written_at: dt.datetime | None = None) -> None:
        """By default any position is taken as it is."""

    def warnings(self) -> list[tuple[str, str]]:
        """By default a capture mode sees every row: nothing to warn about."""
        return []

    def _position_ahead(self, position: Position, newest: Any, what: str,
                        order: Callable[[Any], Any] = same) -> None:
        """SourceError when ``position`` lies beyond ``newest``, the newest the source ever issued
        (``order`` makes positions comparable)."""
        if position is not None and newest is not None and order(position) > order(newest):
            raise SourceError(
                f"pair {self.pair}: the checkpoint ({self.format_position(position)}) is ahead of {what} "
                f"({self.format_position(newest)}): capture was installed again, or the checkpoint was edited, and "
                "changes since are not where the checkpoint says. Copy the tables again with "
                "`cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed by "
                "`cdc reconcile CONFIG --repair`)")

    def _position_behind(self, position: Position, released: Any, what: str,
                         order: Callable[[Any], Any] = same) -> None:
        """SourceError when ``position`` lies before ``released``, the point up to which the source
        has already let go of its changes (purged the changelog, confirmed the slot): streaming
        from the checkpoint would silently skip what lies between.

        In normal operation the checkpoint commits before the source is acknowledged, so a crash
        between the two leaves the checkpoint ahead of ``released``, never behind it: behind means
        the target's state tables are older than the source believes (restored from a backup) or
        another target acknowledged this pair's changes meanwhile."""
        if position is not None and released is not None and order(position) < order(released):
            raise SourceError(
                f"pair {self.pair}: the checkpoint ({self.format_position(position)}) is behind {what} "
                f"({self.format_position(released)}): the changes in between are gone from the source (the target was "
                "restored from an older backup, or another target ran this pair meanwhile) and would be skipped. "
                "Copy the tables again with `cdc run --resnapshot CONFIG` (rows deleted meanwhile are then removed "
                "by `cdc reconcile CONFIG --repair`)")

    def begin_snapshot(self) -> Position:
        return self.current_position()

    def end_snapshot(self) -> None:
        pass

    def uncaptured(self, tables: list[str]) -> list[str]:
        """A capture that reads every table's changes (the binlog, timestamp polling) misses none."""
        return []

    def whole_before_images(self, table: str) -> bool:
        """Triggers and the binlog (binlog_row_image FULL) log the whole old row; timestamp capture
        has none, which the pair's rules already say (row hashes)."""
        return True

    def join_stream(self, position: Position, tables: list[str]) -> Position:
        """A capture that reads every table's changes (the binlog) needs nothing more to join."""
        return position

    def stream(self, after: Position, max_changes: int) -> Iterator[Batch]:
        """The changes of one read in parts; only a part with ``complete`` set ends on a transaction
        boundary and carries the position. By default the whole read is one complete part."""
        yield self.read(after, max_changes)

