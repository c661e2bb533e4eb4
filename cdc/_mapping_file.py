"""Mapping files: their schema, and loading them into table specs (cdc.mapping applies them)."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar

from pydantic import Field, StrictBool, model_validator

from . import _transforms, _yaml
from ._schema import ColumnNames, Strict, checked, choice, did_you_mean, fail, validate


@dataclass(frozen=True)
class ColumnSpec:
    """One target column: from a source column (through transforms) or a constant."""

    target: str
    source: str | None
    transforms: tuple[tuple[str, Any], ...] = ()
    origin: str = field(default="", compare=False)  # where it is written: not part of what it means


@dataclass(frozen=True)
class FilterSpec:
    """Keep a source row only when ``column op value`` holds."""

    column: str
    op: str
    value: Any = None
    origin: str = field(default="", compare=False)  # where it is written: not part of what it means


@dataclass(frozen=True)
class LedgerSpec:
    """`mode: ledger`: the target table is an append-only journal (see cdc/ledger.py)."""

    amounts: tuple[str, ...]  #: target columns negated in a reversal
    sequence: str = "entry_no"  #: target column numbering a source key's entries 1, 2, ...; in the target key
    reverses: str = "reverses"  #: target column: in a reversal, the sequence number of the entry it reverses
    entry_date: str | None = None  #: target column dating an entry (closed periods read it)


@dataclass(frozen=True)
class BalanceSpec:
    """`balance:`: one voucher's postings in one source transaction must sum to zero."""

    group_by: str  #: target column naming the voucher
    amount: str | None = None  #: signed amount column, or
    debit: str | None = None  #: debit and credit columns (debit - credit sums to zero)
    credit: str | None = None


#: Conflict policies: what wins when the target row changed since this pair last wrote it.
CONFLICT_POLICIES = ("source_wins", "target_wins", "newest_wins", "manual")
#: What becomes of an update whose target row is missing, and of a delete whose row is missing.
UPDATE_MISSING, DELETE_MISSING = ("insert", "skip", "conflict"), ("skip", "conflict")
MODES = ("upsert", "ledger")


@dataclass(frozen=True)
class TableSpec:
    """How one source table maps to one target table, before it is checked against a schema."""

    source: str
    target: str
    key: tuple[str, ...] | None = None
    columns: tuple[ColumnSpec, ...] | None = None
    filters: tuple[FilterSpec, ...] = ()
    origin: str = field(default="", compare=False)  # where it is written: not part of what it means
    #: Reconciliation's trial balance: (account, date, amount) target columns, or None.
    control_totals: tuple[str, str, str] | None = None
    #: Other mappings may write the same target table (`shared: true`); the config loader then
    #: requires a constant key column whose value differs per writer.
    shared: bool = False
    #: Target columns holding a constant that are part of the target key, after the source key.
    key_constants: tuple[str, ...] = ()
    # -- how changes are decided (cdc/apply/_decide.py); None: the pair's setting ----------------
    conflict: str | None = None  #: one of CONFLICT_POLICIES
    newest: str | None = None  #: newest_wins: the timestamp target column compared on both sides
    update_missing: str = "insert"  #: an update whose target row is missing: insert | skip | conflict
    delete_missing: str = "skip"  #: a delete whose target row is missing: skip | conflict
    detect: bool | None = None  #: compare target rows with what this pair last wrote (conflicts)
    hold: bool | None = None  #: later changes to a parked or conflicted key wait behind it
    ledger: LedgerSpec | None = None  #: `mode: ledger`
    balance: BalanceSpec | None = None
    period: str | None = None  #: target date column closed periods are judged by (default ledger.entry_date)
    closed_before: Any = None  #: a date: changes to rows dated before it are parked for review
    #: Keep a hash of each row written (cdc_row_hashes): conflicts are found by it where the capture
    #: gives no before image (capture timestamp; logical without REPLICA IDENTITY FULL).
    row_hashes: bool = False
    #: The capture reports rows touched with no change (capture timestamp: a new change time only):
    #: a row whose hash is the one stored is skipped. Other captures report real changes, each audited.
    touches: bool = False


