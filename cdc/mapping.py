"""Mappings applied: a table spec checked against the source schema and compiled; changes and rows mapped."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import _transforms
from ._mapping_file import FILTER_OPS, ColumnSpec, FilterSpec, MappingSpec, TableSpec, identity_spec, load_mapping
from ._schema import did_you_mean
from .changes import Change, Row, dumps
from .errors import ConfigError, RowError

__all__ = ["ColumnSpec", "FilterSpec", "MappedChange", "MappingSpec", "TableMapping", "TableSpec", "TargetOp",
           "identity_change", "identity_spec", "load_mapping", "map_changes", "map_snapshot"]


class TargetOp(NamedTuple):
    """What to do to one target row: ``upsert`` ``row`` or ``delete`` ``key`` (immutable, cheap to build)."""

    op: str
    table: str
    key_columns: tuple[str, ...]
    key: tuple
    row: Row | None
    change: Change


class TableMapping:
    """A table spec checked against the source schema and compiled into functions."""

    def __init__(self, spec: TableSpec, source_columns: list[str], source_key: tuple[str, ...], source_zone: str,
                 soft_delete: str | None = None):
        self.spec = spec
        #: Capture timestamp's soft-delete column: a row with it set is deleted, so the copy leaves it
        #: out and reconcile does not count it (a delete's before image carries it set, and deletes).
        self.soft_delete = soft_delete if soft_delete in source_columns else None
        self.source = spec.source
        self.target = spec.target
        self.source_key = source_key
        self.source_zone = source_zone
        specs = spec.columns or tuple(ColumnSpec(c, c) for c in source_columns)
        for col in specs:
            if col.source is not None and col.source not in source_columns:
                raise ConfigError(f"tables.{spec.source}.columns.{col.target}: source table {spec.source} has no "
                                  f"column {col.source!r}{did_you_mean(col.source, source_columns)} "
                                  f"({col.origin or spec.origin})")
        for f in spec.filters:
            if f.column not in source_columns:
                raise ConfigError(f"tables.{spec.source}.filter: source table {spec.source} has no column "
                                  f"{f.column!r}{did_you_mean(f.column, source_columns)} ({f.origin or spec.origin})")
        self._specs = specs
        self._needed = frozenset([c.source for c in specs if c.source is not None] + [f.column for f in spec.filters]
                                 + list(source_key) + ([self.soft_delete] if self.soft_delete else []))
        # (what a change's after image must hold)
        self._columns = [(c.target, c.source, [_transforms.build(n, a, source_zone) for n, a in c.transforms])
                         for c in specs]
        by_source = {c.source: c.target for c in specs if c.source is not None}
        missing = [k for k in source_key if k not in by_source]
        if missing:
            raise ConfigError(f"tables.{spec.source}.columns: key column(s) {', '.join(missing)} of {spec.source} "
                              f"must be mapped to a target column ({spec.origin})")
        # A shared table's key also holds the constant that tells its writers apart.
        self.target_key = tuple(by_source[k] for k in source_key) + spec.key_constants
        self.target_columns = [c[0] for c in self._columns]
        unknown = [c for c in spec.control_totals or () if c not in self.target_columns]
        if unknown:
            raise ConfigError(f"tables.{spec.source}.control_totals: {unknown[0]!r} is not a target column of "
                              f"{spec.target} ({spec.origin})")
        self._check_rule_columns(spec)
        self._column_set = frozenset(self.target_columns)
        self._filters = [(f.column, FILTER_OPS[f.op], f.value) for f in spec.filters]
        #: Every row copied as it is: same column names, no transform, no filter (never a ledger's
        #: entries, which add their sequence: a snapshot of one goes row by row, as entries).
        self.is_identity = (not self._filters and spec.ledger is None and self.soft_delete is None
                            and all(c.source == c.target and not c.transforms for c in specs))

    def _check_rule_columns(self, spec: TableSpec) -> None:
        """The columns balance, period, ledger.entry_date and newest_wins name must be target columns
        the mapping writes: the rules read them from the mapped rows, where a misspelt name would read
        NULL (every voucher balanced, no posting dated, every conflict a tie) and pass everything."""
        named = [(f"balance.{part}", getattr(spec.balance, part)) for part in ("group_by", "amount", "debit", "credit")
                 if spec.balance is not None and getattr(spec.balance, part) is not None]
        entry_date = spec.ledger.entry_date if spec.ledger is not None else None
        named += [("ledger.entry_date", entry_date)] if entry_date is not None else []
        named += [("period", spec.period)] if spec.period is not None and spec.period != entry_date else []
        named += [("conflict.newest_wins", spec.newest)] if spec.newest is not None else []
        for key, column in named:
            if column not in self.target_columns:
                hint = did_you_mean(column, self.target_columns) or f" (it writes {', '.join(self.target_columns)})"
                raise ConfigError(f"tables.{spec.source}.{key}: {column!r} is not a target column the mapping "
                                  f"writes to {spec.target}{hint} ({spec.origin})")

    @property
    def key_constants(self) -> dict[str, Any]:
        """The constant key columns that mark this mapping's rows in a shared target table, with
        their values ({} for a table only this mapping writes)."""
        return {c.target: c.transforms[0][1] for c in self._specs if c.target in self.spec.key_constants}

    def identity(self) -> dict[str, str]:
        """What the target rows this mapping writes depend on, as the checkpoint records it for a
        copied table: the target table, and digests of the columns (with their sources and
        transforms), the filter and the key. A table whose identity changed since its copy (see
        identity_change) is copied again: rows written under the old mapping are not what the new
        one writes, and a new target table has none of them. The pair's source_timezone counts too:
        zone-less timestamps are read in it, so the rows hold other instants under another zone.
        The mode counts: a journal of entries (`mode: ledger`, with its columns) is not a table of
        rows, so a table switched from one to the other is copied again into its new target."""
        columns = {target: [source, [list(t) for t in transforms]]
                   for target, source, transforms in sorted(self.column_specs(), key=lambda c: c[0])}
        filters = [[f.column, f.op, f.value] for f in self.spec.filters]
        identity = {"target": self.target, "columns": _digest(columns), "filter": _digest(filters),
                    "key": _digest([self.source_key, self.target_key]), "zone": self.source_zone,
                    "mode": _mode(self.spec)}
        if self.spec.shared:  # read by pairs of other configs writing the same target table
            identity["shared"] = True
        return identity

    def column_specs(self) -> list[tuple[str, str | None, tuple[tuple[str, Any], ...]]]:
        """(target column, source column or None, transforms as (name, argument)) in target order."""
        return [(c.target, c.source, c.transforms) for c in self._specs]

    def passes(self, row: Row, deleted_too: bool = False) -> bool:
        """Whether a source row image passes the mapping's filters (and is not soft-deleted, unless
        ``deleted_too``: a soft delete's before image is the row the target holds)."""
        if self.soft_delete is not None and not deleted_too and row.get(self.soft_delete):
            return False
        filters = self._filters
        if deleted_too and self.soft_delete is not None:
            # A filter on the soft-delete column said "not deleted" of the row the target holds; the image
            # carries the flag the delete set, which would hide the delete from the target for good.
            filters = [f for f in filters if f[0] != self.soft_delete]
        if not filters:
            return True
        try:
            return all(fn(row.get(column), value) for column, fn, value in filters)
        except TypeError as exc:
            raise RowError(f"filter cannot compare: {exc}", table=self.source) from None

    def map_row(self, row: Row, key: tuple = ()) -> Row:
        """The target row for a source row; RowError names the column that failed."""
        if self.is_identity:
            # The row itself when it has exactly the mapped columns (rows are never changed in place).
            if row.keys() == self._column_set:
                return row
            return {c: row.get(c) for c in self.target_columns}
        result = {}
        for target, source, transforms in self._columns:
            value = row.get(source) if source is not None else None
            try:
                for fn in transforms:
                    value = fn(value)
            except _transforms.TransformError as exc:
                raise RowError(str(exc), table=self.source, key=key, column=source or target) from None
            result[target] = value
        return result

    def image(self, row: Row, key: tuple = ()) -> Row:
        """A source row image as the target columns it maps to, for the audit log: never a column
        the mapping does not copy. Unlike map_row it never fails: a value its transform refuses (an
        old image, written before the transform was added) is recorded as {"$error": why}."""
        try:
            return self.map_row(row, key)
        except RowError:
            pass
        result: Row = {}
        for target, source, transforms in self._columns:
            value = row.get(source) if source is not None else None
            try:
                for fn in transforms:
                    value = fn(value)
            except _transforms.TransformError as exc:
                value = {"$error": str(exc)}
            result[target] = value
        return result

    def read_columns(self) -> frozenset[str]:
        """The source columns the mapping reads (columns, filters, key): all a change needs to be mapped again."""
        return self._needed

    def target_key_of(self, key: tuple) -> tuple:
        """The target key for a source key (key columns go through their transforms too)."""
        row = self.map_row(dict(zip(self.source_key, key)), key)
        return tuple(row[c] for c in self.target_key)

    def source_key_of(self, row: Row) -> tuple:
        return tuple([row[c] for c in self.source_key])

    def map_change(self, change: Change) -> list[TargetOp]:
        """The target operations for one source change, with filters and key moves applied."""
        if change.op == "delete":
            if change.before is not None and not self.passes(change.before, deleted_too=True):
                return []
            return [TargetOp("delete", self.target, self.target_key, self.target_key_of(change.key), None, change)]
        after = change.after or {}
        if after.keys() != self._column_set or not self.is_identity:
            missing = self._needed - after.keys()
            if missing:
                raise RowError(
                    f"the captured change has no column {', '.join(sorted(missing))}, which the mapping reads: its "
                    f"capture was made before the column was added to {self.source}. Run `cdc install CONFIG`, then "
                    "copy the table again with `cdc run --resnapshot CONFIG` (changes captured before the install "
                    "lack the column)", table=self.source, key=change.key)
        if (not self._filters and self.soft_delete is None) or self.passes(after):
            ops = []
            if change.before is not None:
                old_key = self.source_key_of(change.before)
                if old_key != change.key:
                    ops.append(TargetOp("delete", self.target, self.target_key, self.target_key_of(old_key), None, change))
            row = self.map_row(after, change.key)
            ops.append(TargetOp("upsert", self.target, self.target_key, tuple([row[c] for c in self.target_key]), row,
                                change))
            return ops
        if change.op == "insert" or (change.before is not None and not self.passes(change.before)):
            return []
        # The row left the filter: it must leave the target too.
        old_key = self.source_key_of(change.before) if change.before is not None else change.key
        return [TargetOp("delete", self.target, self.target_key, self.target_key_of(old_key), None, change)]


