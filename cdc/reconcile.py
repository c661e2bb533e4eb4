"""Reconciliation: does the target equal the source as mapped? Every difference, found fast; repair.

**Fingerprints** are the same whether Python or the database computes them, so each side of a pair
computes its own, in the database where it can:

* each value of a target column becomes its *canonical text*, by the target column's type:
  integers as digits; numerics with the column's scale (``12.50``); booleans ``1``/``0``;
  timestamps as microseconds since 1970-01-01 UTC (a naive value counts as UTC); dates
  ``YYYY-MM-DD``; bytes as lower-case hex; UUIDs lower-case; JSON sorted and compact; text as it is;
* a row's text is each column's text in target column order, joined by ``|``, ``\\N`` for NULL;
  text columns (which may hold ``|``) are written ``len:text``; the key's text is the same over the
  key columns;
* a row falls into bucket ``key % B`` for a single integer key, else ``int(md5(key text)[:8], 16) % B``,
  and has the digest ``int(md5(row text)[:15], 16)``. When both sides are PostgreSQL, both use its
  ``hashtextextended`` instead of MD5 (about twice as fast there).

**Algorithm** per table: B buckets of about 256 rows; each side gives count and sum of digests
per bucket in one pass (inside PostgreSQL or MySQL/MariaDB when every mapped column has an SQL
form there — an identity or renaming mapping, no transforms or filters — else the rows are read in
key order and fingerprinted in Python: SQLite, JSON/float columns, transforms). Buckets are a hash
of the key, not key ranges, so nothing depends on two databases sorting text alike. Buckets that
differ are read again as (key, digest); the keys that differ are read whole from both sides and
compared column by column through the mapping. A difference is re-read for ``settle`` seconds:
one that disappears was a change in flight (applied meanwhile), reported as settled, not as an error.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

import sqlalchemy as sa

from . import registry, state, values
from ._transforms import TransformError
from .changes import Change, dumps
from .config import Pair
from .errors import ConfigError, RowError, SchemaError, StateError
from .mapping import MappedChange, TableMapping, TargetOp
from .pipeline import open_pair

logger = logging.getLogger(__name__)
CHUNK = 10_000
ROWS_PER_BUCKET = 256
#: More differing keys than this (a target that lost a table, a reconcile before the first snapshot):
#: they are counted from the fingerprints, and only the ones listed are read row by row.
MAX_ROW_CHECKS = 50_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


# -- canonical text -------------------------------------------------------------------------------
def canonical(value: Any, column: sa.Column) -> str | None:
    """The canonical text of a value (already fitted to ``column``'s type, where it fits)."""
    if value is None:
        return None
    kind = column.type
    if isinstance(value, bool) or isinstance(kind, sa.Boolean):
        return "1" if value else "0"
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        delta = aware - EPOCH
        return str((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal) or (isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float)
                                      and isinstance(value, int)):
        number = Decimal(value)
        scale = getattr(kind, "scale", None)
        if scale is not None and isinstance(kind, sa.Numeric) and not isinstance(kind, (sa.Integer, sa.Float)):
            number = number.quantize(Decimal(1).scaleb(-scale))
        elif number == number.to_integral_value():
            number = number.quantize(Decimal(1))
        else:
            number = number.normalize()
        if number == 0:
            number = abs(number)
        return format(number, "f")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (dict, list)) or isinstance(kind, sa.JSON):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    if isinstance(kind, sa.CHAR) and isinstance(value, str):
        return value.rstrip(" ")  # fixed width: the padding is not data
    return str(value)


def prefixed(kind: sa.types.TypeEngine) -> bool:
    """Whether a column's canonical text needs its length in front: text may hold the separator;
    numbers, booleans, dates, timestamps, hex and UUIDs never do (and never hold a backslash)."""
    return not isinstance(kind, (sa.Numeric, sa.Integer, sa.Boolean, sa.Date, sa.DateTime, sa.LargeBinary,
                                 sa.Uuid))


