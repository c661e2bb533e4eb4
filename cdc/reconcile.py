"""Compare source (as mapped) with target row by row.

This first version reads both sides whole, table by table, in key-ordered chunks and
keeps the rows of one table in memory; checksums by key range and bisection (so large
tables need not be read whole) come with `cdc reconcile`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import values
from ._transforms import TransformError
from .config import Pair
from .pipeline import open_pair

CHUNK = 10_000


@dataclass
class TableDiff:
    """The differences of one mapped table: keys missing in or extra to the target, rows that differ."""

    source_table: str
    target_table: str
    source_rows: int = 0
    target_rows: int = 0
    missing: list[tuple] = field(default_factory=list)
    extra: list[tuple] = field(default_factory=list)
    different: list[tuple[tuple, dict[str, tuple[Any, Any]]]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different)


def compare(pair: Pair) -> list[TableDiff]:
    """Every mapped table of the pair compared row by row through the mapping."""
    source, target, mappings = open_pair(pair)
    try:
        return [_compare_table(source, target, mapping) for mapping in mappings.values()]
    finally:
        source.close()
        target.close()


def _rows(reader: Any, table: str, key: tuple[str, ...]):
    after = None
    while True:
        rows = reader.snapshot(table, key, after, CHUNK)
        yield from rows
        if len(rows) < CHUNK:
            return
        after = tuple(rows[-1][k] for k in key)


def _normalise(row: dict, columns: dict) -> dict:
    result = {}
    for name, value in row.items():
        try:
            result[name] = values.fit(value, columns[name]) if name in columns else value
        except TransformError:
            result[name] = value
    return result


def _compare_table(source: Any, target: Any, mapping: Any) -> TableDiff:
    diff = TableDiff(mapping.source, mapping.target)
    info = target.describe(mapping.target)
    columns = dict(zip(info.column_names, info.columns))
    expected = {}
    for row in _rows(source, mapping.source, mapping.source_key):
        diff.source_rows += 1
        if mapping.passes(row):
            mapped = _normalise(mapping.map_row(row, mapping.source_key_of(row)), columns)
            expected[tuple(mapped[k] for k in mapping.target_key)] = mapped
    for row in _rows(target, mapping.target, mapping.target_key):
        diff.target_rows += 1
        actual = _normalise(row, columns)
        key = tuple(actual[k] for k in mapping.target_key)
        want = expected.pop(key, None)
        if want is None:
            diff.extra.append(key)
            continue
        changed = {c: (want[c], actual.get(c)) for c in want if want[c] != actual.get(c)}
        if changed:
            diff.different.append((key, changed))
    diff.missing = sorted(expected, key=repr)
    return diff
