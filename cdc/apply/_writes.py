"""A part's rows on the target: value fit checks, one savepoint per change, statements grouped in runs."""

from __future__ import annotations

import bisect
import itertools
import operator
import weakref
from typing import Any, Callable, Iterable

import sqlalchemy as sa

from .. import values
from .._transforms import TransformError
from ..errors import RowError, SchemaError
from ..mapping import MappedChange, TargetOp
from . import _limits
from ._records import in_statements

#: One operation ready to send: (op, target table, key columns, the row's bound values).
Statement = tuple[str, str, tuple[str, ...], dict]
#: Called with a change the target refuses, its RowError and the list it is parked in.
Reject = Callable[[MappedChange, RowError, list], None]

_RUN_KEY = operator.itemgetter(0, 1, 2)  # (op, table, key columns): one run per change of these
_WRITES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def writes_for(target: Any) -> Writes:
    """The fit checks and write order of ``target``, made once per target object."""
    writes = _WRITES.get(target)
    if writes is None:
        writes = _WRITES[target] = Writes(target)
    return writes


class Writes:
    """Writes a part's rows through one target's ``write_run``, its values checked to fit first."""

    def __init__(self, target: Any):
        self.target = weakref.proxy(target)  # kept in a cache keyed by the target: no strong reference back
        self._writers: dict[str, tuple[frozenset, dict, tuple | None]] = {}
        self._free_order: dict[str, bool] = {}

    def write_part(self, conn: Any, mapped: list[MappedChange], isolate: bool, reject: Reject,
                   limit: int | None = None) -> tuple[list[MappedChange], list]:
        """Rows of one part: fit checks (a row over the statement ``limit`` is refused here, never
        sent), then one statement per run, or with ``isolate`` one savepoint per change so that a
        change the target refuses as a row ('row' by its ``classify``) is rejected alone."""
        parked: list[tuple[MappedChange, RowError]] = []
        prepared = self._prepared(mapped, reject, parked, limit)
        if not isolate:
            self.write(conn, [s for _, statements in prepared for s in statements], limit)
            return [item for item, _ in prepared], parked
        done: list[MappedChange] = []
        refused: set = set()  # keys a change of which the target refused: their later changes wait
        for item, statements in prepared:
            key = (item.change.table, item.change.key)
            if key in refused and item.mapping.spec.hold is not False:
                reject(item, RowError("waits behind an earlier change of the same key that the target refused in "
                                      "this transaction (order per key is kept)", kind="held",
                                      blocked_by="a dead letter of the same transaction"), parked)
                continue
            try:
                with conn.begin_nested():
                    self.write(conn, statements, limit)
                done.append(item)
            except sa.exc.DBAPIError as exc:
                if self.target.classify(exc) != "row":
                    raise
                refused.add(key)
                reject(item, RowError(f"the target refused the row: {str(exc.orig).strip()}"), parked)
        return done, parked

    def _prepared(self, mapped: list[MappedChange], reject: Reject, parked: list,
                  limit: int | None) -> list[tuple[MappedChange, list[Statement]]]:
        prepared = []
        for item in mapped:
            try:
                if item.error is not None:
                    raise item.error
                statements = [self.prepare(op) for op in item.ops]
                if limit is not None:
                    for _, _, _, params in statements:
                        _limits.refuse_oversized(self.target.statement_size, params, limit,
                                                 self.target.statement_limit_setting)
                prepared.append((item, statements))
            except RowError as exc:
                reject(item, exc, parked)
        return prepared

    def prepare(self, op: TargetOp) -> Statement:
        """The operation with its values checked to fit their columns and bound for the driver;
        RowError (naming the column) for a value that does not fit, SchemaError for a column the
        target table lacks."""
        writers, trivial = self._column_writers(op.table)
        source = op.row if op.op == "upsert" else dict(zip(op.key_columns, op.key))
        if trivial is not None and op.op == "upsert" and source.keys() <= trivial[0]:
            for name in trivial[1]:
                if source.get(name) is None:
                    raise RowError("NULL in a NOT NULL column", table=op.table, key=op.key, column=name)
            return op.op, op.table, op.key_columns, source
        params = {}
        for name, value in source.items():
            write = writers.get(name)
            if write is None:
                raise SchemaError(f"target table {op.table} has no column {name!r}: add it or change the mapping")
            try:
                params[name] = write(value)
            except TransformError as exc:
                raise RowError(str(exc), table=op.table, key=op.key, column=name) from None
        return op.op, op.table, op.key_columns, params

    def _column_writers(self, name: str) -> tuple[dict, tuple | None]:
        """Per column: fit check then the dialect's binding, composed once per table (again when
        the target trusts other columns); and, when every column is trusted and bound as it is,
        (the columns, the NOT NULL ones): such a row needs only those checked."""
        trusted = self.target.trusted(name)
        entry = self._writers.get(name)
        if entry is None or entry[0] is not trusted:
            entry = self._writers[name] = (trusted, *self._compose(name, trusted))
        return entry[1], entry[2]

    def _compose(self, name: str, trusted: frozenset) -> tuple[dict, tuple | None]:
        columns = self.target.table(name).columns
        bindings = {str(c.name): self.target.binding(c) for c in columns}

        def compose(column: sa.Column) -> Callable[[Any], Any]:
            bind = bindings[str(column.name)]
            fit = _nullable_only(column) if column.name in trusted else values.fitter(column)
            return fit if bind is None else (lambda value: bind(fit(value)))

        writers = {str(c.name): compose(c) for c in columns}
        if all(str(c.name) in trusted for c in columns) and all(b is None for b in bindings.values()):
            return writers, (frozenset(writers), [str(c.name) for c in columns if not (c.nullable or c.primary_key)])
        return writers, None

    def write(self, conn: Any, statements: list[Statement], limit: int | None = None) -> None:
        """Run operations of one kind on one table together (in statements under ``limit``).

        Where the order of rows cannot matter to the target (see ``free_order``), the operations are
        gathered into as few runs as keep each row's own operations in their order: the many small
        transactions of an OLTP load (a few tables, each changed once per transaction) then take a
        statement per table, not one per change. Otherwise only consecutive operations are joined."""
        names = {s[1] for s in statements}
        runs = _runs(statements) if len(statements) > 1 and self.free_order(names) else None
        if runs is None:
            runs = [(run_key, [s[3] for s in run]) for run_key, run in itertools.groupby(statements, key=_RUN_KEY)]
        for (op, name, key), params in runs:
            for part in in_statements(self.target, params, limit):
                self.target.write_run(conn, op, name, key, part)

    def free_order(self, names: Iterable[str]) -> bool:
        """Whether rows of these target tables may be written in another order than they changed,
        each row's own changes kept in order: true when none has a foreign key or a unique
        constraint or index besides its key (then no order of distinct rows can fail where
        another would not), as in the tables `cdc init` makes. Cached per table."""
        for name in names:
            if name not in self._free_order:
                table = self.target.table(name)
                key = {c.name for c in table.primary_key.columns}
                unique = [set(c.columns.keys()) for c in table.constraints if isinstance(c, sa.UniqueConstraint)]
                unique += [{c.name for c in i.columns} for i in table.indexes if i.unique]
                self._free_order[name] = not table.foreign_keys and all(u == key for u in unique)
            if not self._free_order[name]:
                return False
        return True