#: What each part of a mapping identity covers, as `cdc run` and `cdc status` name a change of it.
_IDENTITY_PARTS = {"columns": "its columns or their transforms", "filter": "its filter", "key": "its key",
                   "mode": "its mode (upsert, or ledger and its columns)"}
#: What an identity recorded before a part existed had for it (every table was upserted before ledger mode).
_IDENTITY_DEFAULTS = {"mode": "upsert"}


def identity_change(stored: dict | None, current: dict) -> str | None:
    """Why a table copied under the ``stored`` identity must be copied again under ``current``
    (see TableMapping.identity), e.g. "its target changed from a to a2", or None when the rows
    it has are what the mapping writes. A part the stored identity lacks (recorded by an older
    version, or None: not recorded at all) is taken to be unchanged: nothing tells otherwise."""
    if not stored:
        return None
    if stored.get("target") not in (None, current["target"]):
        return f"its target changed from {stored['target']} to {current['target']}"
    if stored.get("zone") not in (None, current["zone"]):
        return f"the pair's source_timezone changed from {stored['zone']} to {current['zone']}"
    changed = [text for part, text in _IDENTITY_PARTS.items()
               if stored.get(part, _IDENTITY_DEFAULTS.get(part)) not in (None, current[part])]
    return f"{' and '.join(changed)} changed" if changed else None