def _text(parts: list[str | None], flags: list[bool]) -> str:
    return "|".join("\\N" if p is None else f"{len(p)}:{p}" if flag else p for p, flag in zip(parts, flags))


def _bucket(key_text: str, buckets: int) -> int:
    return int(hashlib.md5(key_text.encode()).hexdigest()[:8], 16) % buckets


def _is_integer(kind: sa.types.TypeEngine) -> bool:
    return isinstance(kind, sa.Integer) and not isinstance(kind, sa.Boolean)


def _digest(row_text: str) -> int:
    return int(hashlib.md5(row_text.encode()).hexdigest()[:15], 16)


# -- reports ----------------------------------------------------------------------------------------
@dataclass
class RowDifference:
    """One key that differs: ``missing`` in the target, ``extra`` there, or ``different`` columns."""

    kind: str
    key: tuple
    columns: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # column -> (source as mapped, target)
    #: The (account, period) control-total groups the row counts in, on either side.
    groups: set = field(default_factory=set, repr=False)


@dataclass
class TableReport:
    source_table: str
    target_table: str
    source_rows: int = 0
    target_rows: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0
    settled: int = 0
    unmappable: int = 0
    #: So many keys differed that the counts come from the fingerprints (see MAX_ROW_CHECKS).
    counted_from_fingerprints: bool = False
    rows: list[RowDifference] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    totals: list[dict] = field(default_factory=list)
    #: Every differing key: key text -> (source key, target key); for repair.
    keys: dict[str, tuple[tuple | None, tuple | None]] = field(default_factory=dict, repr=False)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different or self.unmappable)


@dataclass
class ReconcileReport:
    pair: str
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    tables: list[TableReport] = field(default_factory=list)
    pending: Any = None
    limit: int = 100
    repair: dict | None = None
    run_id: int | None = None

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