@dataclass(frozen=True)
class MappingSpec:
    """All table specs of a pair, keyed by source table."""

    tables: dict[str, TableSpec]
    origin: str = field(default="", compare=False)  # where it is written: not part of what it means


#: The filter operators a mapping file may use, and what each does to (row value, filter value).
FILTER_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "in": lambda a, b: a in b, "not in": lambda a, b: a not in b,
    "is null": lambda a, b: a is None, "is not null": lambda a, b: a is not None,
}


def identity_spec(tables: list[str], origin: str = "") -> MappingSpec:
    """Every table copied to a table of the same name, every column as it is."""
    return MappingSpec({t: TableSpec(t, t, origin=origin) for t in tables}, origin)


# -- the mapping file's schema: every object forbids unknown keys ------------------------------
def _transform(item: Any) -> tuple[str, Any]:
    if isinstance(item, str):
        name, arg = item, None
    elif isinstance(item, dict) and len(item) == 1:
        ((name, arg),) = item.items()
    else:
        raise ValueError("a transform is a name (trim) or a one-key mapping ({decimal: 2})")
    if name not in _transforms.TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}{did_you_mean(name, _transforms.TRANSFORMS)} "
                         f"(known: {', '.join(_transforms.TRANSFORMS)})")
    _transforms.build(name, arg, "UTC")  # ValueError for an argument it does not take
    return name, arg


