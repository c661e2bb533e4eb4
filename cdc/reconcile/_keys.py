"""Differing keys on both sides, and how the rows behind them differ (read by key, never with --where)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from .. import values
from .._transforms import TransformError, to_decimal
from ..errors import RowError
from ..mapping import TableMapping
from ._canonical import is_integer
from ._report import RowDifference
from ._side import Image, Side, both


def paired(mine: Side, theirs: Side, suspects: dict[str, tuple]) -> dict[str, tuple]:
    """Each differing key text with its key on both sides, looked up on the side whose
    fingerprints did not have it: the target key of a source row through the mapping; the source
    key of a target row from its key columns where the mapping copies them as they are, else by
    reading the source's keys. Both by key, never with --where: a row selected on one side only
    (a --where on a transformed column, a non-deterministic one) or in flight is then compared,
    not reported, and a repair deletes a target row only when the source has no row with its key.
    A source key of None: the source has none."""
    invertible = _invertible(mine.mapping)
    orphans = {text for text, (source_key, _) in suspects.items() if source_key is None}
    scanned = mine.keys_mapping_to(orphans) if orphans and not invertible else {}
    source_columns, target_columns = mine.key_columns, theirs.key_columns
    pairs = {}
    for text, (source_key, target_key) in suspects.items():
        if source_key is None:
            source_key = _source_key(mine.mapping, target_key, source_columns) if invertible else scanned.get(text)
        if target_key is None and source_key is not None:
            target_key = _target_key(mine, source_key, target_columns)
        pairs[text] = (source_key, target_key)
    return pairs


def _invertible(mapping: TableMapping) -> bool:
    """Whether the mapping copies every source key column as it is (renamed at most), so a target
    key is the source key (followed, in a shared table, by the mapping's constant key columns)."""
    transforms = {target: transforms for target, _, transforms in mapping.column_specs()}
    return not any(transforms[k] for k in mapping.target_key[:len(mapping.source_key)])


def _source_key(mapping: TableMapping, target_key: tuple, columns: list[sa.Column]) -> tuple | None:
    """The source key of a target key the mapping copies as it is: its first columns (the rest are
    a shared table's constant key columns, which the target rows compared always hold); None when no
    source row can have it (a value the source's key column cannot hold)."""
    return converted(tuple(target_key[:len(mapping.source_key)]), columns)


def _target_key(mine: Side, source_key: tuple, columns: list[sa.Column]) -> tuple | None:
    """The target key the mapping makes of a source key (None: it cannot map it)."""
    try:
        mapped = mine.mapping.target_key_of(source_key)
    except RowError:
        return None
    fitted = [_fit_or_keep(value, column) for value, column in zip(mapped, columns)]
    return converted(tuple(fitted), columns)


def _fit_or_keep(value: Any, column: sa.Column) -> Any:
    try:
        return values.fit(value, column)
    except TransformError:
        return value


def converted(key: tuple, columns: list[sa.Column]) -> tuple | None:
    """A key as the other side holds it, in these key columns' Python types (a UUID as uuid or as
    text, an integer as int); None when no row there can have it (text that is no UUID)."""
    result = []
    for value, column in zip(key, columns):
        kind = column.type
        try:
            if isinstance(kind, sa.Uuid) and not isinstance(value, uuid.UUID):
                value = uuid.UUID(str(value))
            elif isinstance(kind, sa.String) and not isinstance(value, str):
                value = str(value)
            elif is_integer(kind) and not isinstance(value, int):
                value = values.fit(value, column)
            elif isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float) and not isinstance(value, Decimal):
                value = to_decimal(value)
        except (ValueError, TransformError):
            return None
        result.append(value)
    return tuple(result)


def row_differences(mine: Side, theirs: Side, pairs: dict[str, tuple]) -> dict[str, RowDifference]:
    """Read the keys on both sides now (by key, without --where): the ones that really differ, by
    key text. A source row the mapping refuses comes back as ``unmappable``."""
    source_rows, target_rows = both(lambda: mine.rows([s for s, _ in pairs.values() if s is not None]),
                                     lambda: theirs.rows([t for _, t in pairs.values() if t is not None]))
    found = {}
    for text, (source_key, target_key) in pairs.items():
        source = source_rows.get(mine.key_id(source_key)) if source_key is not None else None
        target = target_rows.get(theirs.key_id(target_key)) if target_key is not None else None
        image = mine.image(source) if source is not None else None
        have = theirs.normalised(target) if target is not None else None
        difference = _difference(mine, theirs, source_key, image, have)
        if difference is not None:
            found[text] = difference
    return found


def _difference(mine: Side, theirs: Side, source_key: tuple | None, image: Image | None,
                have: dict | None) -> RowDifference | None:
    """How one key differs: the source's image of it (None: no such source row) against the target's row."""
    if image is not None and image.error is not None:
        return RowDifference("unmappable", source_key, error=image.error.describe(), column=image.error.column)
    want = image.row if image is not None else None
    if want is None and have is None:
        return None
    shown_key = tuple((want if want is not None else have)[k] for k in theirs.key)
    if have is None:
        difference = RowDifference("missing", shown_key)
    elif want is None:
        deleted = mine.mapping is not None and mine.mapping.soft_delete
        note = None if image is None else (f"the source has this key, soft-deleted ({deleted} set) or left out by the "
                                           "mapping's filter" if deleted else
                                           "the source has this key; the mapping's filter leaves the row out")
        difference = RowDifference("extra", shown_key, note=note)
    else:
        columns = {name: (want[name], have[name]) for name, column in mine.target_columns.items()
                   if mine.canonical_of(want[name], column, name, source_key) !=
                   theirs.canonical_of(have[name], column, name, shown_key)}
        if not columns:
            return None
        difference = RowDifference("different", shown_key, columns)
    totals = mine.mapping.spec.control_totals
    if totals is not None:
        difference.groups = {mine.group(row, totals[0], totals[1]) for row in (want, have) if row is not None}
    return difference