def _mode(spec: TableSpec) -> str:
    """``upsert``, or ``ledger:`` and a digest of the ledger's columns (amounts, sequence, reverses, date)."""
    ledger = spec.ledger
    if ledger is None:
        return "upsert"
    return "ledger:" + _digest([list(ledger.amounts), ledger.sequence, ledger.reverses, ledger.entry_date])


def _digest(value: Any) -> str:
    return hashlib.sha256(dumps(value).encode()).hexdigest()[:16]


_UNMAPPED = object()
#: See MappedChange.before_row.
NOT_WHOLE = object()


@dataclass(slots=True)
class MappedChange:
    """One source change and the target operations it became (or the error that stopped it)."""

    change: Change
    mapping: TableMapping
    ops: list[TargetOp] = field(default_factory=list)
    error: RowError | None = None
    #: What the decision step decided, for the change's audit row: (decision, policy, detail, the
    #: target row found before it, or None); None: applied as mapped.
    note: tuple | None = None
    _before: Any = field(default=_UNMAPPED, repr=False, compare=False)
    _before_row: Any = field(default=_UNMAPPED, repr=False, compare=False)

    def before_row(self) -> Row | None | object:
        """The target row this change's before image says was there: the image mapped, None when
        the mapping's filter leaves it out, ``NOT_WHOLE`` when there is no image or it lacks a
        column the mapping reads (the capture gave only the key); worked out once."""
        if self._before_row is _UNMAPPED:
            before, mapping = self.change.before, self.mapping
            if before is None or not before.keys() >= mapping.read_columns():
                self._before_row = NOT_WHOLE
            else:
                self._before_row = self.before_image() if mapping.passes(before) else None
        return self._before_row

    def before_image(self) -> Row | None:
        """The change's before image as the target columns it maps to (``mapping.image``: never
        fails), None without one; mapped once (item 0, conflict detection and the audit row ask)."""
        if self._before is _UNMAPPED:
            before = self.change.before
            self._before = None if before is None else self.mapping.image(before, self.change.key)
        return self._before