class _Column(Strict):
    shape: ClassVar[str] = "must be a source column name, {from: column, transforms: [..]} or {constant: value}"
    source: str | None = Field(None, alias="from")
    transforms: list[Annotated[tuple[str, Any], checked(_transform)]] = []
    constant: Any = None

    @classmethod
    def prepare(cls, data: Any) -> Any:
        return {"from": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_origin(self) -> "_Column":
        is_constant = "constant" in self.model_fields_set
        if is_constant == (self.source is not None):
            raise fail("give either from: <source column> or constant: <value>"
                       + (", not both" if is_constant else ""))
        if is_constant and self.transforms:
            raise fail("a constant takes no transforms", "transforms")
        return self


class _Filter(Strict):
    shape: ClassVar[str] = "a filter is {column: c, op: '=', value: v}"
    column: str
    op: choice(*FILTER_OPS)
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> "_Filter":
        given = "value" in self.model_fields_set
        if self.op in ("is null", "is not null"):
            if given:
                raise fail(f"op {self.op!r} takes no value", "value")
        elif not given:
            raise fail(f"op {self.op!r} needs a value")
        elif self.value is None:
            raise fail("value is null: to compare with NULL write op: 'is null' or 'is not null'", "value")
        elif (self.op in ("in", "not in")) != isinstance(self.value, list):
            raise fail(f"op {self.op!r} needs a list value" if self.op in ("in", "not in") else
                       f"op {self.op!r} compares with one value (for a list write op: 'in')", "value")
        return self


class _ControlTotals(Strict):
    shape: ClassVar[str] = "must name the target columns {account: .., date: .., amount: ..}"
    account: str
    date: str
    amount: str


def _conflict(item: Any) -> tuple[str, str | None]:
    if isinstance(item, dict) and len(item) == 1 and "newest_wins" in item:
        column = item["newest_wins"]
        if not isinstance(column, str) or not column:
            raise ValueError("newest_wins names the timestamp column compared on both sides: {newest_wins: updated_at}")
        return "newest_wins", column
    if item == "newest_wins":
        raise ValueError("newest_wins needs the column it compares: {newest_wins: updated_at}")
    if item not in CONFLICT_POLICIES:
        raise ValueError(f"unknown conflict policy {item!r}{did_you_mean(item, CONFLICT_POLICIES)} (known: source_wins, "
                         "target_wins, {newest_wins: <column>}, manual)")
    return item, None


#: A conflict policy as written: a name, or {newest_wins: column}; read as (policy, column or None).
Conflict = Annotated[tuple[str, Any], checked(_conflict)]


class _Ledger(Strict):
    shape: ClassVar[str] = "ledger needs {amounts: [amount columns], sequence: .., reverses: .., entry_date: ..}"
    amounts: ColumnNames
    sequence: str = "entry_no"
    reverses: str = "reverses"
    entry_date: str | None = None


class _Balance(Strict):
    shape: ClassVar[str] = "balance is {group_by: voucher column, amount: column} or {group_by: .., debit: .., credit: ..}"
    group_by: str
    amount: str | None = None
    debit: str | None = None
    credit: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> "_Balance":
        if (self.amount is None) == (self.debit is None and self.credit is None):
            raise fail("give either amount: <signed amount column> or debit: and credit: columns, not both")
        if self.amount is None and (self.debit is None or self.credit is None):
            raise fail("debit and credit go together: give both columns")
        return self


class _Table(Strict):
    shape: ClassVar[str] = ("must be a mapping (target, key, columns, filter, control_totals, shared, conflict, "
                            "mode, ledger, balance, period)")
    target: str | None = None
    key: ColumnNames | None = None
    columns: Annotated[dict[str, _Column], Field(min_length=1)] | None = None
    filter: list[_Filter] = []
    control_totals: _ControlTotals | None = None
    shared: StrictBool = False
    conflict: Conflict | None = None
    update_missing: choice(*UPDATE_MISSING) = "insert"
    delete_missing: choice(*DELETE_MISSING) = "skip"
    mode: choice(*MODES) = "upsert"
    ledger: _Ledger | None = None
    balance: _Balance | None = None
    period: str | None = None

    @model_validator(mode="after")
    def _ledger_with_mode(self) -> "_Table":
        if (self.mode == "ledger") != (self.ledger is not None):
            raise fail("mode: ledger needs ledger: {amounts: [..]} (and ledger: is only read with mode: ledger)",
                       "ledger" if self.mode == "ledger" else "mode")
        if self.ledger is not None and self.conflict is not None:
            raise fail("a ledger table takes no conflict policy: its posted entries are never changed", "conflict")
        return self

    @classmethod
    def prepare(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("filter", ()) is None:
            data = {**data, "filter": []}
        return {} if data is None else data


class _MappingFile(Strict):
    shape: ClassVar[str] = "a mapping file needs 'tables:' mapping source tables to targets"
    tables: Annotated[dict[str, _Table], Field(min_length=1)]


def load_mapping(path: Path) -> MappingSpec:
    """Parse and check a mapping file against its schema; ConfigError names file, line and key."""
    doc = _yaml.load(path)
    model = validate(doc, _MappingFile, doc.data)
    return MappingSpec({name: _table(doc, name, table) for name, table in model.tables.items()}, str(path))


def _table(doc: _yaml.Document, name: str, model: _Table) -> TableSpec:
    keys = ("tables", name)
    columns = None
    if model.columns is not None:
        columns = tuple(_column(doc, keys + ("columns", target), target, column)
                        for target, column in model.columns.items())
    constants = {c.target for c in columns or () if c.source is None}
    key = model.key or ()
    filters = tuple(FilterSpec(f.column, f.op, f.value, doc.where(keys + ("filter", i)))
                    for i, f in enumerate(model.filter))
    totals = model.control_totals
    return TableSpec(
        source=name, target=model.target or name,
        key=tuple(k for k in key if k not in constants) or None,
        columns=columns, filters=filters, origin=doc.where(keys),
        control_totals=(totals.account, totals.date, totals.amount) if totals else None,
        shared=model.shared, key_constants=tuple(k for k in key if k in constants),
        conflict=model.conflict[0] if model.conflict else None, newest=model.conflict[1] if model.conflict else None,
        update_missing=model.update_missing, delete_missing=model.delete_missing,
        ledger=LedgerSpec(tuple(model.ledger.amounts), model.ledger.sequence, model.ledger.reverses,
                          model.ledger.entry_date) if model.ledger else None,
        balance=BalanceSpec(**model.balance.model_dump()) if model.balance else None, period=model.period)


def _column(doc: _yaml.Document, keys: tuple, target: str, model: _Column) -> ColumnSpec:
    if model.source is None:
        return ColumnSpec(target, None, (("constant", model.constant),), doc.where(keys))
    return ColumnSpec(target, model.source, tuple(model.transforms), doc.where(keys))
