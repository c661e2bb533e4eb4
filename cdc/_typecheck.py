"""Check a mapping against the column types of its source and target tables, before any row moves.

Policy: what would fail for every row (``upper`` on a number, a column the target table lacks, a
filter comparing a number column with text) is a ConfigError naming the mapping's file and line,
not a run that stops or parks at the first row, nor a filter that silently never matches. Only
clear contradictions are refused; a value that may or may not fit (trimmed text into a numeric
column) is left to the per-row fit check. Column types this module does not know are not checked.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from . import _transforms, schema, values
from ._schema import did_you_mean
from .errors import ConfigError, TransformError
from .mapping import ColumnSpec, FilterSpec, TableMapping

#: Which kinds of value a target column of each kind takes (text takes any).
_TARGET_TAKES = {
    "integer": {"integer", "number", "boolean", "text"},
    "number": {"integer", "number", "text"},
    "boolean": {"boolean", "integer"},
    "date": {"date", "timestamp", "text"},
    "timestamp": {"timestamp", "date", "text"},
}
_ARTICLE = {"integer": "an integer", "number": "a number", "text": "text", "boolean": "a boolean", "date": "a date",
            "timestamp": "a timestamp"}


def kind_of(kind: sa.types.TypeEngine) -> str | None:
    """The kind of value a column type holds: text, integer, number, boolean, date, timestamp or None."""
    for sql_type, name in ((sa.Boolean, "boolean"), (sa.Integer, "integer"), (sa.Numeric, "number"),
                           (sa.DateTime, "timestamp"), (sa.Date, "date"), (sa.String, "text")):
        if isinstance(kind, sql_type):
            return name
    return None


def check_types(mapping: TableMapping, source_columns: list[sa.Column], target: sa.Table | None) -> None:
    """ConfigError for the first mapped column or filter that cannot work with these tables.

    ``target`` is the existing target table, or None when `cdc init` has yet to create it.
    """
    spec = mapping.spec
    source = {str(c.name): c for c in source_columns}
    for column in spec.columns or ():
        where = f"tables.{spec.source}.columns.{column.target}"
        produced = _transformed(where, column, source.get(column.source), spec.source)
        if target is not None:
            _fits_target(where, column, produced, target)
    for index, condition in enumerate(spec.filters):
        _comparable(f"tables.{spec.source}.filter.{index}", condition, source.get(condition.column), spec.source)
    problem = schema.ledger_problem(mapping, target)
    if problem:
        raise ConfigError(f"tables.{spec.source}.ledger: {problem} ({spec.origin})")
    if target is not None:
        _key_is_unique(mapping, target)
    if spec.newest is not None:
        _newest_comparable(mapping, source, target)


#: What newest_wins can rank: times, and numbers (a version counter).
_RANKED = ("timestamp", "date", "integer", "number")


def _newest_comparable(mapping: TableMapping, source: dict[str, sa.Column], target: sa.Table | None) -> None:
    """ConfigError when the newest_wins column holds text (or a type of no order): text compares
    letter by letter, so '28.02.2026' is newer than '02.03.2026', and the wrong side would win."""
    spec, name = mapping.spec, mapping.spec.newest
    if target is not None and name in target.c:
        kind, held = kind_of(target.c[name].type), f"target table {spec.target} holds it as {target.c[name].type}"
    else:
        (came, transforms), = [(s, t) for c, s, t in mapping.column_specs() if c == name] or [(None, ())]
        if came not in source or transforms:
            return  # a transform's or a constant's result: the target table's type is checked once it exists
        kind, held = kind_of(source[came].type), f"source column {came} of {spec.source} is {source[came].type}"
    if kind not in _RANKED:
        why = ("text is compared letter by letter ('28.02.2026' would be newer than '02.03.2026'), so the wrong "
               "side could win" if kind == "text" else "its values tell no time")
        raise ConfigError(f"tables.{spec.source}.conflict: newest_wins compares {name!r}, but {held}: {why}; make "
                          "it a TIMESTAMP/DATETIME (or DATE, or a version number) column, or name another "
                          f"({spec.origin})")


def _name(transform: tuple[str, Any]) -> str:
    name, arg = transform
    return name if arg is None or name == "map" else f"{{{name}: {arg}}}"


def _transformed(where: str, column: ColumnSpec, source: sa.Column | None, table: str) -> str | None:
    """The kind of value the column's transforms give; ConfigError where one cannot take its input."""
    kind = kind_of(source.type) if source is not None else None
    came_from = f"source column {column.source} of {table} is {source.type}" if source is not None else ""
    for transform in column.transforms:
        takes = _transforms.TAKES.get(transform[0])
        if kind is not None and takes is not None and kind not in takes:
            raise ConfigError(f"{where}: {_name(transform)} needs {' or '.join(_ARTICLE[k] for k in sorted(takes))}, "
                              f"but {came_from} ({column.origin})")
        kind = _transforms.gives(transform[0], transform[1], kind)
        came_from = f"{_name(transform)} before it gives {_ARTICLE.get(kind, 'a value')}"
    return kind


