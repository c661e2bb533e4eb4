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
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, Callable, Iterator, NamedTuple

import sqlalchemy as sa

from . import registry, state, values
from ._transforms import EXACT, TransformError, to_decimal
from .changes import Change, dumps
from .config import Pair
from .errors import ConfigError, RowError, SchemaError, StateError
from .mapping import MappedChange, TableMapping, TargetOp
from .pipeline import open_pair
from ._where import check_where

logger = logging.getLogger(__name__)
CHUNK = 10_000
ROWS_PER_BUCKET = 256
#: More differing keys than this (a target that lost a table, a reconcile before the first snapshot):
#: they are counted from the fingerprints, and only the ones listed are read row by row.
MAX_ROW_CHECKS = 50_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


# -- canonical text -------------------------------------------------------------------------------
#: Numbers are made canonical exactly at any size (DECIMAL(65,30), a REAL of 1e308 as NUMERIC: far more
#: digits than Python's default 28), rounding a tie away from zero as PostgreSQL's round() and
#: MySQL's CAST do.
_EXACT = Context(prec=EXACT.prec, rounding=ROUND_HALF_UP)


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
        return _number_text(Decimal(value), kind)
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


def _number_text(number: Decimal, kind: sa.types.TypeEngine) -> str:
    """A number with the column's scale, or without trailing zeros where the column has none;
    NaN and the infinities as PostgreSQL writes them."""
    if not number.is_finite():
        return str(number)
    scale = getattr(kind, "scale", None)
    if scale is not None and isinstance(kind, sa.Numeric) and not isinstance(kind, (sa.Integer, sa.Float)):
        number = number.quantize(Decimal(1).scaleb(-scale), context=_EXACT)
    elif number == number.to_integral_value():
        number = number.quantize(Decimal(1), context=_EXACT)
    else:
        number = number.normalize(_EXACT)
    if number == 0:
        number = abs(number)
    return format(number, "f")


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
    """One key that differs: ``missing`` in the target, ``extra`` there, ``different`` columns, or a
    source row that is ``unmappable`` (its key is the source's then, ``error`` says why)."""

    kind: str
    key: tuple
    columns: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # column -> (source as mapped, target)
    #: The (account, period) control-total groups the row counts in, on either side.
    groups: set = field(default_factory=set, repr=False)
    #: Why a source row cannot be mapped (``unmappable``), with the column it names.
    error: str | None = None
    column: str | None = None
    #: For an ``extra`` row the source still has (its filter leaves it out): said so, and never deleted.
    note: str | None = None


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
    #: Differences (at most ``limit``) then source rows that cannot be mapped (at most ``limit``).
    rows: list[RowDifference] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    totals: list[dict] = field(default_factory=list)
    #: Every differing key: key text -> (source key, target key); for repair. A source key of None:
    #: the source was read and has no row with that key.
    keys: dict[str, tuple[tuple | None, tuple | None]] = field(default_factory=dict, repr=False)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different or self.unmappable)

    @property
    def unlisted(self) -> int:
        """Differences and unmappable rows counted but not listed (over ``--limit``)."""
        return self.missing + self.extra + self.different + self.unmappable - len(self.rows)

    @property
    def totals_sum(self) -> dict | None:
        """The trial balance's grand total: counts, sums and differences over every group."""
        if not self.totals:
            return None
        result = {}
        for name in ("source_count", "target_count", "count_difference"):
            result[name] = sum(t[name] for t in self.totals)
        for name in ("source_sum", "target_sum", "difference"):
            result[name] = _exact_sum(t[name] for t in self.totals)
        result["equal"] = all(t["equal"] for t in self.totals)
        return result


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
    #: The pair's checkpoint when the comparison started (as the source writes positions), or None.
    checkpoint: str | None = None
    #: Who made the report, from what, and when (cdc.provenance); set by cdc.commands.
    provenance: Any = None

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


def _exact_sum(numbers: Any) -> Decimal:
    """A sum of decimals that never rounds (the default context keeps 28 digits)."""
    total = Decimal(0)
    for number in numbers:
        total = _EXACT.add(total, Decimal(number))
    return total