def map_changes(changes: list[Change], mappings: dict[str, TableMapping]) -> list[MappedChange]:
    """Map a batch; a row that cannot be mapped carries its RowError instead of ops."""
    result = []
    for change in changes:
        mapping = mappings[change.table]
        try:
            result.append(MappedChange(change, mapping, mapping.map_change(change)))
        except RowError as exc:
            exc.table, exc.key = exc.table or change.table, exc.key or change.key
            result.append(MappedChange(change, mapping, [], exc))
    return result


def map_snapshot(rows: list[Row], mapping: TableMapping) -> list[MappedChange]:
    """Snapshot rows of one table as inserts, mapped. An identity mapping without filters builds
    the one upsert per row directly (what map_change would give, at a third of the cost)."""
    table, key_columns = mapping.source, mapping.source_key
    if not mapping.is_identity:
        return map_changes([Change("insert", table, tuple([r[k] for k in key_columns]), None, r) for r in rows],
                           {table: mapping})
    target, target_key, wanted = mapping.target, mapping.target_key, mapping._column_set
    result = []
    for row in rows:
        key = tuple([row[k] for k in key_columns])
        change = Change("insert", table, key, None, row)
        image = row if row.keys() == wanted else {c: row.get(c) for c in mapping.target_columns}
        result.append(MappedChange(change, mapping, [TargetOp("upsert", target, target_key, key, image, change)]))
    return result