def _nullable_only(column: sa.Column) -> Callable[[Any], Any]:
    """The fit check of a column whose values come from an identical column: only NOT NULL remains."""
    if column.nullable or column.primary_key:
        return _as_it_is

    def check(value: Any) -> Any:
        if value is None:
            raise TransformError("NULL in a NOT NULL column")
        return value

    return check


def _as_it_is(value: Any) -> Any:
    return value


def _runs(statements: list[Statement]) -> list[tuple[tuple, list[dict]]] | None:
    """``statements`` as runs of one (op, table, key, columns) each: a statement joins the first run of
    its kind that comes no earlier than the run its row's previous statement went to, so each row's
    statements stay in order (within a run, an executemany keeps its order). None when a key value
    cannot be told from another (unhashable): then the caller keeps the order as it is."""
    runs: list[tuple[tuple, list[dict]]] = []
    by_kind: dict[tuple, list[int]] = {}
    last: dict[tuple, int] = {}
    try:
        for op, name, key, params in statements:
            kind, row = (op, name, key, tuple(params)), (name, tuple([params[k] for k in key]))
            indexes = by_kind.setdefault(kind, [])
            at = bisect.bisect_left(indexes, last.get(row, -1))
            if at < len(indexes):
                index = indexes[at]
            else:
                index = len(runs)
                runs.append((kind, []))
                indexes.append(index)
            runs[index][1].append(params)
            last[row] = index
    except TypeError:
        return None
    return [((op, name, key), params) for (op, name, key, _), params in runs]
