"""Reconciling a ledger's journal (`mode: ledger`): the source compared with each key's current entry.

Policy: a journal holds many rows per source key (entries and their reversals), so the source row of
a key is compared with the key's **current entry** (its newest row, when that is no reversal); a key
whose newest row is a reversal has no row, as the source has none after a delete. A repair goes
through the apply path, where ledger mode turns it into reversals and entries (never an UPDATE or
DELETE). The entries before a current one must sum to zero (each was reversed): a key whose
amounts do not (an entry posted by hand without reversing the one before it) is reported as
different, with its sum; a repair does not touch it, since which entry is wrong is for a person
to decide (post the correcting entry by hand).
"""

from __future__ import annotations

from typing import Any

from ..mapping import TableMapping
from ._report import RowDifference, TableReport


def journal_columns(mapping: TableMapping) -> tuple[str, str] | None:
    """A ledger table's (sequence, reverses) columns, or None for a table of rows."""
    ledger = mapping.spec.ledger
    return None if ledger is None else (ledger.sequence, ledger.reverses)


def current_entries(target: Any, mapping: TableMapping, alias: str | None = None) -> str:
    """SQL: the journal's rows that are current entries (of the table as named, or as ``alias``)."""
    quote, (sequence, reverses) = target.quote, journal_columns(mapping)
    table = alias or quote(mapping.target)
    same_key = " AND ".join(f"newer.{quote(k)} = {table}.{quote(k)}" for k in mapping.target_key)
    return (f"{table}.{quote(reverses)} IS NULL AND {table}.{quote(sequence)} = "
            f"(SELECT max(newer.{quote(sequence)}) FROM {quote(mapping.target)} newer WHERE {same_key})")


def unbalanced(target: Any, mapping: TableMapping, result: TableReport, limit: int) -> None:
    """Add to ``result`` the keys whose amounts do not sum to their current entry's (0 without one)."""
    quote, key = target.quote, mapping.target_key
    amounts = mapping.spec.ledger.amounts
    keys = ", ".join(f"j.{quote(k)}" for k in key)
    same_key = " AND ".join(f"c.{quote(k)} = j.{quote(k)}" for k in key)
    current = [f"(SELECT c.{quote(a)} FROM {quote(mapping.target)} c WHERE {same_key} AND "
               f"{current_entries(target, mapping, 'c')})" for a in amounts]
    sums = [f"sum(j.{quote(a)})" for a in amounts]
    query = (f"SELECT {keys}, {', '.join(sums)}, {', '.join(current)} FROM {quote(mapping.target)} j "
             f"GROUP BY {keys} HAVING " + " OR ".join(f"{s} <> coalesce({c}, 0)" for s, c in zip(sums, current)))
    with target.reading() as conn:
        found = conn.exec_driver_sql(query).all()  # quote() made the names safe for the driver
    listed = {tuple(target_key) for _, target_key in result.keys.values() if target_key is not None}
    width = len(key)
    for row in (row for row in found if tuple(row[:width]) not in listed):  # each key counted once
        totals, posted = row[width:width + len(amounts)], row[width + len(amounts):]
        result.different += 1
        if len(result.rows) < limit:
            result.rows.append(RowDifference(
                "different", tuple(row[:width]), {a: (p or 0, t) for a, p, t in zip(amounts, posted, totals)},
                note="its entries do not sum to its current entry: one posted without reversing the one before "
                     "it? A repair leaves it; post the correcting entry by hand"))
