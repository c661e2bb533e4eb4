"""Target table definitions derived from a source table through its mapping (for `cdc init`)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from .mapping import TableMapping


def target_columns(mapping: TableMapping, source_columns: list[sa.Column]) -> list[sa.Column]:
    """The target table's columns: source types, changed where a transform changes the type."""
    by_name = {c.name: c for c in source_columns}
    result = []
    for spec_target, spec_source, transforms in mapping.column_specs():
        source = by_name.get(spec_source) if spec_source else None
        kind = source.type if source is not None else sa.Text()
        nullable = source.nullable if source is not None else True
        for name, arg in transforms:
            kind = _after_transform(name, arg, kind)
        result.append(sa.Column(spec_target, kind, nullable=nullable))
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
