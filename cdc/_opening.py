"""Opening a pair (its source, target and checked mappings) and why a pair cannot run."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from . import registry
from ._typecheck import check_types
from ._secrets import mask_url
from .changes import dumps
from .config import Connection, Pair
from .errors import ConfigError, SchemaError, SourceError, TargetError
from .mapping import TableMapping, TableSpec

logger = logging.getLogger("cdc.pipeline")  # the name `cdc run` prints with every line


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
            own = (spec.ledger.sequence, spec.ledger.reverses) if spec.ledger else ()  # a journal's own columns
            gone = [c for c in have if c not in columns and c not in own]
            if gone:
                raise SchemaError(f"source table {spec.source} has no column {gone[0]!r}, which target table "
                                  f"{spec.target} has: dropped or renamed at the source? The pair stops; to go on "
                                  "without it, list the columns in a mapping file")
            ignored = [c for c in columns if c not in have]
            if ignored:
                logger.warning("pair %s: source table %s has column(s) %s that target table %s lacks; they are "
                               "not copied", pair.name, spec.source, ", ".join(ignored), spec.target)
                columns = [c for c in columns if c in have]
        if spec.detect and not spec.row_hashes and spec.ledger is None and not source.whole_before_images(spec.source):
            # Nothing to compare a target row with (logical capture without REPLICA IDENTITY FULL):
            # conflicts are found by the hash of the row the pair last wrote, as under capture timestamp.
            spec = dataclasses.replace(spec, row_hashes=True)
        soft_delete = pair.timestamp.soft_delete if pair.capture == "timestamp" and pair.timestamp else None
        mapping = TableMapping(spec, columns, tuple(key), pair.source_timezone, soft_delete)
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
        _reach(source, "source", pair.source, SourceError)
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
    target = adapter.target(connection.url)
    if create and adapter.capabilities.creates_database_on_connect:
        return target  # connecting makes the file: `cdc init` does so once the source is known to be there
    try:
        _reach(target, "target", connection, TargetError)
    except TargetError:
        target.close()
        raise
    return target


def _reach(database: Any, side: str, connection: Connection, error: type) -> None:
    """``error`` naming the connection when its database cannot be reached (the driver's words,
    password masked): a failed connect said only "database: connection failed", not which one."""
    try:
        with database.reading():
            pass
    except sa.exc.OperationalError as exc:
        words = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        said = mask_url(words[0] if words else type(exc).__name__)
        said = said[len("connection failed: "):] if said.startswith("connection failed: ") else said  # psycopg's
        # The connection's name, not its URL: a secret written where the host goes would show.
        raise error(f"{side} {connection.name}: connection failed: {said}") from None


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
