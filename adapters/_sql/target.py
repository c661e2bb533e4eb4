"""The Target over SQLAlchemy Core: the apply transaction, audit, dead letters and checkpoint."""

from __future__ import annotations

import bisect
import contextlib
import itertools
import operator
from typing import Any, Callable, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from cdc import state, values
from cdc._transforms import TransformError
from cdc.changes import ApplyResult, Position, Row, dumps
from cdc.errors import RetryableError, RowError, SchemaError, TargetError
from cdc.mapping import MappedChange, TargetOp

from .. import _limits
from .reads import KeyedReads, _identity, _nullable_only


class SqlTarget(KeyedReads):
    """A Target over SQLAlchemy Core; a dialect supplies ``upsert`` and ``writer``."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._tables: dict[str, sa.Table] = {}
        self._writers: dict[str, dict[str, Callable[[Any], Any]]] = {}
        self._trivial: dict[str, tuple[frozenset, list[str]]] = {}

    # -- dialect hooks -------------------------------------------------------------
    #: The dialect's INSERT construct with ``on_conflict_do_update`` (SQLite, PostgreSQL); a
    #: dialect with another upsert syntax (MySQL's ON DUPLICATE KEY UPDATE) overrides ``upsert``.
    insert_on_conflict: Callable[[sa.TableClause], Any] | None = None

    def upsert(self, table: sa.TableClause, key: tuple[str, ...], columns: list[str]) -> sa.Executable:
        """An INSERT that updates the row when ``key`` exists, in the dialect's syntax."""
        statement = type(self).insert_on_conflict(table)
        updates = {c: statement.excluded[c] for c in columns if c not in key}
        if not updates:
            return statement.on_conflict_do_nothing(index_elements=list(key))
        return statement.on_conflict_do_update(index_elements=list(key), set_=updates)

    def writer(self, column: sa.Column) -> Callable[[Any], Any]:
        """How a checked Python value of ``column`` is bound (TransformError if it cannot be)."""
        return _identity

    #: True when ``writer`` already makes driver-ready values, so statements carry no SQLAlchemy types.
    binds_own_values = False

    def statement_table(self, name: str) -> sa.TableClause:
        """The table statements are built on (untyped when the dialect binds its own values)."""
        if not self.binds_own_values:
            return self.table(name)
        plain = self.__dict__.setdefault("_plain", {})
        if name not in plain:
            plain[name] = sa.table(name, *[sa.column(c.name) for c in self.table(name).columns])
        return plain[name]

    def write_audit(self, conn: sa.Connection, rows: list[dict]) -> None:
        """Append audit rows in the apply transaction (a dialect may bulk-load them)."""
        state.write_audit(conn, rows)

    def classify(self, exc: sa.exc.DBAPIError) -> str:
        """'row' (this row is bad), 'retry' (passing fault) or 'fatal'."""
        if isinstance(exc, (sa.exc.IntegrityError, sa.exc.DataError)):
            return "row"
        return "retry" if exc.connection_invalidated else "fatal"

    # -- statement size ------------------------------------------------------------
    #: The server setting that limits one statement's size, as messages name it ("" if none).
    statement_limit_setting = ""
    #: The driver splits an executemany of many rows into statements of at most this many bytes
    #: (a row alone may be larger); None: unknown, so runs are split here when there is a limit.
    driver_statement_bytes: int | None = None

    def statement_limit(self, conn: sa.Connection) -> int | None:
        """The most bytes one statement may carry on ``conn`` (MySQL's max_allowed_packet), or None:
        no limit a row can reach. A row over it is refused before it is sent (see adapters/_limits.py)."""
        return None

    def statement_size(self, row: dict, exact: bool = False) -> int:
        """Bytes ``row``'s values take in one statement as the driver sends them (``exact`` False:
        a quick upper bound); needed only where ``statement_limit`` gives a limit."""
        raise NotImplementedError

    def write_dead_letters(self, conn: sa.Connection, rows: list[dict]) -> None:
        """Park refused changes in the apply transaction."""
        state.write_dead_letters(conn, rows)

    # -- schema --------------------------------------------------------------------
    def table(self, name: str) -> sa.Table:
        """The reflected target table (cached); TargetError if it does not exist."""
        if name not in self._tables:
            try:
                self._tables[name] = sa.Table(name, sa.MetaData(), autoload_with=self.engine)
                self.reflected(self._tables[name])
            except sa.exc.NoSuchTableError:
                raise TargetError(f"target table {name} does not exist: run `cdc init CONFIG` to create it") from None
        return self._tables[name]

    def exists(self, name: str) -> bool:
        return sa.inspect(self.engine).has_table(name)

    def table_definition(self, name: str, columns: list[sa.Column], key: tuple[str, ...],
                         source_dialect: str = "") -> sa.Table:
        """The table `cdc init` would create for these columns and primary key, not created yet.

        From a database of the same kind the types are kept as they are (jsonb stays jsonb);
        from another kind they go through SQLAlchemy's generic types (``target_type``). The key
        never generates values (no AUTO_INCREMENT, no serial): the source's keys are written.
        SchemaError, naming table and column, when this target cannot declare a column's type.
        """
        same = source_dialect == self.engine.dialect.name
        table = sa.Table(name, sa.MetaData(), *[
            sa.Column(c.name, c.type if same else self.target_type(c.type, key=c.name in key),
                      nullable=c.name not in key and c.nullable, primary_key=c.name in key, autoincrement=False)
            for c in columns])
        for column in table.columns:
            try:
                column.type.compile(dialect=self.engine.dialect)
            except (sa.exc.CompileError, sa.exc.UnsupportedCompilationError, AttributeError) as exc:
                raise SchemaError(f"target table {name} column {column.name}: a {self.engine.dialect.name} table "
                                  f"cannot declare the source type {column.type!r} ({exc}); create the table "
                                  f"yourself, then run `cdc init` again") from None
        try:
            sa.schema.CreateTable(table).compile(dialect=self.engine.dialect)
        except sa.exc.CompileError as exc:
            raise SchemaError(f"target table {name}: {exc}") from None
        return table

    def create_tables(self, tables: list[sa.Table]) -> None:
        """Create these tables (made by ``table_definition``, none of them existing) all or none.

        One transaction: where DDL is transactional (PostgreSQL, SQLite) a refused table leaves
        none of them. Where each CREATE commits itself (MySQL/MariaDB) the tables made before the
        refused one are dropped again: they are new and nothing has written to them.
        """
        created: list[sa.Table] = []
        try:
            with self.engine.begin() as conn:
                for table in tables:
                    try:
                        table.create(conn)
                    except sa.exc.DBAPIError as exc:
                        raise SchemaError(f"target table {table.name}: the target refused to create it: "
                                          f"{str(exc.orig).strip()}") from None
                    created.append(table)
        except SchemaError:
            with self.engine.begin() as conn:
                for table in reversed(created):
                    table.drop(conn, checkfirst=True)
            raise

    def create_table(self, name: str, columns: list[sa.Column], key: tuple[str, ...],
                     source_dialect: str = "") -> sa.Table:
        """Create one table (see table_definition); never alters an existing one."""
        table = self.table_definition(name, columns, key, source_dialect)
        self.create_tables([table])
        return table

    def target_type(self, kind: sa.types.TypeEngine, key: bool = False) -> sa.types.TypeEngine:
        """A source column type as this target should declare it (exact numerics stay exact).

        Timestamps keep their zone: a MySQL DATETIME is read in the pair's source_timezone
        and a TIMESTAMP in UTC, so both arrive as instants. An ENUM or SET is text (its values
        as they read: SET as its members, comma-separated), YEAR a small integer, BIT an integer.
        ``key``: the column is (part of) the primary key.
        """
        if getattr(kind, "_variant_mapping", None):
            return kind  # already says what it is per dialect
        if isinstance(kind, (sa.Enum, mysql.SET)):
            return sa.Text()
        if isinstance(kind, mysql.YEAR):
            return sa.SmallInteger()
        if isinstance(kind, mysql.BIT):  # read as an unsigned integer of up to 64 bits
            return sa.BigInteger() if (kind.length or 1) < 64 else sa.Numeric(20, 0)
        try:
            generic = kind.as_generic()
        except NotImplementedError:
            return kind
        if isinstance(generic, sa.DateTime) and type(kind).__module__.startswith("sqlalchemy.dialects.mysql"):
            return sa.DateTime(timezone=True)
        return generic

    # -- state ---------------------------------------------------------------------
    def init_state(self) -> tuple[str | None, str]:
        return state.upgrade(self.engine)

    def checkpoint(self, pair: str) -> state.Checkpoint | None:
        with self.engine.connect() as conn:
            state.ensure_current(conn)
            return state.read_checkpoint(conn, pair)

    def is_empty(self, table: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.exists().select_from(sa.table(table)))).scalar() is False

    def load_directly(self, table: str, on: bool) -> None:
        """While on, upserts into ``table`` are plain inserts: the snapshot fills an empty table
        with disjoint chunks (a dialect may then bulk-load straight into it)."""
        direct = self.__dict__.setdefault("_direct", set())
        (direct.add if on else direct.discard)(table)

    def advance(self, pair: str, position: Position, *, snapshot: dict | None = None,
                tables: dict[str, dict | None] | None = None) -> None:
        """Move the checkpoint past source transactions that held nothing for this pair (or record
        a changed set of tables), keeping ``snapshot`` progress."""
        with self.checkpointing(pair) as (_, write):
            write(position, snapshot, 0, tables=tables)

    def set_generation(self, pair: str, generation: str | None) -> None:
        """Record the capture installation the pair's checkpoint belongs to (see Source.generation)."""
        with self.engine.begin() as conn:
            state.write_generation(conn, pair, generation)

    def forget_checkpoint(self, pair: str) -> bool:
        """Drop the pair's checkpoint (the next run snapshots again); True if there was one."""
        with self.engine.begin() as conn:
            state.ensure_current(conn)
            return state.forget_checkpoint(conn, self._claim(pair))

    # -- the claim ------------------------------------------------------------------
    def take_claim(self, pair: str, timeout: float, purpose: str = "run") -> state.Claim:
        """Claim the pair for this process (ClaimHeldError if a live process holds it); every later
        checkpoint write of ``pair`` through this target, and every repair write, is fenced by it.
        ``purpose``: ``run`` or ``repair`` (see cdc/state/_claims.py). Waits at most a few seconds
        for a holder's open transaction, which counts as held."""
        try:
            with self.engine.begin() as conn:
                state.ensure_current(conn)
                self.bounded_lock_wait(conn, CLAIM_LOCK_WAIT)
                claim = state.claims.take(conn, pair, timeout, purpose)
        except sa.exc.IntegrityError:  # two first claims at once: the other one's row is there now
            raise state.claims.held(pair, None, purpose) from None
        except sa.exc.OperationalError as exc:
            try:  # readable now: it was a lock wait on the holder's open transaction, not an outage
                with self.engine.connect() as conn:
                    holder = state.read_holder(conn, pair)
            except sa.exc.OperationalError:
                raise exc from None
            raise state.claims.held(pair, holder, purpose, "; it is in the middle of a transaction") from None
        self.__dict__.setdefault("_claims", {})[pair] = claim
        return claim

    def heartbeat(self, pair: str, timeout: float) -> bool:
        """Refresh this process's claim of ``pair``; False when another process holds it now."""
        with self.engine.begin() as conn:
            return state.claims.heartbeat(conn, self._claim(pair), timeout)

    def forget_tables(self, pair: str, tables: list[str]) -> None:
        """Under this process's claim: see state.claims.forget_tables."""
        with self.engine.begin() as conn:
            state.claims.forget_tables(conn, self._claim(pair), tables)

    def forget_old_rows(self, pair: str, tables: list[str], mark: str) -> None:
        """A repair under this process's claim made these tables equal: see state.claims.forget_old_rows."""
        with self.engine.begin() as conn:
            state.claims.forget_old_rows(conn, self._claim(pair), tables, mark)

    def note_retrying(self, pair: str, error: str | None) -> None:
        """Record in this process's claim of ``pair`` that it retries ``error`` (None: running again)."""
        with self.engine.begin() as conn:
            state.claims.set_state(conn, self._claim(pair), error)

    def release_claim(self, pair: str, error: str | None = None) -> None:
        """Give the pair up: stopped, or failed with ``error`` (what `cdc status` shows)."""
        claim = self.__dict__.get("_claims", {}).pop(pair, None)
        if claim is not None:
            with self.engine.begin() as conn:
                state.claims.release(conn, claim, error)

    def record_failure(self, pair: str, error: str) -> None:
        """A pair that failed before it could claim: its row in cdc_leases says so."""
        with self.engine.begin() as conn:
            state.ensure_current(conn)
            state.claims.record_failure(conn, pair, error)

    def bounded_lock_wait(self, conn: sa.Connection, seconds: float) -> None:
        """Make the transaction's lock waits fail after ``seconds`` (a dialect hook; SQLite's busy
        timeout already does)."""

    def _claim(self, pair: str) -> state.Claim:
        claim = self.__dict__.get("_claims", {}).get(pair)
        if claim is None:
            raise state.ClaimLostError(f"pair {pair}: this process does not hold the pair's claim; nothing written")
        return claim

    @contextlib.contextmanager
    def checkpointing(self, pair: str | None) -> Iterator[tuple[sa.Connection, Callable[..., None]]]:
        """A target transaction whose checkpoint write is fenced by this process's claim of ``pair``;
        yields ``(conn, write)``, ``write(position, snapshot, applied, committed_at=None, tables=None)``. The claim
        learns the outcome: committed, or uncertain when the COMMIT itself failed. ``pair`` None: a
        transaction that writes no checkpoint, whose ``write`` refuses."""
        claim, written = (None if pair is None else self._claim(pair)), []

        def write(position: Position, snapshot: dict | None, applied: int, committed_at=None, tables=None) -> None:
            if claim is None:
                raise TypeError("this transaction writes no checkpoint")
            written.append(state.write_checkpoint(conn, claim, position, snapshot, applied, committed_at=committed_at,
                                                  tables=tables))

        try:
            with self.engine.begin() as conn:
                yield conn, write
        except BaseException:
            for texts in written:
                state.claims.uncertain(claim, texts)
            raise
        if written:
            state.claims.committed(claim, written[-1])

    # -- apply ---------------------------------------------------------------------
    def apply(self, pair: str, mapped: list[MappedChange], *, position: Position, snapshot: dict | None,
              on_error: str, reason: str = "change", tables: dict[str, dict | None] | None = None) -> ApplyResult:
        """Write rows, audit, dead letters and checkpoint in ONE transaction (see apply_parts)."""
        return self.apply_parts(pair, lambda: [mapped], position=lambda: position, snapshot=snapshot,
                                on_error=on_error, reason=reason, tables=tables)

    def apply_parts(self, pair: str, parts: Callable[[], Iterable[list[MappedChange]]], *,
                    position: Callable[[], Position], snapshot: dict | None, on_error: str,
                    reason: str = "change", tables: dict[str, dict | None] | None = None) -> ApplyResult:
        """Write parts of a batch one after another into ONE transaction, then the checkpoint.

        ``parts()`` yields the batch in parts (a large source transaction need not fit in
        memory); ``position()`` is read after the last part. When no part holds a change,
        nothing is written. A row the database rejects makes the whole batch roll back and
        run again from ``parts()`` one change per savepoint, so the bad change is parked
        (or stops the pair) alone. The checkpoint stores ``snapshot`` (progress of tables being
        copied) and ``tables`` (the streamed ones with their mapping identities; None keeps the stored ones).
        """
        try:
            return self._transaction(pair, parts(), position, snapshot, on_error, reason, isolate=False,
                                     tables=tables)
        except sa.exc.DBAPIError as exc:
            if self.classify(exc) != "row":
                raise self._translate(exc) from None
        try:
            return self._transaction(pair, parts(), position, snapshot, on_error, reason, isolate=True,
                                     tables=tables)
        except sa.exc.DBAPIError as exc:
            raise self._translate(exc) from None

    def prepare_tables(self, names: Iterable[str]) -> None:
        """Reflect these tables now: reflection inside an apply transaction would wait on itself."""
        for name in names:
            if self.exists(name):
                self.statement_table(name)

    def _translate(self, exc: sa.exc.DBAPIError) -> Exception:
        kind = self.classify(exc)
        text = str(exc.orig).strip()
        return RetryableError(f"target: {text}") if kind == "retry" else TargetError(f"target: {text}")

    def _transaction(self, pair, parts, position, snapshot, on_error, reason, isolate, tables=None) -> ApplyResult:
        applied = parked_count = seen = 0

        def reject(item: MappedChange, error: RowError, parked: list) -> None:
            error.table, error.key = error.table or item.mapping.target, error.key or item.change.key
            if on_error == "stop":
                raise error
            parked.append((item, error))

        with self.checkpointing(pair) as (conn, write_checkpoint):
            if reason == "repair":
                # A repair moves no checkpoint but holds the pair's claim (see cdc/state/_claims.py):
                # fenced first, so a repair that lost the pair to a run writes nothing, and a run
                # taking the pair waits for this transaction.
                state.claims.fence(conn, self._claim(pair))
            committed_at = None
            limit = self.statement_limit(conn)
            for mapped in parts:
                seen += len(mapped)
                done, parked = self._write_part(conn, mapped, isolate, lambda i, e, p: reject(i, e, p), limit)
                now = state._store.now()
                self._write_records(conn, _audit_rows(pair, done, reason, now),
                                    [_dead_letter(pair, item, error, now, reason) for item, error in parked], limit)
                applied, parked_count = applied + len(done), parked_count + len(parked)
                committed_at = next((m.change.committed_at for m in reversed(mapped) if m.change.committed_at),
                                    committed_at)
            if (seen or reason == "snapshot") and reason != "repair":
                write_checkpoint(position(), snapshot, applied if reason != "snapshot" else 0, committed_at,
                                 tables=tables)
        return ApplyResult(applied, parked_count)

    def _write_part(self, conn, mapped, isolate, reject, limit=None) -> tuple[list[MappedChange], list]:
        """Rows of one part: fit checks (a row over the statement ``limit`` is refused here, never
        sent), then one statement per run (or one savepoint per change)."""
        done: list[MappedChange] = []
        parked: list[tuple[MappedChange, RowError]] = []
        prepared = []
        for item in mapped:
            try:
                if item.error is not None:
                    raise item.error
                statements = [self._prepare(op) for op in item.ops]
                if limit is not None:
                    for _, _, _, params in statements:
                        _limits.refuse_oversized(self.statement_size, params, limit, self.statement_limit_setting)
                prepared.append((item, statements))
            except RowError as exc:
                reject(item, exc, parked)
        if isolate:
            for item, statements in prepared:
                try:
                    with conn.begin_nested():
                        self._write(conn, statements, limit)
                    done.append(item)
                except sa.exc.DBAPIError as exc:
                    if self.classify(exc) != "row":
                        raise
                    reject(item, RowError(f"the target refused the row: {str(exc.orig).strip()}"), parked)
        else:
            self._write(conn, [s for _, statements in prepared for s in statements], limit)
            done = [item for item, _ in prepared]
        return done, parked

    def _write_records(self, conn: sa.Connection, audit: list[dict], letters: list[dict], limit: int | None) -> None:
        """The part's audit rows and dead letters; under a statement limit, each made to fit (its
        largest image values kept as length and SHA-256) and written in statements that fit."""
        if limit is not None:
            audit = [_limits.fitted_audit_row(row, self.statement_size, limit) for row in audit]
            letters = [_limits.fitted_dead_letter(row, self.statement_size, limit, self.statement_limit_setting)
                       for row in letters]
        for part in self._statements(audit, limit):
            self.write_audit(conn, part)
        for part in self._statements(letters, limit):
            self.write_dead_letters(conn, part)

    def _statements(self, rows: list[dict], limit: int | None) -> Iterable[list[dict]]:
        """``rows`` in parts that each fit one statement (the driver may split them further)."""
        if not rows:
            return []
        if limit is None or (self.driver_statement_bytes is not None and self.driver_statement_bytes <= limit):
            return [rows]
        return _limits.in_statements(rows, self.statement_size, limit)

    def trust(self, name: str, columns: list[str]) -> None:
        """Skip the fit check for these columns: their values come from source columns of the very
        same type (same database kind, same declared type), so they cannot fail to fit."""
        self.__dict__.setdefault("_trusted", {})[name] = set(columns)
        self._writers.pop(name, None)
        self._trivial.pop(name, None)

    def _column_writers(self, name: str) -> dict[str, Callable[[Any], Any]]:
        """Per column: fit check then the dialect's binding, composed once per table."""
        if name not in self._writers:
            trusted = self.__dict__.get("_trusted", {}).get(name, set())

            def compose(column: sa.Column) -> Callable[[Any], Any]:
                bind = self.writer(column)
                fit = _nullable_only(column) if column.name in trusted else values.fitter(column)
                return fit if bind is _identity else (lambda value: bind(fit(value)))

            columns = self.table(name).columns
            self._writers[name] = {str(c.name): compose(c) for c in columns}
            # Every column trusted and bound as it is: a row needs only its NOT NULL columns checked.
            if all(str(c.name) in trusted for c in columns) and all(self.writer(c) is _identity for c in columns):
                self._trivial[name] = (frozenset(self._writers[name]),
                                       [str(c.name) for c in columns if not (c.nullable or c.primary_key)])
        return self._writers[name]

    def _prepare(self, op: TargetOp) -> tuple[str, str, tuple[str, ...], dict]:
        writers = self._column_writers(op.table)
        source = op.row if op.op == "upsert" else dict(zip(op.key_columns, op.key))
        trivial = self._trivial.get(op.table)
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

    def _write(self, conn: sa.Connection, statements: list[tuple[str, str, tuple[str, ...], dict]],
               limit: int | None = None) -> None:
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
            for part in self._statements(params, limit):
                self.write_run(conn, op, name, key, part)

    def free_order(self, names: Iterable[str]) -> bool:
        """Whether rows of these target tables may be written in another order than they changed,
        each row's own changes kept in order: true when none has a foreign key or a unique
        constraint or index besides its key (then no order of distinct rows can fail where
        another would not), as in the tables `cdc init` makes. Cached per table."""
        cache = self.__dict__.setdefault("_free_order", {})
        for name in names:
            if name not in cache:
                table = self.table(name)
                key = {c.name for c in table.primary_key.columns}
                unique = [set(c.columns.keys()) for c in table.constraints if isinstance(c, sa.UniqueConstraint)]
                unique += [{c.name for c in i.columns} for i in table.indexes if i.unique]
                cache[name] = not table.foreign_keys and all(u == key for u in unique)
            if not cache[name]:
                return False
        return True

    def write_run(self, conn: sa.Connection, op: str, name: str, key: tuple[str, ...], params: list[dict]) -> None:
        """One run of upserts or deletes on one table as one executemany (a dialect may bulk-load)."""
        if op == "upsert":
            conn.execute(self._run_statement(op, name, key, tuple(params[0])), params)
        else:
            conn.execute(self._run_statement(op, name, key, ()), [{f"k_{k}": p[k] for k in key} for p in params])

    def _run_statement(self, op: str, name: str, key: tuple[str, ...], columns: tuple[str, ...]) -> sa.Executable:
        """The upsert or delete statement of a run, built once per table, key and columns: runs are
        short where the target keeps source order (see ``free_order``), and building (and cache-keying)
        the statement anew for each run cost more than executing it."""
        cache = self.__dict__.setdefault("_run_statements", {})
        if (op, name, key, columns) not in cache:
            table = self.statement_table(name)
            if op == "upsert":
                statement = self.upsert(table, key, list(columns))
            else:
                statement = table.delete().where(sa.and_(*[table.c[k] == sa.bindparam(f"k_{k}") for k in key]))
            cache[(op, name, key, columns)] = statement
        return cache[(op, name, key, columns)]


