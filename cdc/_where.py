"""Reconciliation's --where: refused when it names a column the mapping does not copy as it is.

``--where`` is one SQL condition applied to both tables. It selects the same rows on both sides only
when every column it names holds the same values there: a column the mapping transforms (``name``
upper-cased), renames, fills with a constant, or does not copy at all would select different rows
on each side, and a repair would act on the difference. The condition is read with sqlglot's
tokenizer in the SQL dialect of each side (so a string literal is never mistaken for a column name,
and a column name is never hidden in what one dialect reads as a string); every word that is the
name of a column of either table counts, in any letter case.
"""

from __future__ import annotations

from typing import Iterable

from . import registry
from .errors import ConfigError
from .mapping import TableMapping

_LITERALS = ("STRING", "NUMBER", "NATIONAL_STRING", "BIT_STRING", "HEX_STRING", "BYTE_STRING", "RAW_STRING",
             "HEREDOC_STRING")  # sqlglot TokenType names (sqlglot is imported when a --where is read)


def check_where(where: str, mapping: TableMapping, source_columns: Iterable[str], target_columns: Iterable[str],
                dialects: set[str]) -> None:
    """ConfigError (exit 2) unless ``where`` is one condition (no comment, no ``;``) and every column it
    names is copied as it is by ``mapping``; ``dialects``: the two sides' SQLAlchemy backend names, read
    in the sqlglot dialect their adapters name (``capabilities.sqlglot_dialect``). A condition the
    database cannot read is refused (exit 2) by the first read that uses it (see Side.count)."""
    copied = {target.lower() for target, source, transforms in mapping.column_specs()
              if source == target and not transforms}
    known = {c.lower(): c for c in [*source_columns, *target_columns]}
    for word in sorted(_words(where, dialects)):
        if word in known and word not in copied:
            raise ConfigError(f"--where {where!r} names column {known[word]!r}, which {_why(known[word], mapping)}: "
                              f"the two sides would select different rows. Name only columns the mapping copies "
                              f"unchanged under the same name ({', '.join(sorted(copied)) or f'none in {mapping.source}'}), "
                              "or leave --where out")


def _words(where: str, dialects: set[str]) -> set[str]:
    """Every word of ``where`` that is not a literal, lower-cased, as each dialect reads it.

    ConfigError when a dialect reads a comment (``--``, ``/* */``, MySQL ``#``: it would hide the
    rest of the statement the condition is put into), a ``;`` (a second statement) or nothing at all
    in it: one condition, nothing else.
    """
    import sqlglot  # here, not at import: it adds a third to every command's start-up
    from sqlglot.errors import SqlglotError
    from sqlglot.tokens import TokenType

    literals = {TokenType[name] for name in _LITERALS}
    words: set[str] = set()
    for name in sorted({registry.for_backend(d).capabilities.sqlglot_dialect for d in dialects}):
        try:
            tokens = sqlglot.Dialect.get_or_raise(name or None).tokenize(where)
        except SqlglotError as exc:
            raise ConfigError(f"--where {where!r} cannot be read as SQL: {_one_line(exc)}") from None
        if any(t.comments for t in tokens):
            raise ConfigError(f"--where {where!r} holds an SQL comment, which would hide the rest of the query it "
                              "is put into: give one condition without comments")
        if any(t.token_type == TokenType.SEMICOLON for t in tokens):
            raise ConfigError(f"--where {where!r} holds ';': give one condition, not statements")
        if not tokens:
            raise ConfigError(f"--where {where!r} holds no condition")
        words |= {t.text.lower() for t in tokens if t.token_type not in literals}
    return words


def _one_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _why(column: str, mapping: TableMapping) -> str:
    """How the mapping treats a column, in words."""
    lowered = column.lower()
    for target, source, transforms in mapping.column_specs():
        if target.lower() == lowered or (source or "").lower() == lowered:
            if source is None:
                return f"the mapping fills with a constant in {mapping.target}"
            if transforms:
                names = ", ".join(name for name, _ in transforms)
                return f"the mapping transforms ({names}) from {source} at the source into {target}"
            return f"is called {source} at the source and {target} in the target"
    return f"the mapping does not copy from {mapping.source} to {mapping.target}"