# -- one side of a table ----------------------------------------------------------------------------
class _Side:
    """Fingerprints of one side's table: the source as mapped, or the target."""

    def __init__(self, reads: Any, table: str, key: tuple[str, ...], target_columns: dict[str, sa.Column],
                 where: str | None, mapping: TableMapping | None = None):
        self.reads, self.table, self.key, self.where, self.mapping = reads, table, key, where, mapping
        self.target_columns = target_columns  # target name -> target column, in target order
        self.unmappable = 0
        self.why = ""
        key_targets = mapping.target_key if mapping else key
        #: A single integer key buckets by its value (key mod B): no hash needed.
        self.int_key = len(key_targets) == 1 and _is_integer(target_columns[key_targets[0]].type)
        self.flags = {name: prefixed(column.type) for name, column in target_columns.items()}
        #: The digest both sides compute: MD5 (everywhere), or a faster one both databases have.
        self.family = "md5"
        self.sql = self._sql()

    @property
    def families(self) -> tuple[str, ...]:
        return self.reads.fingerprints.families if self.sql else ("md5",)

    @property
    def method(self) -> str:
        return f"in-database ({self.family})" if self.sql else f"streamed ({self.why})"

    def _names(self) -> dict[str, str] | None:
        """Target column -> this side's column, when every value is the column as it is."""
        if self.mapping is None:
            return {name: name for name in self.target_columns}
        specs = self.mapping.column_specs()
        if self.mapping.spec.filters or any(source is None or transforms for _, source, transforms in specs):
            return None
        by_target = {target: source for target, source, _ in specs}
        return {name: by_target[name] for name in self.target_columns}

    def _sql(self) -> tuple[str, str] | None:
        """(key text SQL, row text SQL), or None when Python must read the rows."""
        prints, names = self.reads.fingerprints, self._names()
        if prints is None:
            self.why = f"no SQL fingerprints for {self.reads.engine.dialect.name}"
            return None
        if names is None:
            self.why = "the mapping transforms or filters rows"
            return None
        with self.reads.engine.connect() as conn:
            if not prints.usable(conn):
                self.why = "the database encoding is not UTF-8"
                return None
        info = self.reads.describe(self.table)
        mine = dict(zip(info.column_names, info.columns))
        parts = {}
        for target_name, column in self.target_columns.items():
            expr = prints.canonical(names[target_name], mine[names[target_name]], column.type)
            if expr is None:
                self.why = f"column {names[target_name]} has no SQL form for {column.type}"
                return None
            parts[target_name] = prints.part(expr, prefixed(column.type))
        key_targets = self.mapping.target_key if self.mapping else self.key
        if self.int_key and not _is_integer(mine[names[key_targets[0]]].type):
            self.why = f"key column {names[key_targets[0]]} is not an integer here"
            return None
        self.bucket_of = (lambda buckets: prints.int_bucket(names[key_targets[0]], buckets)) if self.int_key else \
            (lambda buckets: prints.bucket(prints.join([parts[k] for k in key_targets]), buckets, self.family))
        return (prints.join([parts[k] for k in key_targets]), prints.join(list(parts.values())))

    def count(self) -> int:
        query = sa.select(sa.func.count()).select_from(sa.table(self.table))
        if self.where:
            query = query.where(sa.text(self.where))
        with self.reads.engine.connect() as conn:
            try:
                return conn.execute(query).scalar()
            except sa.exc.DBAPIError as exc:
                if not self.where:
                    raise
                raise ConfigError(f"--where {self.where!r} does not work on table {self.table}: "
                                  f"{str(exc.orig).strip().splitlines()[0]}") from None

    def _from(self) -> str:
        quote = self.reads.engine.dialect.identifier_preparer.quote
        return f"FROM {quote(self.table)}" + (f" WHERE ({self.where})" if self.where else "")

    # Python: every row, mapped and fingerprinted.
    def _scan(self, keep: Callable[[int], bool], buckets: int):
        """(bucket, key text, digest, side key) of every row whose bucket ``keep`` accepts."""
        after = None
        while True:
            rows = self.reads.snapshot(self.table, self.key, after, CHUNK, self.where)
            for row in rows:
                side_key = tuple(row[k] for k in self.key)
                texts = self.texts(row)
                if texts is None:
                    continue
                key_text, row_text, number = texts
                bucket = number % buckets if self.int_key else _bucket(key_text, buckets)
                if keep(bucket):
                    yield bucket, key_text, _digest(row_text), side_key
            if len(rows) < CHUNK:
                return
            after = tuple(rows[-1][k] for k in self.key)

    def normalised(self, row: dict) -> dict | None:
        """The row as the target would hold it (None: filtered out or cannot be mapped)."""
        if self.mapping is not None:
            try:
                if not self.mapping.passes(row):
                    return None
                row = self.mapping.map_row(row, self.mapping.source_key_of(row))
            except RowError:
                self.unmappable += 1
                return None
        result = {}
        for name, column in self.target_columns.items():
            value = row.get(name)
            try:
                result[name] = values.fit(value, column)
            except TransformError:
                result[name] = value
        return result

    def texts(self, row: dict) -> tuple[str, str, int | None] | None:
        """(key text, row text, the integer key or None) of a row as the target would hold it."""
        mapped = self.normalised(row)
        if mapped is None:
            return None
        canon = {name: canonical(mapped[name], column) for name, column in self.target_columns.items()}
        key_targets = self.mapping.target_key if self.mapping else self.key
        number = int(canon[key_targets[0]]) if self.int_key and canon[key_targets[0]] is not None else None
        if self.int_key and number is None:
            number = 0
        flags = self.flags
        return (_text([canon[k] for k in key_targets], [flags[k] for k in key_targets]),
                _text(list(canon.values()), list(flags.values())), number)

    def buckets(self, buckets: int) -> tuple[dict[int, tuple[int, int]], int]:
        """Per bucket (count, sum of digests); and the rows counted."""
        result: dict[int, list[int]] = {}
        if self.sql:
            prints = self.reads.fingerprints
            key_text, row_text = self.sql
            query = (f"SELECT {self.bucket_of(buckets)} AS b, count(*), "
                     f"{prints.total(prints.digest(row_text, self.family))} {self._from()} GROUP BY 1")
            with self.reads.engine.connect() as conn:
                found = {int(b): (int(n), int(s)) for b, n, s in conn.exec_driver_sql(query)}
            return found, sum(n for n, _ in found.values())
        rows = 0
        for bucket, _, digest, _ in self._scan(lambda b: True, buckets):
            entry = result.setdefault(bucket, [0, 0])
            entry[0] += 1
            entry[1] += digest
            rows += 1
        return {b: (n, s) for b, (n, s) in result.items()}, rows

    def digests(self, buckets: int, wanted: set[int]) -> dict[str, tuple[int, tuple]]:
        """key text -> (digest, this side's key) for every row in the ``wanted`` buckets."""
        if not wanted:
            return {}
        if self.sql:
            prints = self.reads.fingerprints
            key_text, row_text = self.sql
            quote = self.reads.engine.dialect.identifier_preparer.quote
            keys = ", ".join(quote(k) for k in self.key)
            bucket = self.bucket_of(buckets)
            where = f"{bucket} IN ({', '.join(str(int(b)) for b in sorted(wanted))})"
            query = (f"SELECT {key_text}, {prints.digest(row_text, self.family)}, {keys} {self._from()}"
                     f"{' AND ' if self.where else ' WHERE '}{where}")
            info = self.reads.describe(self.table)
            readers = [self.reads.reader(info.columns[info.column_names.index(k)]) for k in self.key]
            with self.reads.engine.connect() as conn:
                return {text: (int(digest), tuple(r(v) for r, v in zip(readers, rest)))
                        for text, digest, *rest in conn.exec_driver_sql(query)}
        return {key_text: (digest, side_key) for _, key_text, digest, side_key in self._scan(wanted.__contains__,
                                                                                              buckets)}

    def totals(self, account: str, date: str, amount: str) -> dict[tuple[str, str], tuple[int, Decimal]]:
        """(account, YYYY-MM) -> (rows, sum of amount): in the database where it can, else streamed."""
        names = self._names() if self.sql else None
        info = self.reads.describe(self.table)
        mine = dict(zip(info.column_names, info.columns))
        month = self.reads.fingerprints.month(names[date], mine[names[date]]) if names else None
        if month is not None:
            prints, quote = self.reads.fingerprints, self.reads.engine.dialect.identifier_preparer.quote
            account_text = prints.canonical(names[account], mine[names[account]], self.target_columns[account].type)
            query = (f"SELECT {account_text}, {month}, count(*), sum({quote(names[amount])}) {self._from()} "
                     "GROUP BY 1, 2")
            with self.reads.engine.connect() as conn:
                return {(a, p): (int(n), Decimal(total or 0)) for a, p, n, total in conn.exec_driver_sql(query)}
        found: dict[tuple[str, str], list] = {}
        after = None
        while True:
            rows = self.reads.snapshot(self.table, self.key, after, CHUNK, self.where)
            for row in rows:
                mapped = self.normalised(row)
                if mapped is not None:
                    entry = found.setdefault(self.group(mapped, account, date), [0, Decimal(0)])
                    entry[0] += 1
                    entry[1] += Decimal(mapped[amount] or 0)
            if len(rows) < CHUNK:
                break
            after = tuple(rows[-1][k] for k in self.key)
        return {g: (n, total) for g, (n, total) in found.items()}

    def group(self, mapped: dict, account: str, date: str) -> tuple[str | None, str | None]:
        """A normalised row's (account, YYYY-MM) as the database computes them."""
        when = mapped[date]
        if isinstance(when, dt.datetime) and when.tzinfo is not None:
            when = when.astimezone(dt.timezone.utc)
        period = f"{when.year:04d}-{when.month:02d}" if isinstance(when, dt.date) else \
            (str(when)[:7] if when is not None else None)
        return canonical(mapped[account], self.target_columns[account]), period

    def rows(self, keys: list[tuple]) -> dict[tuple, dict]:
        """Side key -> the row as the target would hold it, for the keys that exist."""
        found = {}
        for row in self.reads.rows_by_keys(self.table, self.key, keys):
            found[tuple(row[k] for k in self.key)] = row
        return found