#: Seconds a claim waits for a holder's open transaction before it counts as held.
CLAIM_LOCK_WAIT = 5.0
_RUN_KEY = operator.itemgetter(0, 1, 2)  # (op, table, key columns): one run per change of these


def _runs(statements: list[tuple[str, str, tuple[str, ...], dict]]) -> list[tuple[tuple, list[dict]]] | None:
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
            earliest = last.get(row, -1)
            indexes = by_kind.setdefault(kind, [])
            at = bisect.bisect_left(indexes, earliest)
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


def _audit_rows(pair: str, done: list[MappedChange], reason: str, now) -> list[dict]:
    if reason == "snapshot":
        return _snapshot_audit(pair, done, now)
    rows = []
    position = txid = object()  # the changes of one transaction share these: encoded once
    for item in done:
        change = item.change
        if not item.ops:
            continue  # filtered out by the mapping: nothing was applied
        if change.position is not position or change.txid is not txid:
            position, txid = change.position, change.txid
            position_text, txid_text = dumps(position), None if txid is None else str(txid)
        before, after = _audit_images(item, reason)
        rows.append({
            "pair": pair, "source_table": change.table, "target_table": item.mapping.target, "op": change.op,
            "reason": reason, "key": dumps(item.ops[-1].key), "before": _json(before),
            "after": _json(after), "source_position": position_text, "source_txid": txid_text,
            "committed_at": change.committed_at, "applied_at": now,
        })
    return rows