def _fits_target(where: str, column: ColumnSpec, produced: str | None, target: sa.Table) -> None:
    if column.target not in target.columns:
        names = [c.name for c in target.columns]
        hint = did_you_mean(column.target, names) or f" (add it to the table, or map to one of {', '.join(names)})"
        raise ConfigError(f"{where}: target table {target.name} has no column {column.target!r}{hint} "
                          f"({column.origin})")
    if not column.transforms:
        return  # a value copied as it is meets the per-value fit check
    _known_values_fit(where, column, target)
    declared = target.columns[column.target].type
    wanted = kind_of(declared)
    takes = _TARGET_TAKES.get(wanted)
    scale = dict(column.transforms).get("decimal")
    cased = column.transforms[-1][0] in ("upper", "lower")  # changing case only makes sense for text
    if produced is not None and takes is not None and (produced not in takes or (cased and wanted != "text")):
        raise ConfigError(f"{where}: {_name(column.transforms[-1])} gives {_ARTICLE[produced]}, but target column "
                          f"{target.name}.{column.target} is {declared} ({column.origin})")
    if wanted == "integer" and produced == "number" and scale:
        raise ConfigError(f"{where}: {{decimal: {scale}}} gives {scale} decimals, but target column "
                          f"{target.name}.{column.target} is {declared} ({column.origin})")


def _known_values_fit(where: str, column: ColumnSpec, target: sa.Table) -> None:
    """A constant, or a value a map gives, is known before any row moves: one the target column cannot
    hold would fail (or park) every row, so it is refused here with the column's own fit check."""
    name, arg = column.transforms[-1]
    known = [arg] if name == "constant" else list(arg.values()) if name == "map" and isinstance(arg, dict) else []
    fit = values.fitter(target.columns[column.target])
    for value in known:
        try:
            fit(value)
        except TransformError as exc:
            raise ConfigError(f"{where}: {_name(column.transforms[-1])} gives {value!r}, which target column "
                              f"{target.name}.{column.target} ({target.columns[column.target].type}) cannot hold: "
                              f"{exc} ({column.origin})") from None


def _comparable(where: str, condition: FilterSpec, source: sa.Column | None, table: str) -> None:
    """A filter value of another kind than its column never matches (or fails every row): refuse it."""
    column_kind = kind_of(source.type) if source is not None else None
    if column_kind is None or condition.value is None:
        return
    values = condition.value if isinstance(condition.value, list) else [condition.value]
    for value in values:
        kind = _transforms.value_kind(value)
        if kind is None or kind == column_kind or {kind, column_kind} <= {"integer", "number"} \
                or {kind, column_kind} == {"integer", "boolean"}:
            continue
        hint = ""
        if kind == "text":
            hint = " (write it without quotes)"
        elif column_kind == "text":
            hint = " (write it in quotes)"
        raise ConfigError(f"{where}.value: {value!r} is {_ARTICLE[kind]}, but column {condition.column} of {table} "
                          f"is {source.type}, so the filter would compare unlike values{hint} ({condition.origin})")


def _key_is_unique(mapping: TableMapping, target: sa.Table) -> None:
    """An upsert finds its row by the key: the target table must have exactly that key as its
    primary key or a unique index (else PostgreSQL and SQLite refuse the upsert, and MySQL would
    update whichever row another unique index matches). A ledger's journal is keyed by the target
    key and its sequence column instead (checked by schema.ledger_problem)."""
    if mapping.spec.ledger is not None:
        return
    wanted = set(mapping.target_key)
    unique = [{c.name for c in target.primary_key.columns}]
    unique += [{c.name for c in index.columns} for index in target.indexes if index.unique]
    unique += [{c.name for c in constraint.columns} for constraint in target.constraints
               if isinstance(constraint, sa.UniqueConstraint)]
    if wanted not in unique:
        have = ", ".join(c.name for c in target.primary_key.columns) or "none"
        raise ConfigError(f"tables.{mapping.source}.key: the key ({', '.join(mapping.target_key)}) is not the primary "
                          f"key ({have}) or a unique index of target table {target.name}: an upsert finds its row by "
                          f"that key ({mapping.spec.origin})")
