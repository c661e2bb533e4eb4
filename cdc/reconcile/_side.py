"""One side of a compared table: the source as the mapping makes it, or the target; its fingerprints."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
from decimal import Decimal
from typing import Any, Callable, Iterator, NamedTuple

import sqlalchemy as sa

from .. import values
from .._transforms import TransformError
from ..errors import ConfigError, RowError
from ..mapping import TableMapping
from ._canonical import EXACT_HALF_UP, canonical, is_integer, joined, md5_bucket, md5_digest, prefixed

CHUNK = 10_000
#: Source rows the mapping refuses are listed from the first this many (their count is exact).
MAX_FAILURES_KEPT = 50_000


class Image(NamedTuple):
    """A source row as the target would hold it (``row``), or why it is not there: left out by the
    mapping's filter, or ``error`` (it cannot be mapped)."""

    row: dict | None
    error: RowError | None = None


class Side:
    """Fingerprints of one side's table: the source as mapped, or the target."""

    def __init__(self, reads: Any, table: str, key: tuple[str, ...], target_columns: dict[str, sa.Column],
                 where: str | None, mapping: TableMapping | None = None, journal: tuple[str, str] | None = None):
        self.reads, self.table, self.key, self.where, self.mapping = reads, table, key, where, mapping
        #: A ledger's journal: its (sequence, reverses) columns; a key's row is its current entry (see rows).
        self.journal = journal
        self.target_columns = target_columns  # target name -> target column, in target order
        #: Source rows the mapping refuses, by side key (the first MAX_FAILURES_KEPT; the count is exact).
        self.failures: dict[tuple, RowError] = {}
        self.unmappable = 0
        self.why = ""
        self.key_targets = mapping.target_key if mapping else key
        #: A single integer key buckets by its value (key mod B): no hash needed.
        self.int_key = len(self.key_targets) == 1 and is_integer(target_columns[self.key_targets[0]].type)
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
        if self.mapping.spec.filters or self.mapping.soft_delete or \
                any(source is None or transforms for _, source, transforms in specs):
            return None  # (soft-deleted rows are not the source's: Python leaves them out)
        by_target = {target: source for target, source, _ in specs}
        return {name: by_target[name] for name in self.target_columns}

    def _sql(self) -> tuple[str, str] | None:
        """(key text SQL, row text SQL), or None when Python must read the rows."""
        prints, names = self.reads.fingerprints, self._names()
        if prints is None:
            self.why = f"no SQL fingerprints for {self.reads.backend}"
            return None
        if names is None:
            self.why = "the mapping transforms or filters rows"
            return None
        with self.reads.reading() as conn:
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
        if self.int_key and not is_integer(mine[names[key_targets[0]]].type):
            self.why = f"key column {names[key_targets[0]]} is not an integer here"
            return None
        self.bucket_of = (lambda buckets: prints.int_bucket(names[key_targets[0]], buckets)) if self.int_key else \
            (lambda buckets: prints.bucket(prints.join([parts[k] for k in key_targets]), buckets, self.family))
        return (prints.join([parts[k] for k in key_targets]), prints.join(list(parts.values())))

    def count(self) -> int:
        query = sa.select(sa.func.count()).select_from(sa.table(self.table))
        if self.where:  # in parentheses, as every later read puts it: a --where that breaks them fails here
            query = query.where(sa.text(f"({self.where})"))
        with self.reads.reading() as conn:
            try:
                return conn.execute(query).scalar()
            except sa.exc.DBAPIError as exc:
                if not self.where:
                    raise
                raise ConfigError(f"--where {self.where!r} does not work on table {self.table}: "
                                  f"{str(exc.orig).strip().splitlines()[0]}") from None

    def _from(self) -> str:
        quote = self.reads.quote
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

    def _scan(self, keep: Callable[[int], bool], buckets: int, counting: bool = False):
        """(bucket, key text, digest, side key) of every row whose bucket ``keep`` accepts; the
        ``counting`` scan (the first, over every bucket) also records the rows the mapping refuses."""
        for rows in self._chunks(self.where):
            for row in rows:
                side_key = tuple(row[k] for k in self.key)
                image = self.image(row)
                if image.error is not None and counting:
                    self._failed(side_key, image.error)
                if image.row is None:
                    continue
                key_text, row_text, number = self.texts(image.row, side_key)
                bucket = number % buckets if self.int_key else md5_bucket(key_text, buckets)
                if keep(bucket):
                    yield bucket, key_text, md5_digest(row_text), side_key

    def _failed(self, side_key: tuple, error: RowError) -> None:
        self.unmappable += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures[side_key] = error

    def image(self, row: dict) -> Image:
        """The row as the target would hold it, or why not (filtered out, cannot be mapped)."""
        if self.mapping is not None:
            key = tuple(row.get(k) for k in self.key)
            try:
                if not self.mapping.passes(row):
                    return Image(None)
                row = self.mapping.map_row(row, key)
            except RowError as exc:
                exc.table, exc.key = exc.table or self.table, exc.key or key
                return Image(None, exc)
        return Image(self._fitted(row))

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
        canon = {name: self.canonical_of(mapped[name], column, name, side_key)
                 for name, column in self.target_columns.items()}
        key_targets = self.key_targets
        number = int(canon[key_targets[0]]) if self.int_key and canon[key_targets[0]] is not None else None
        if self.int_key and number is None:
            number = 0
        flags = self.flags
        return (joined([canon[k] for k in key_targets], [flags[k] for k in key_targets]),
                joined(list(canon.values()), list(flags.values())), number)

    def canonical_of(self, value: Any, column: sa.Column, name: str, side_key: tuple) -> str | None:
        try:
            return canonical(value, column)
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise RowError(f"cannot fingerprint {brief(value)} as {column.type}: {exc!r}", table=self.table,
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
        return joined([self.canonical_of(fitted[k], columns[k], k, side_key) for k in self.key_targets],
                     [self.flags[k] for k in self.key_targets])

    def buckets(self, buckets: int) -> tuple[dict[int, tuple[int, int]], int]:
        """Per bucket (count, sum of digests); and the rows counted."""
        result: dict[int, list[int]] = {}
        if self.sql:
            prints = self.reads.fingerprints
            key_text, row_text = self.sql
            query = (f"SELECT {self.bucket_of(buckets)} AS b, count(*), "
                     f"{prints.total(prints.digest(row_text, self.family))} {self._from()} GROUP BY 1")
            with self.reads.reading() as conn:
                found = {int(b): (int(n), int(s)) for b, n, s in conn.exec_driver_sql(query)}
            return found, sum(n for n, _ in found.values())
        rows = 0
        for bucket, _, digest, _ in self._scan(lambda b: True, buckets, counting=True):
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
            quote = self.reads.quote
            keys = ", ".join(quote(k) for k in self.key)
            bucket = self.bucket_of(buckets)
            where = f"{bucket} IN ({', '.join(str(int(b)) for b in sorted(wanted))})"
            query = (f"SELECT {key_text}, {prints.digest(row_text, self.family)}, {keys} {self._from()}"
                     f"{' AND ' if self.where else ' WHERE '}{where}")
            readers = [self.reads.reader(column) for column in self.key_columns]
            with self.reads.reading() as conn:
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
            prints, quote = self.reads.fingerprints, self.reads.quote
            account_text = prints.canonical(names[account], mine[names[account]], self.target_columns[account].type)
            query = (f"SELECT {account_text}, {month}, count(*), sum({quote(names[amount])}) {self._from()} "
                     "GROUP BY 1, 2")
            with self.reads.reading() as conn:
                return {(a, p): (int(n), Decimal(total or 0)) for a, p, n, total in conn.exec_driver_sql(query)}
        found: dict[tuple[str, str], list] = {}
        for rows in self._chunks(self.where):
            for row in rows:
                mapped = self.normalised(row)
                if mapped is not None:
                    entry = found.setdefault(self.group(mapped, account, date), [0, Decimal(0)])
                    entry[0] += 1
                    entry[1] = EXACT_HALF_UP.add(entry[1], Decimal(mapped[amount] or 0))
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
        """Key id (see ``key_id``) -> the row, for the keys that exist (read by key, never with --where);
        of a journal, each key's current entry: its newest row, when that is no reversal."""
        found = {}
        for row in self.reads.rows_by_keys(self.table, self.key, keys):
            key_id = self.key_id(tuple(row[k] for k in self.key))
            kept = found.get(key_id)
            if self.journal is None or kept is None or row[self.journal[0]] > kept[self.journal[0]]:
                found[key_id] = row
        if self.journal is not None:  # a key whose newest row is a reversal has no current entry
            found = {key_id: row for key_id, row in found.items() if row[self.journal[1]] is None}
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
        query = sa.select(*self.reads.selected(info, plain)).order_by(*[plain.c[k] for k in self.key])
        if self.where:
            query = query.where(sa.text(f"({self.where})"))
        readers = [(name, self.reads.reader(column)) for name, column in zip(info.column_names, info.columns)]
        with self.reads.reading() as conn:
            for raw in conn.execution_options(stream_results=True).execute(query):
                row = dict(zip(info.column_names, raw))
                side_key = tuple(row[k] for k in self.key)
                for name, read in readers:
                    try:
                        row[name] = read(row[name])
                    except Exception as exc:  # noqa: BLE001 - any failure of a reader is this value's
                        return RowError(f"cannot read the stored value {brief(row[name])}: {exc}",
                                        table=self.table, key=side_key, column=name)
                image = self.image(row)
                if image.row is not None:
                    try:
                        self.texts(image.row, side_key)
                    except RowError as exc:
                        return exc
        return None


def brief(value: Any) -> str:
    """A value in an error message: its repr, cut short (a message is no place for a whole document)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def both(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """Run two calls at once; their results in order (an error in either is raised)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        later = pool.submit(second)
        return first(), later.result()
