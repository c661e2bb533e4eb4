"""Target table definitions derived from a source table through its mapping (for `cdc init`)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from .mapping import TableMapping


def target_key(mapping: TableMapping) -> tuple[str, ...]:
    """The target table's primary key: the mapping's target key; a ledger's entries are numbered
    within it by the sequence column (see cdc/ledger.py)."""
    ledger = mapping.spec.ledger
    return tuple(mapping.target_key) + ((ledger.sequence,) if ledger is not None else ())


def ledger_problem(mapping: TableMapping, table: sa.Table | None) -> str | None:
    """Why ``mapping``'s ledger cannot work (an amount or date column it does not fill, a column of
    its own the mapping fills too; an existing target ``table`` lacking a column, or keyed otherwise),
    said with the fix; None when it can, or the table is no ledger."""
    ledger = mapping.spec.ledger
    if ledger is None:
        return None
    mapped = mapping.target_columns
    unmapped = [c for c in (*ledger.amounts, ledger.entry_date) if c is not None and c not in mapped]
    if unmapped:
        return f"{unmapped[0]!r} is not a column the mapping writes to {mapping.target} (it writes {', '.join(mapped)})"
    filled = [c for c in (ledger.sequence, ledger.reverses) if c in mapped]
    if filled or ledger.sequence == ledger.reverses:
        return (f"the ledger's sequence and reverses columns are its own: they must differ, and the mapping must not "
                f"fill them ({(filled or [ledger.sequence])[0]})")
    if table is None:
        return None
    missing = [c for c in (ledger.sequence, ledger.reverses) if c not in table.columns]
    if missing:
        return (f"target table {table.name} is a ledger (mode: ledger) but lacks column(s) {', '.join(missing)}: add "
                f"{ledger.sequence} BIGINT NOT NULL (in the primary key) and {ledger.reverses} BIGINT NULL, or drop "
                "the table and run `cdc init CONFIG`")
    key = tuple(c.name for c in table.primary_key.columns)
    if set(key) != set(target_key(mapping)):
        return (f"target table {table.name} is a ledger (mode: ledger) but its primary key is "
                f"({', '.join(key) or 'none'}), not ({', '.join(target_key(mapping))}): each key's entries are numbered by {ledger.sequence}")
    return None


def target_columns(mapping: TableMapping, source_columns: list[sa.Column]) -> list[sa.Column]:
    """The target table's columns: source types, changed where a transform changes the type; a
    ledger's sequence (BIGINT NOT NULL, in the key) and reverses (BIGINT NULL) columns after them."""
    by_name = {c.name: c for c in source_columns}
    result = []
    for spec_target, spec_source, transforms in mapping.column_specs():
        source = by_name.get(spec_source) if spec_source else None
        kind = source.type if source is not None else sa.Text()
        nullable = source.nullable if source is not None else True
        for name, arg in transforms:
            kind = _after_transform(name, arg, kind)
        result.append(sa.Column(spec_target, kind, nullable=nullable))
    ledger = mapping.spec.ledger
    if ledger is not None:
        result += [sa.Column(ledger.sequence, sa.BigInteger(), nullable=False),
                   sa.Column(ledger.reverses, sa.BigInteger(), nullable=True)]
    return result


def _after_transform(name: str, arg: Any, kind: sa.types.TypeEngine) -> sa.types.TypeEngine:
    if name == "decimal":
        precision = getattr(kind, "precision", None) or 18
        return sa.Numeric(max(precision, arg + 1), arg)
    if name == "date_from_timestamp":
        return sa.Date()
    if name == "boolean":
        return sa.Boolean()
    if name == "constant":
        return _type_of(arg)
    if name == "map":
        return _common_type(list(arg.values()))
    return kind


def _type_of(value: Any) -> sa.types.TypeEngine:
    if isinstance(value, bool):
        return sa.Boolean()
    if isinstance(value, int):
        return sa.BigInteger()
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return sa.Numeric(18, max(-exponent, 0) if isinstance(exponent, int) else 2)
    if isinstance(value, dt.datetime):
        return sa.DateTime()
    if isinstance(value, dt.date):
        return sa.Date()
    return sa.Text()


def _common_type(values: list[Any]) -> sa.types.TypeEngine:
    kinds = {type(_type_of(v)) for v in values if v is not None}
    return _type_of(next(v for v in values if v is not None)) if len(kinds) == 1 else sa.Text()