def _audit_images(item: MappedChange, reason: str) -> tuple[Row | None, Row | None]:
    """The change's before and after images as target rows, both through the pair's mapping: a
    column the mapping does not copy never reaches the target database, its audit log included.
    A repair's images are target rows already."""
    change = item.change
    if reason == "repair":
        return change.before, change.after
    last = item.ops[-1]
    after = last.row if last.op == "upsert" else (
        None if change.after is None else item.mapping.image(change.after, change.key))
    return (None if change.before is None else item.mapping.image(change.before, change.key)), after


def _snapshot_audit(pair: str, done: list[MappedChange], now) -> list[dict]:
    """One audit row per table and snapshot chunk: how many rows, first and last key."""
    rows = []
    for target, items in itertools.groupby(done, key=lambda m: m.mapping.target):
        items = list(items)
        rows.append({
            "pair": pair, "source_table": items[0].change.table, "target_table": target, "op": "snapshot",
            "reason": "snapshot", "key": dumps(list(items[-1].change.key)), "before": None,
            "after": dumps({"rows": sum(1 for m in items if m.ops), "read": len(items),
                            "first_key": list(items[0].change.key),
                            "last_key": list(items[-1].change.key)}),
            "source_position": None, "source_txid": None, "committed_at": None, "applied_at": now,
        })
    return rows


def _dead_letter(pair: str, item: MappedChange, error: RowError, now, reason: str = "change") -> dict:
    """The dead letter of a change the target refused: the change as the source gave it, with the
    source columns the mapping reads (all it needs to be mapped and applied again; a column the
    mapping does not copy stays out of the target database). A repair's images are target rows."""
    change = item.change
    read = None if reason == "repair" else item.mapping.read_columns()
    return {
        "pair": pair, "source_table": change.table, "target_table": item.mapping.target, "op": change.op,
        "key": dumps(list(change.key)), "error": str(error), "column_name": error.column,
        "change": dumps({"op": change.op, "table": change.table, "key": list(change.key),
                         "before": _only(change.before, read), "after": _only(change.after, read),
                         "position": change.position, "txid": change.txid}),
        "source_position": dumps(change.position), "created_at": now,
    }


def _only(row: Row | None, columns: frozenset[str] | None) -> Row | None:
    if row is None or columns is None or row.keys() <= columns:
        return row
    return {c: v for c, v in row.items() if c in columns}


def _json(row: Row | None) -> str | None:
    return None if row is None else dumps(row)