# -- the comparison ---------------------------------------------------------------------------------
def reconcile(pair: Pair, *, table: str | None = None, where: str | None = None, limit: int = 100,
              settle: float = 3.0, progress: Callable[[str], None] | None = None) -> ReconcileReport:
    """Compare every mapped table of ``pair`` (or only ``table``, source or target name)."""
    report = ReconcileReport(pair.name, state._store.now(), limit=limit)
    source, target, mappings = open_pair(pair)
    try:
        checkpoint = target.checkpoint(pair.name) if target.exists(state.checkpoints.name) else None
        if checkpoint is not None:
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


def _compare_table(source: Any, target: Any, mapping: TableMapping, where: str | None, limit: int,
                   settle: float, say: Callable[[str], None]) -> TableReport:
    started = time.perf_counter()
    result = TableReport(mapping.source, mapping.target)
    columns = _target_columns(target, mapping)
    mine = _Side(source, mapping.source, mapping.source_key, columns, where, mapping)
    theirs = _Side(target, mapping.target, mapping.target_key, columns, _own_rows(target, mapping, where))
    family = next(f for f in mine.families if f in theirs.families)  # "md5" is in every list
    mine.family = theirs.family = family
    result.methods = {"source": mine.method, "target": theirs.method}
    # Both sides work at once (two databases, or two connections to one).
    say("counting rows")
    buckets = max(1, min(1 << 16, max(_both(mine.count, theirs.count)) // ROWS_PER_BUCKET))
    say(f"fingerprinting in {buckets:,} buckets (source {mine.method}, target {theirs.method})")
    (expected, result.source_rows), (actual, result.target_rows) = _both(lambda: mine.buckets(buckets),
                                                                         lambda: theirs.buckets(buckets))
    result.unmappable = mine.unmappable  # source rows the mapping refused (streamed reads only)
    differing = {b for b in expected.keys() | actual.keys() if expected.get(b) != actual.get(b)}
    if differing:
        say(f"{len(differing):,} bucket(s) differ: reading their keys")
    want, have = _both(lambda: mine.digests(buckets, differing), lambda: theirs.digests(buckets, differing))
    suspects = {text: (want.get(text, (None, None))[1], have.get(text, (None, None))[1])
                for text in want.keys() | have.keys()
                if text not in want or text not in have or want[text][0] != have[text][0]}
    if len(suspects) > MAX_ROW_CHECKS:
        result.counted_from_fingerprints = True
        for text, (source_key, target_key) in suspects.items():
            kind = "missing" if target_key is None else "extra" if source_key is None else "different"
            setattr(result, kind, getattr(result, kind) + 1)
        result.keys = suspects
        listed = dict(sorted(suspects.items())[:limit])
        result.rows = sorted(_row_differences(mine, theirs, listed).values(), key=lambda d: _sortable(d.key))
        result.seconds = time.perf_counter() - started
        return result
    deadline = time.monotonic() + settle
    if suspects:
        say(f"{len(suspects):,} key(s) differ: comparing their rows")
    differences = _row_differences(mine, theirs, suspects)
    while differences and time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        again = _row_differences(mine, theirs, {t: suspects[t] for t in differences})
        result.settled += len(differences) - len(again)
        differences = again
    for text, difference in sorted(differences.items(), key=lambda item: _sortable(item[1].key)):
        setattr(result, difference.kind, getattr(result, difference.kind) + 1)
        result.keys[text] = suspects[text]
        if len(result.rows) < limit:
            result.rows.append(difference)
    totals = mapping.spec.control_totals
    if totals is not None:
        result.totals = _control_totals(mine, theirs, totals, differences.values())
    result.seconds = time.perf_counter() - started
    return result


def _own_rows(target: Any, mapping: TableMapping, where: str | None) -> str | None:
    """The target rows ``mapping`` writes: in a shared table only those with its key constants,
    so another pair's rows are neither reported as extra nor deleted by a repair."""
    constants = mapping.key_constants
    if not constants:
        return where
    condition = sa.and_(*(sa.column(column) == sa.literal(value) for column, value in constants.items()))
    own = str(condition.compile(dialect=target.engine.dialect, compile_kwargs={"literal_binds": True}))
    return f"({where}) AND {own}" if where else own


def _target_columns(target: Any, mapping: TableMapping) -> dict[str, sa.Column]:
    """The target columns the mapping writes, in its order; SchemaError names one that is missing."""
    info = target.describe(mapping.target)
    by_name = dict(zip(info.column_names, info.columns))
    missing = [c for c in mapping.target_columns if c not in by_name]
    if missing:
        raise SchemaError(f"target table {mapping.target} has no column {missing[0]!r}")
    return {c: by_name[c] for c in mapping.target_columns}


def _both(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """Run two calls at once; their results in order (an error in either is raised)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        later = pool.submit(second)
        return first(), later.result()


def _control_totals(mine: _Side, theirs: _Side, names: tuple[str, str, str], rows: Any) -> list[dict]:
    """The trial balance per account and month on both sides; a total that differs lists the keys
    of the differing rows in its group (the drill-down)."""
    expected, actual = _both(lambda: mine.totals(*names), lambda: theirs.totals(*names))
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
                       "target_count": count_t, "target_sum": sum_t, "equal": equal,
                       "rows": [] if equal else keys_by_group.get(group, [])[:100]})
    return result


def _sortable(key: tuple) -> tuple:
    """Keys in a stable order for the report: numbers by value, everything else by its text."""
    return tuple((0, v, "") if isinstance(v, (int, Decimal)) and not isinstance(v, bool) else (1, 0, str(v))
                 for v in key)


def _row_differences(mine: _Side, theirs: _Side, suspects: dict[str, tuple]) -> dict[str, RowDifference]:
    """Read the suspect keys on both sides now: the ones that really differ, by key text."""
    source_rows, target_rows = _both(lambda: mine.rows([s for s, _ in suspects.values() if s is not None]),
                                     lambda: theirs.rows([t for _, t in suspects.values() if t is not None]))
    found = {}
    for text, (source_key, target_key) in suspects.items():
        want = mine.normalised(source_rows[source_key]) if source_key in source_rows else None
        have = theirs.normalised(target_rows[target_key]) if target_key in target_rows else None
        if want is None and have is None:
            continue
        shown_key = tuple((want if want is not None else have)[k] for k in theirs.key)
        if have is None:
            difference = RowDifference("missing", shown_key)
        elif want is None:
            difference = RowDifference("extra", shown_key)
        else:
            columns = {name: (want[name], have[name]) for name, column in mine.target_columns.items()
                       if canonical(want[name], column) != canonical(have[name], column)}
            if not columns:
                continue
            difference = RowDifference("different", shown_key, columns)
        totals = mine.mapping.spec.control_totals if mine.mapping else None
        if totals is not None:
            difference.groups = {mine.group(image, totals[0], totals[1]) for image in (want, have) if image is not None}
        found[text] = difference
    return found


# -- repair -----------------------------------------------------------------------------------------
def repair_plan(pair: Pair, report: ReconcileReport) -> list[TargetOp]:
    """The target operations that make each table equal: upsert missing/differing rows as the
    source has them now, delete extra rows."""
    source, target, mappings = open_pair(pair)
    try:
        return _plan(source, target, mappings, report)
    finally:
        source.close()
        target.close()


def _plan(source: Any, target: Any, mappings: dict[str, TableMapping], report: ReconcileReport) -> list[TargetOp]:
    plan: list[TargetOp] = []
    for table in report.tables:
        mapping = mappings[table.source_table]
        columns = _target_columns(target, mapping)
        side = _Side(source, mapping.source, mapping.source_key, columns, None, mapping)
        present = side.rows([s for s, _ in table.keys.values() if s is not None])
        theirs = _Side(target, mapping.target, mapping.target_key, columns, None)
        held = theirs.rows([t for _, t in table.keys.values() if t is not None])
        now = state._store.now()
        for source_key, target_key in table.keys.values():
            row = present.get(source_key) if source_key is not None else None
            mapped = side.normalised(row) if row is not None else None
            # The audit shows the target row before (what was wrong) and after (the source's, as mapped).
            before = theirs.normalised(held[target_key]) if target_key in held else None
            if before is not None and mapped is not None:  # equal values written alike: only real changes show
                before = {c: mapped[c] if canonical(v, columns[c]) == canonical(mapped[c], columns[c]) else v
                          for c, v in before.items()}
            if mapped is not None:
                key = tuple(mapped[k] for k in mapping.target_key)
                change = Change("update" if before is not None else "insert", mapping.source, source_key,
                                before, mapped, now, None, "repair")
                plan.append(TargetOp("upsert", mapping.target, mapping.target_key, key, mapped, change))
            elif before is not None:
                change = Change("delete", mapping.source, source_key or target_key, before, None, now, None, "repair")
                plan.append(TargetOp("delete", mapping.target, mapping.target_key, target_key, None, change))
    return plan


def apply_repair(pair: Pair, plan: list[TargetOp]) -> int:
    """Apply the plan through the normal apply path (audited with reason ``repair``); the pair's
    checkpoint is not touched. Returns the operations applied."""
    if not plan:
        return 0
    source, target, mappings = open_pair(pair)
    try:
        by_target = {m.target: m for m in mappings.values()}
        mapped = [MappedChange(op.change, by_target[op.table], [op]) for op in plan]
        target.prepare_tables(by_target)
        result = target.apply(pair.name, mapped, position=None, snapshot=None, on_error=pair.on_error,
                              reason="repair")
        return result.applied
    finally:
        source.close()
        target.close()


def record(pair: Pair, report: ReconcileReport) -> int | None:
    """Store the run in the target's ``cdc_reconcile_runs``; its id (None before `cdc init`)."""
    target = registry.adapter_for(pair.target.url).target(pair.target.url)
    try:
        with target.engine.begin() as conn:
            try:
                state.ensure_current(conn)
            except StateError as exc:  # a target cdc does not manage (yet) can still be compared
                logger.warning("pair %s: the run is not recorded: %s", pair.name, exc)
                return None
            return state.write_reconcile_run(conn, {
                "pair": pair.name, "started_at": report.started_at, "finished_at": report.finished_at,
                "equal": report.equal, "tables": len(report.tables),
                "missing": sum(t.missing for t in report.tables), "extra": sum(t.extra for t in report.tables),
                "different": sum(t.different for t in report.tables),
                "repaired": None if report.repair is None else report.repair.get("applied"),
                "report": dumps(as_dict(report))})
    finally:
        target.close()


def as_dict(report: ReconcileReport) -> dict:
    """The report as plain JSON-able data (values as the change model encodes them)."""
    return {
        "pair": report.pair, "equal": report.equal, "started_at": report.started_at.isoformat(),
        "finished_at": report.finished_at.isoformat() if report.finished_at else None,
        "pending": report.pending, "limit": report.limit, "repair": report.repair, "run_id": report.run_id,
        "tables": [{
            "source_table": t.source_table, "target_table": t.target_table, "equal": t.equal,
            "source_rows": t.source_rows, "target_rows": t.target_rows, "missing": t.missing, "extra": t.extra,
            "different": t.different, "settled": t.settled, "unmappable": t.unmappable, "methods": t.methods,
            "counted_from_fingerprints": t.counted_from_fingerprints,
            "seconds": round(t.seconds, 3), "totals": t.totals,
            "rows": [{"kind": r.kind, "key": list(r.key),
                      "columns": {c: {"source": s, "target": v} for c, (s, v) in r.columns.items()}}
                     for r in t.rows],
        } for t in report.tables],
    }
