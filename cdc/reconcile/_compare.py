"""The comparison of one pair: both sides fingerprinted at once, differing buckets, keys, rows."""

from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import Any, Callable

import sqlalchemy as sa

from .. import state
from ..config import Pair
from ..errors import ConfigError, RowError, SchemaError
from ..mapping import TableMapping
from ..pipeline import open_pair
from .._where import check_where
from ._canonical import EXACT_HALF_UP
from ._journal import current_entries, journal_columns, unbalanced
from ._keys import paired, row_differences
from ._report import ReconcileReport, RowDifference, TableReport
from ._side import Side, both

logger = logging.getLogger(__name__)
ROWS_PER_BUCKET = 256
#: More differing keys than this (a target that lost a table, a reconcile before the first snapshot):
#: they are counted from the fingerprints, and only the ones listed are read row by row.
MAX_ROW_CHECKS = 50_000


def reconcile(pair: Pair, *, table: str | None = None, where: str | None = None, limit: int = 100,
              settle: float = 3.0, progress: Callable[[str], None] | None = None) -> ReconcileReport:
    """Compare every mapped table of ``pair`` (or only ``table``, source or target name).

    Every read runs in a read-only transaction: a ``where`` cannot change either database.
    """
    report = ReconcileReport(pair.name, state._store.now(), limit=limit)
    source, target, mappings = open_pair(pair)
    try:
        read_only(source)
        read_only(target)
        checkpoint = target.checkpoint(pair.name) if target.exists(state.checkpoints.name) else None
        if checkpoint is not None:
            report.checkpoint = source.format_position(checkpoint.position)
            try:
                report.pending = source.pending(checkpoint.position)
            except Exception as exc:  # the source may not say; the comparison still stands
                logger.info("pair %s: pending changes unknown: %s", pair.name, exc)
        chosen = [m for m in mappings.values() if table in (None, m.source, m.target)]
        if table is not None and not chosen:
            raise ConfigError(f"pair {pair.name} has no table {table!r} (tables: "
                              f"{', '.join(m.source for m in mappings.values())})")
        say = progress or (lambda text: None)
        for mapping in chosen:
            report.tables.append(_compare_table(source, target, mapping, where, limit, settle,
                                                lambda text, m=mapping: say(f"{m.source} -> {m.target}: {text}")))
    finally:
        source.close()
        target.close()
    report.finished_at = state._store.now()
    return report


def read_only(reads: Any) -> None:
    """Make every later transaction on ``reads``' engine read-only, as its adapter's fingerprints
    know how (PostgreSQL SET TRANSACTION READ ONLY, MySQL/MariaDB START TRANSACTION READ ONLY, SQLite
    an authorizer that refuses writes). Reconciliation only reads; so a --where that would write
    (advance a sequence, call a function that inserts) fails instead."""
    if reads.fingerprints is None:
        logger.warning("%s has no read-only statement: reconcile reads in ordinary transactions", reads.backend)
        return
    reads.read_only()


def _compare_table(source: Any, target: Any, mapping: TableMapping, where: str | None, limit: int,
                   settle: float, say: Callable[[str], None]) -> TableReport:
    started = time.perf_counter()
    columns = target_columns(target, mapping)
    if where:
        check_where(where, mapping, source.describe(mapping.source).column_names,
                    target.describe(mapping.target).column_names, {source.backend, target.backend})
    mine = Side(source, mapping.source, mapping.source_key, columns, where, mapping)
    theirs = Side(target, mapping.target, mapping.target_key, columns, _own_rows(target, mapping, where),
                  journal=journal_columns(mapping))
    try:
        result = _compare(mine, theirs, mapping, limit, settle, say)
    except (ArithmeticError, ValueError, TypeError, sa.exc.DBAPIError) as exc:
        located = _located(mine, theirs)
        if located is None:
            raise
        raise located from exc
    if mapping.spec.ledger is not None:
        unbalanced(target, mapping, result, limit)
    result.seconds = time.perf_counter() - started
    return result


def _located(mine: Side, theirs: Side) -> RowError | None:
    """After a failure: the value that could not be read or fingerprinted (inside a database, or
    here), named by table, key and column; None if none is found (or the database is gone)."""
    try:
        return mine.locate() or theirs.locate()
    except sa.exc.DBAPIError:
        return None