class _Image(NamedTuple):
    """A source row as the target would hold it (``row``), or why it is not there: left out by the
    mapping's filter, or ``error`` (it cannot be mapped)."""

    row: dict | None
    error: RowError | None = None

    @property
    def filtered(self) -> bool:
        return self.row is None and self.error is None


# -- one side of a table ----------------------------------------------------------------------------
class _Side:
    """Fingerprints of one side's table: the source as mapped, or the target."""

    def __init__(self, reads: Any, table: str, key: tuple[str, ...], target_columns: dict[str, sa.Column],
                 where: str | None, mapping: TableMapping | None = None):
        self.reads, self.table, self.key, self.where, self.mapping = reads, table, key, where, mapping
        self.target_columns = target_columns  # target name -> target column, in target order
        #: Source rows the mapping refuses, by side key (the first MAX_ROW_CHECKS; the count is exact).
        self.failures: dict[tuple, RowError] = {}
        self.failed = 0
        self.why = ""
        self.key_targets = mapping.target_key if mapping else key
        #: A single integer key buckets by its value (key mod B): no hash needed.
        self.int_key = len(self.key_targets) == 1 and _is_integer(target_columns[self.key_targets[0]].type)
        self.flags = {name: prefixed(column.type) for name, column in target_columns.items()}
        #: The digest both sides compute: MD5 (everywhere), or a faster one both databases have.
        self.family = "md5"
        self.sql = self._sql()

    @property
    def unmappable(self) -> int:
        return self.failed

    @property
    def families(self) -> tuple[str, ...]:
        return self.reads.fingerprints.families if self.sql else ("md5",)

    @property
    def method(self) -> str:
        return f"in-database ({self.family})" if self.sql else f"streamed ({self.why})"

    @property
    def key_columns(self) -> list[sa.Column]:
        """This side's own key columns, as reflected."""
        info = self.reads.describe(self.table)
        return [info.columns[info.column_names.index(k)] for k in self.key]

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
        key_targets = self.key_targets
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
    def _chunks(self, where: str | None) -> Iterator[list[dict]]:
        """Every row meeting ``where``, in key order, in parts of CHUNK rows."""
        after = None
        while True:
            rows = self.reads.snapshot(self.table, self.key, after, CHUNK, where)
            yield rows
            if len(rows) < CHUNK:
                return
            after = tuple(rows[-1][k] for k in self.key)

    def _scan(self, keep: Callable[[int], bool], buckets: int):
        """(bucket, key text, digest, side key) of every row whose bucket ``keep`` accepts."""
        for rows in self._chunks(self.where):
            for row in rows:
                side_key = tuple(row[k] for k in self.key)
                image = self.image(row)
                if image.error is not None:
                    self._failed(side_key, image.error)
                if image.row is None:
                    continue
                key_text, row_text, number = self.texts(image.row, side_key)
                bucket = number % buckets if self.int_key else _bucket(key_text, buckets)
                if keep(bucket):
                    yield bucket, key_text, _digest(row_text), side_key

    def _failed(self, side_key: tuple, error: RowError) -> None:
        if side_key not in self.failures:
            self.failed += 1
            if len(self.failures) < MAX_ROW_CHECKS:
                self.failures[side_key] = error

    def image(self, row: dict) -> _Image:
        """The row as the target would hold it, or why not (filtered out, cannot be mapped)."""
        if self.mapping is not None:
            key = tuple(row.get(k) for k in self.key)
            try:
                if not self.mapping.passes(row):
                    return _Image(None)
                row = self.mapping.map_row(row, key)
            except RowError as exc:
                exc.table, exc.key = exc.table or self.table, exc.key or key
                return _Image(None, exc)
        return _Image(self._fitted(row))

    def normalised(self, row: dict) -> dict | None:
        """The row as the target would hold it (None: filtered out or cannot be mapped)."""
        return self.image(row).row

    def _fitted(self, row: dict) -> dict:
        result = {}
        for name, column in self.target_columns.items():
            value = row.get(name)
            try:
                result[name] = values.fit(value, column)
            except TransformError:
                result[name] = value  # compared as it is: the difference shows
        return result

    def texts(self, mapped: dict, side_key: tuple) -> tuple[str, str, int | None]:
        """(key text, row text, the integer key or None) of a row as the target would hold it."""
        canon = {name: self._canonical(mapped[name], column, name, side_key)
                 for name, column in self.target_columns.items()}
        key_targets = self.key_targets
        number = int(canon[key_targets[0]]) if self.int_key and canon[key_targets[0]] is not None else None
        if self.int_key and number is None:
            number = 0
        flags = self.flags
        return (_text([canon[k] for k in key_targets], [flags[k] for k in key_targets]),
                _text(list(canon.values()), list(flags.values())), number)

    def _canonical(self, value: Any, column: sa.Column, name: str, side_key: tuple) -> str | None:
        try:
            return canonical(value, column)
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise RowError(f"cannot fingerprint {_brief(value)} as {column.type}: {exc!r}", table=self.table,
                           key=side_key, column=name) from None

    def key_text(self, side_key: tuple) -> str | None:
        """The key text (as in the fingerprints) of a row with this side key; None if the mapping
        cannot map the key."""
        values_ = dict(zip(self.key_targets, side_key))
        if self.mapping is not None:
            try:
                values_ = dict(zip(self.key_targets, self.mapping.target_key_of(side_key)))
            except RowError:
                return None
        fitted = self._fitted(values_)
        columns = self.target_columns
        return _text([self._canonical(fitted[k], columns[k], k, side_key) for k in self.key_targets],
                     [self.flags[k] for k in self.key_targets])

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
            readers = [self.reads.reader(column) for column in self.key_columns]
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
        for rows in self._chunks(self.where):
            for row in rows:
                mapped = self.normalised(row)
                if mapped is not None:
                    entry = found.setdefault(self.group(mapped, account, date), [0, Decimal(0)])
                    entry[0] += 1
                    entry[1] = _EXACT.add(entry[1], Decimal(mapped[amount] or 0))
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
        """Key id (see ``key_id``) -> the row, for the keys that exist (read by key, never with --where)."""
        found = {}
        for row in self.reads.rows_by_keys(self.table, self.key, keys):
            found[self.key_id(tuple(row[k] for k in self.key))] = row
        return found

    def key_id(self, side_key: tuple) -> tuple:
        """A side key as canonical texts: the same whether the driver read it or the other side's
        key was converted to it (a UUID as uuid or as text, an integer as int or Decimal)."""
        return tuple(canonical(v, c) for v, c in zip(side_key, self.key_columns))

    def keys_mapping_to(self, texts: set[str]) -> dict[str, tuple]:
        """Key text -> source key of every source row (read whole, without --where or the mapping's
        filter) whose key the mapping makes into one of ``texts``: for a mapping that transforms a
        key column, where the source key of a target row cannot be worked out backwards."""
        found: dict[str, tuple] = {}
        for rows in self._chunks(None):
            for row in rows:
                side_key = tuple(row[k] for k in self.key)
                text = self.key_text(side_key)
                if text in texts:
                    found.setdefault(text, side_key)
        return found

    def locate(self) -> RowError | None:
        """The first row (key order) and column whose value this side cannot read, map or fingerprint,
        read again value by value; None if every row can. Called after a failure, to name the row."""
        info = self.reads.describe(self.table)
        plain = sa.table(self.table, *[sa.column(c) for c in info.column_names])
        query = sa.select(*plain.c).order_by(*[plain.c[k] for k in self.key])
        if self.where:
            query = query.where(sa.text(self.where))
        readers = [(name, self.reads.reader(column)) for name, column in zip(info.column_names, info.columns)]
        with self.reads.engine.connect() as conn:
            for raw in conn.execution_options(stream_results=True).execute(query):
                row = dict(zip(info.column_names, raw))
                side_key = tuple(row[k] for k in self.key)
                for name, read in readers:
                    try:
                        row[name] = read(row[name])
                    except Exception as exc:  # noqa: BLE001 - any failure of a reader is this value's
                        return RowError(f"cannot read the stored value {_brief(row[name])}: {exc}",
                                        table=self.table, key=side_key, column=name)
                image = self.image(row)
                if image.row is not None:
                    try:
                        self.texts(image.row, side_key)
                    except RowError as exc:
                        return exc
        return None


def _brief(value: Any) -> str:
    """A value in an error message: its repr, cut short (a message is no place for a whole document)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- the comparison ---------------------------------------------------------------------------------
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
    """Make every later transaction on ``reads``' engine read-only, by the statement its adapter
    names (PostgreSQL SET TRANSACTION READ ONLY, MySQL/MariaDB START TRANSACTION READ ONLY,
    SQLite PRAGMA query_only). Reconciliation only reads; so a --where that would write (advance
    a sequence, call a function that inserts) fails instead."""
    prints = reads.fingerprints
    if prints is None:
        logger.warning("%s has no read-only statement: reconcile reads in ordinary transactions",
                       reads.engine.dialect.name)
        return
    prints.read_only(reads.engine)


def _compare_table(source: Any, target: Any, mapping: TableMapping, where: str | None, limit: int,
                   settle: float, say: Callable[[str], None]) -> TableReport:
    started = time.perf_counter()
    columns = _target_columns(target, mapping)
    if where:
        check_where(where, mapping, source.describe(mapping.source).column_names, list(columns),
                    {source.engine.dialect.name, target.engine.dialect.name})
    mine = _Side(source, mapping.source, mapping.source_key, columns, where, mapping)
    theirs = _Side(target, mapping.target, mapping.target_key, columns, _own_rows(target, mapping, where))
    try:
        result = _compare(mine, theirs, mapping, limit, settle, say)
    except (ArithmeticError, ValueError, TypeError, sa.exc.DBAPIError) as exc:
        # A value that could not be read or fingerprinted (inside the database, or here): name it.
        located = mine.locate() or theirs.locate()
        if located is None:
            raise
        raise located from exc
    result.seconds = time.perf_counter() - started
    return result


def _compare(mine: _Side, theirs: _Side, mapping: TableMapping, limit: int, settle: float,
             say: Callable[[str], None]) -> TableReport:
    result = TableReport(mapping.source, mapping.target)
    family = next(f for f in mine.families if f in theirs.families)  # "md5" is in every list
    mine.family = theirs.family = family
    result.methods = {"source": mine.method, "target": theirs.method}
    # Both sides work at once (two databases, or two connections to one).
    say("counting rows")
    buckets = max(1, min(1 << 16, max(_both(mine.count, theirs.count)) // ROWS_PER_BUCKET))
    say(f"fingerprinting in {buckets:,} buckets (source {mine.method}, target {theirs.method})")
    (expected, result.source_rows), (actual, result.target_rows) = _both(lambda: mine.buckets(buckets),
                                                                         lambda: theirs.buckets(buckets))
    differing = {b for b in expected.keys() | actual.keys() if expected.get(b) != actual.get(b)}
    if differing:
        say(f"{len(differing):,} bucket(s) differ: reading their keys")
    want, have = _both(lambda: mine.digests(buckets, differing), lambda: theirs.digests(buckets, differing))
    suspects = {text: (want.get(text, (None, None))[1], have.get(text, (None, None))[1])
                for text in want.keys() | have.keys()
                if text not in want or text not in have or want[text][0] != have[text][0]}
    if suspects:
        say(f"{len(suspects):,} key(s) differ: comparing their rows")
    pairs = _paired(mine, theirs, suspects)
    if len(pairs) > MAX_ROW_CHECKS:
        _count_from_fingerprints(result, mine, theirs, suspects, pairs, limit)
    else:
        _compare_rows(result, mine, theirs, pairs, limit, settle)
    result.unmappable = mine.unmappable
    result.rows += [RowDifference("unmappable", key, error=error.describe(), column=error.column)
                    for key, error in sorted(mine.failures.items(), key=lambda item: _sortable(item[0]))[:limit]]
    return result


def _count_from_fingerprints(result: TableReport, mine: _Side, theirs: _Side, suspects: dict[str, tuple],
                             pairs: dict[str, tuple], limit: int) -> None:
    """So many keys differ that they are counted from the fingerprints (which side had each key);
    only ``limit`` are read."""
    result.counted_from_fingerprints = True
    for source_key, target_key in suspects.values():
        kind = "missing" if target_key is None else "extra" if source_key is None else "different"
        setattr(result, kind, getattr(result, kind) + 1)
    result.keys = pairs
    listed = dict(sorted(pairs.items())[:limit])
    found = _row_differences(mine, theirs, listed)
    result.rows = sorted((d for d in found.values() if d.kind != "unmappable"), key=lambda d: _sortable(d.key))


def _compare_rows(result: TableReport, mine: _Side, theirs: _Side, pairs: dict[str, tuple], limit: int,
                  settle: float) -> None:
    """Read the differing keys on both sides, again for ``settle`` seconds while some still differ."""
    deadline = time.monotonic() + settle
    differences = _row_differences(mine, theirs, pairs)
    while differences and time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        again = _row_differences(mine, theirs, {t: pairs[t] for t in differences})
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
    """The trial balance per account and month on both sides, with the differences (target minus
    source); a total that differs lists the keys of the differing rows in its group (the drill-down)."""
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
                       "target_count": count_t, "target_sum": sum_t, "count_difference": count_t - count_s,
                       "difference": _EXACT.subtract(Decimal(sum_t), Decimal(sum_s)), "equal": equal,
                       "rows": [] if equal else keys_by_group.get(group, [])[:100]})
    return result


def _sortable(key: tuple) -> tuple:
    """Keys in a stable order for the report: numbers by value, everything else by its text."""
    return tuple((0, v, "") if isinstance(v, (int, Decimal)) and not isinstance(v, bool) else (1, 0, str(v))
                 for v in key)


# -- keys on both sides -------------------------------------------------------------------------------
def _paired(mine: _Side, theirs: _Side, suspects: dict[str, tuple]) -> dict[str, tuple]:
    """Each differing key text with its key on both sides, looked up on the side whose
    fingerprints did not have it: the target key of a source row through the mapping; the source
    key of a target row from its key columns where the mapping copies them as they are, else by
    reading the source's keys. Both by key, never with --where: a row selected on one side only
    (a --where on a transformed column, a non-deterministic one) or in flight is then compared,
    not reported, and a repair deletes a target row only when the source has no row with its key.
    A source key of None: the source has none."""
    invertible = _invertible(mine.mapping)
    orphans = {text for text, (source_key, _) in suspects.items() if source_key is None}
    scanned = mine.keys_mapping_to(orphans) if orphans and not invertible else {}
    source_columns, target_columns = mine.key_columns, theirs.key_columns
    pairs = {}
    for text, (source_key, target_key) in suspects.items():
        if source_key is None:
            source_key = _converted(target_key, source_columns) if invertible else scanned.get(text)
        if target_key is None and source_key is not None:
            target_key = _target_key(mine, source_key, target_columns)
        pairs[text] = (source_key, target_key)
    return pairs


def _invertible(mapping: TableMapping) -> bool:
    """Whether the mapping copies every key column as it is (renamed at most), so a target key is
    the source key."""
    transforms = {target: transforms for target, _, transforms in mapping.column_specs()}
    return not any(transforms[k] for k in mapping.target_key)


def _target_key(mine: _Side, source_key: tuple, columns: list[sa.Column]) -> tuple | None:
    """The target key the mapping makes of a source key (None: it cannot map it)."""
    try:
        mapped = mine.mapping.target_key_of(source_key)
    except RowError:
        return None
    fitted = [_fit_or_keep(value, column) for value, column in zip(mapped, columns)]
    return _converted(tuple(fitted), columns)


def _fit_or_keep(value: Any, column: sa.Column) -> Any:
    try:
        return values.fit(value, column)
    except TransformError:
        return value


def _converted(key: tuple, columns: list[sa.Column]) -> tuple | None:
    """A key as the other side holds it, in these key columns' Python types (a UUID as uuid or as
    text, an integer as int); None when no row there can have it (text that is no UUID)."""
    result = []
    for value, column in zip(key, columns):
        kind = column.type
        try:
            if isinstance(kind, sa.Uuid) and not isinstance(value, uuid.UUID):
                value = uuid.UUID(str(value))
            elif isinstance(kind, sa.String) and not isinstance(value, str):
                value = str(value)
            elif _is_integer(kind) and not isinstance(value, int):
                value = values.fit(value, column)
            elif isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float) and not isinstance(value, Decimal):
                value = to_decimal(value)
        except (ValueError, TransformError):
            return None
        result.append(value)
    return tuple(result)


def _row_differences(mine: _Side, theirs: _Side, pairs: dict[str, tuple]) -> dict[str, RowDifference]:
    """Read the keys on both sides now (by key, without --where): the ones that really differ, by
    key text. A source row the mapping refuses comes back as ``unmappable``."""
    source_rows, target_rows = _both(lambda: mine.rows([s for s, _ in pairs.values() if s is not None]),
                                     lambda: theirs.rows([t for _, t in pairs.values() if t is not None]))
    found = {}
    for text, (source_key, target_key) in pairs.items():
        source = source_rows.get(mine.key_id(source_key)) if source_key is not None else None
        target = target_rows.get(theirs.key_id(target_key)) if target_key is not None else None
        image = mine.image(source) if source is not None else None
        have = theirs.normalised(target) if target is not None else None
        difference = _difference(mine, theirs, source_key, image, have)
        if difference is not None:
            found[text] = difference
    return found


def _difference(mine: _Side, theirs: _Side, source_key: tuple | None, image: _Image | None,
                have: dict | None) -> RowDifference | None:
    """How one key differs: the source's image of it (None: no such source row) against the target's row."""
    if image is not None and image.error is not None:
        return RowDifference("unmappable", source_key, error=image.error.describe(), column=image.error.column)
    want = image.row if image is not None else None
    if want is None and have is None:
        return None
    shown_key = tuple((want if want is not None else have)[k] for k in theirs.key)
    if have is None:
        difference = RowDifference("missing", shown_key)
    elif want is None:
        note = "the source has this key; the mapping's filter leaves the row out" if image is not None else None
        difference = RowDifference("extra", shown_key, note=note)
    else:
        columns = {name: (want[name], have[name]) for name, column in mine.target_columns.items()
                   if mine._canonical(want[name], column, name, source_key) !=
                   theirs._canonical(have[name], column, name, shown_key)}
        if not columns:
            return None
        difference = RowDifference("different", shown_key, columns)
    totals = mine.mapping.spec.control_totals
    if totals is not None:
        difference.groups = {mine.group(row, totals[0], totals[1]) for row in (want, have) if row is not None}
    return difference


# -- repair -----------------------------------------------------------------------------------------
@dataclass
class RepairPlan:
    """The target operations that make the tables equal, the source row each upsert comes from,
    and the differing target rows a repair keeps because the source still has their key."""

    ops: list[TargetOp] = field(default_factory=list)
    #: Per op: (source table, source key, the source row as read) for an upsert; None for a delete.
    sources: list[tuple[str, tuple, dict] | None] = field(default_factory=list)
    #: {"table", "key", "why"} of each extra target row left in place.
    kept: list[dict] = field(default_factory=list)

    def describe(self, limit: int) -> list[dict]:
        """The first ``limit`` steps as plain data for the report."""
        steps = []
        for op, source in list(zip(self.ops, self.sources))[:limit]:
            step = {"op": op.op, "table": op.table, "key": list(op.key)}
            if source is None:
                step["why"] = "the source has no row with this key"
            else:
                step.update(source_table=source[0], source_key=list(source[1]), source_row=source[2])
            steps.append(step)
        return steps


def repair_plan(pair: Pair, report: ReconcileReport) -> RepairPlan:
    """Upsert missing and differing rows as the source has them now; delete an extra target row
    only after reading, by key and without --where, that the source has no row with its key (one the
    source has but the mapping's filter leaves out, or cannot map, is kept and listed)."""
    source, target, mappings = open_pair(pair)
    try:
        read_only(source)
        read_only(target)
        plan = RepairPlan()
        for table in report.tables:
            if table.keys:
                _plan_table(source, target, mappings[table.source_table], table, plan)
        return plan
    finally:
        source.close()
        target.close()


def _plan_table(source: Any, target: Any, mapping: TableMapping, table: TableReport, plan: RepairPlan) -> None:
    columns = _target_columns(target, mapping)
    mine = _Side(source, mapping.source, mapping.source_key, columns, None, mapping)
    theirs = _Side(target, mapping.target, mapping.target_key, columns, None)
    pairs = dict(table.keys)
    # A key the source had no row for is looked up again now, as the comparison did.
    pairs.update(_paired(mine, theirs, {text: (None, t) for text, (s, t) in pairs.items() if s is None}))
    present, held = _both(lambda: mine.rows([s for s, _ in pairs.values() if s is not None]),
                          lambda: theirs.rows([t for _, t in pairs.values() if t is not None]))
    now = state._store.now()
    for source_key, target_key in pairs.values():
        row = present.get(mine.key_id(source_key)) if source_key is not None else None
        held_row = held.get(theirs.key_id(target_key)) if target_key is not None else None
        before = theirs.normalised(held_row) if held_row is not None else None
        if row is None:
            if before is not None:
                change = Change("delete", mapping.source, target_key, before, None, now, None, "repair")
                plan.ops.append(TargetOp("delete", mapping.target, mapping.target_key, target_key, None, change))
                plan.sources.append(None)
            continue
        image = mine.image(row)
        if image.row is None:
            if before is not None:
                why = (f"it cannot be mapped: column {image.error.column}: {image.error}" if image.error
                       else "the mapping's filter leaves the source row out")
                plan.kept.append({"table": mapping.target, "key": list(target_key),
                                  "why": f"the source has this key ({why}); not deleted"})
            continue
        _plan_upsert(plan, mine, mapping, columns, source_key, row, image.row, before, now)


def _plan_upsert(plan: RepairPlan, mine: _Side, mapping: TableMapping, columns: dict[str, sa.Column],
                 source_key: tuple, row: dict, mapped: dict, before: dict | None, now: dt.datetime) -> None:
    """Upsert the source's row unless the target already holds it (it settled meanwhile)."""
    if before is not None:
        same = {c for c, v in before.items() if canonical(v, columns[c]) == canonical(mapped[c], columns[c])}
        if len(same) == len(columns):
            return
        # The audit shows the target row before (what was wrong) and after (the source's, as mapped);
        # equal values written alike, so only real changes show.
        before = {c: mapped[c] if c in same else v for c, v in before.items()}
    key = tuple(mapped[k] for k in mapping.target_key)
    change = Change("update" if before is not None else "insert", mapping.source, source_key, before, mapped, now,
                    None, "repair")
    plan.ops.append(TargetOp("upsert", mapping.target, mapping.target_key, key, mapped, change))
    plan.sources.append((mapping.source, source_key, _read_by_mapping(mapping, row)))


def _read_by_mapping(mapping: TableMapping, row: dict) -> dict:
    """The source row's columns the mapping reads (key, copied, filtered on): a column it does not
    copy (an e-mail address, say) stays out of the plan, the report and cdc_reconcile_runs."""
    read = set(mapping.source_key) | {source for _, source, _ in mapping.column_specs() if source is not None}
    read |= {f.column for f in mapping.spec.filters}
    return {c: v for c, v in row.items() if c in read}


def apply_repair(pair: Pair, plan: RepairPlan) -> int:
    """Apply the plan through the normal apply path (audited with reason ``repair``); the pair's
    checkpoint is not touched. Returns the operations applied."""
    if not plan.ops:
        return 0
    source, target, mappings = open_pair(pair)
    try:
        by_target = {m.target: m for m in mappings.values()}
        mapped = [MappedChange(op.change, by_target[op.table], [op]) for op in plan.ops]
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
        "checkpoint": report.checkpoint, "pending": report.pending, "limit": report.limit, "repair": report.repair,
        "run_id": report.run_id,
        "tables": [{
            "source_table": t.source_table, "target_table": t.target_table, "equal": t.equal,
            "source_rows": t.source_rows, "target_rows": t.target_rows, "missing": t.missing, "extra": t.extra,
            "different": t.different, "settled": t.settled, "unmappable": t.unmappable, "methods": t.methods,
            "counted_from_fingerprints": t.counted_from_fingerprints,
            "seconds": round(t.seconds, 3), "totals": t.totals, "totals_sum": t.totals_sum,
            "rows": [_row_dict(r) for r in t.rows],
        } for t in report.tables],
    }


def _row_dict(row: RowDifference) -> dict:
    result = {"kind": row.kind, "key": list(row.key),
              "columns": {c: {"source": s, "target": v} for c, (s, v) in row.columns.items()}}
    if row.kind == "unmappable":
        result.update(column=row.column, error=row.error)
    if row.note:
        result["note"] = row.note
    return result