def _compare(mine: Side, theirs: Side, mapping: TableMapping, limit: int, settle: float,
             say: Callable[[str], None]) -> TableReport:
    result = TableReport(mapping.source, mapping.target)
    family = next(f for f in mine.families if f in theirs.families)  # "md5" is in every list
    mine.family = theirs.family = family
    result.methods = {"source": mine.method, "target": theirs.method}
    # Both sides work at once (two databases, or two connections to one).
    say("counting rows")
    buckets = max(1, min(1 << 16, max(both(mine.count, theirs.count)) // ROWS_PER_BUCKET))
    say(f"fingerprinting in {buckets:,} buckets (source {mine.method}, target {theirs.method})")
    (expected, result.source_rows), (actual, result.target_rows) = both(lambda: mine.buckets(buckets),
                                                                         lambda: theirs.buckets(buckets))
    differing = {b for b in expected.keys() | actual.keys() if expected.get(b) != actual.get(b)}
    if differing:
        say(f"{len(differing):,} bucket(s) differ: reading their keys")
    want, have = both(lambda: mine.digests(buckets, differing), lambda: theirs.digests(buckets, differing))
    suspects = {text: (want.get(text, (None, None))[1], have.get(text, (None, None))[1])
                for text in want.keys() | have.keys()
                if text not in want or text not in have or want[text][0] != have[text][0]}
    if suspects:
        say(f"{len(suspects):,} key(s) differ: comparing their rows")
    pairs = paired(mine, theirs, suspects)
    if len(pairs) > MAX_ROW_CHECKS:
        _count_from_fingerprints(result, mine, theirs, suspects, pairs, limit)
    else:
        _compare_rows(result, mine, theirs, pairs, limit, settle)
    result.unmappable = mine.unmappable
    result.rows += [RowDifference("unmappable", key, error=error.describe(), column=error.column)
                    for key, error in sorted(mine.failures.items(), key=lambda item: _sortable(item[0]))[:limit]]
    return result


def _count_from_fingerprints(result: TableReport, mine: Side, theirs: Side, suspects: dict[str, tuple],
                             pairs: dict[str, tuple], limit: int) -> None:
    """So many keys differ that they are counted from the fingerprints (which side had each key);
    only ``limit`` are read."""
    result.counted_from_fingerprints = True
    for source_key, target_key in suspects.values():
        kind = "missing" if target_key is None else "extra" if source_key is None else "different"
        setattr(result, kind, getattr(result, kind) + 1)
    result.keys = pairs
    listed = dict(sorted(pairs.items())[:limit])
    found = row_differences(mine, theirs, listed)
    result.rows = sorted((d for d in found.values() if d.kind != "unmappable"), key=lambda d: _sortable(d.key))


def _compare_rows(result: TableReport, mine: Side, theirs: Side, pairs: dict[str, tuple], limit: int,
                  settle: float) -> None:
    """Read the differing keys on both sides, again for ``settle`` seconds while some still differ."""
    deadline = time.monotonic() + settle
    differences = row_differences(mine, theirs, pairs)
    while differences and time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        again = row_differences(mine, theirs, {t: pairs[t] for t in differences})
        result.settled += len(differences) - len(again)
        differences = again
    for text, difference in sorted(differences.items(), key=lambda item: _sortable(item[1].key)):
        if difference.kind == "unmappable":  # listed from the scan; a repair must know to keep its target row
            result.keys[text] = pairs[text]
            continue
        setattr(result, difference.kind, getattr(result, difference.kind) + 1)
        result.keys[text] = pairs[text]
        if len(result.rows) < limit:
            result.rows.append(difference)
    totals = mine.mapping.spec.control_totals
    if totals is not None:
        result.totals = _control_totals(mine, theirs, totals, differences.values())


def _own_rows(target: Any, mapping: TableMapping, where: str | None) -> str | None:
    """The target rows ``mapping`` writes: in a shared table only those with its key constants,
    so another pair's rows are neither reported as extra nor deleted by a repair; in a journal
    only the current entries."""
    constants = mapping.key_constants
    conditions = [target.sql_text(sa.and_(*(sa.column(c) == sa.literal(v) for c, v in constants.items())))
                  ] if constants else []
    if mapping.spec.ledger is not None:
        conditions.append(current_entries(target, mapping))
    if not conditions:
        return where
    own = " AND ".join(conditions)
    return f"({where}) AND {own}" if where else own


def target_columns(target: Any, mapping: TableMapping) -> dict[str, sa.Column]:
    """The target columns the mapping writes, in its order; SchemaError names one that is missing."""
    info = target.describe(mapping.target)
    by_name = dict(zip(info.column_names, info.columns))
    missing = [c for c in mapping.target_columns if c not in by_name]
    if missing:
        raise SchemaError(f"target table {mapping.target} has no column {missing[0]!r}")
    return {c: by_name[c] for c in mapping.target_columns}


def _control_totals(mine: Side, theirs: Side, names: tuple[str, str, str], rows: Any) -> list[dict]:
    """The trial balance per account and month on both sides, with the differences (target minus
    source); a total that differs lists the keys of the differing rows in its group (the drill-down)."""
    expected, actual = both(lambda: mine.totals(*names), lambda: theirs.totals(*names))
    keys_by_group: dict[tuple, list] = {}
    for row in rows:
        for group in row.groups:
            keys_by_group.setdefault(group, []).append(list(row.key))
    result = []
    for group in sorted(expected.keys() | actual.keys(), key=lambda g: (str(g[0]), str(g[1]))):
        count_s, sum_s = expected.get(group, (0, Decimal(0)))
        count_t, sum_t = actual.get(group, (0, Decimal(0)))
        equal = count_s == count_t and sum_s == sum_t
        result.append({"account": group[0], "period": group[1], "source_count": count_s, "source_sum": sum_s,
                       "target_count": count_t, "target_sum": sum_t, "count_difference": count_t - count_s,
                       "difference": EXACT_HALF_UP.subtract(Decimal(sum_t), Decimal(sum_s)), "equal": equal,
                       "rows": [] if equal else keys_by_group.get(group, [])[:100]})
    return result


def _sortable(key: tuple) -> tuple:
    """Keys in a stable order for the report: numbers by value, everything else by its text."""
    return tuple((0, v, "") if isinstance(v, (int, Decimal)) and not isinstance(v, bool) else (1, 0, str(v))
                 for v in key)
