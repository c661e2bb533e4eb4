"""The Target over SQLAlchemy Core: statements, state tables, claims and DDL (cdc/apply runs the transaction)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from cdc import state
from cdc.errors import SchemaError, TargetError

from .reads import KeyedReads, _identity
from .rows import key_in, plain_rows, unreadable


class SqlTarget(KeyedReads):
    """A Target over SQLAlchemy Core; a dialect supplies ``upsert`` and ``writer``."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._tables: dict[str, sa.Table] = {}
        self._trusted: dict[str, frozenset[str]] = {}

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

    def binding(self, column: sa.Column) -> Callable[[Any], Any] | None:
        """``writer`` of ``column``, or None when a checked value is bound as it is."""
        bind = self.writer(column)
        return None if bind is _identity else bind

    def trust(self, name: str, columns: list[str]) -> None:
        """Skip the fit check for these columns: their values come from source columns of the very
        same type (same database kind, same declared type), so they cannot fail to fit."""
        self._trusted[name] = frozenset(columns)

    def trusted(self, name: str) -> frozenset[str]:
        """The columns of ``name`` whose values are trusted to fit (a new set after each ``trust``)."""
        return self._trusted.get(name, _NONE)

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
        no limit a row can reach. A row over it is refused before it is sent (see cdc/apply/_limits.py)."""
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
        if name not in self._tables and name in state.metadata.tables:
            # Our own state table, known as alembic made it: never reflected (in the apply
            # transaction that writes row hashes, reflection would wait on that transaction).
            self._tables[name] = state.metadata.tables[name]
        if name not in self._tables:
            try:
                self._tables[name] = sa.Table(name, sa.MetaData(), autoload_with=self.engine)
                self.reflected(self._tables[name])
            except sa.exc.NoSuchTableError:
                raise TargetError(f"target table {name} does not exist: run `cdc init CONFIG` to create it") from None
        return self._tables[name]

    def diagnose(self) -> list[tuple[str, str]]:
        """Findings about the target's settings: none unless a dialect has some to check."""
        return []

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
        if isinstance(kind, postgresql.MONEY):  # 8 bytes of cents: up to 92,233,720,368,547,758.07
            return sa.Numeric(19, 2)
        if isinstance(kind, mysql.BIT):  # read as an unsigned integer of up to 64 bits
            return sa.BigInteger() if (kind.length or 1) < 64 else sa.Numeric(20, 0)
        if isinstance(kind, sa.Integer) and getattr(kind, "unsigned", False):
            # An unsigned column holds values up to twice its signed range: the next size up.
            return sa.Numeric(20, 0) if isinstance(kind, sa.BigInteger) else \
                sa.BigInteger() if isinstance(kind, mysql.INTEGER) else sa.Integer()
        try:
            generic = kind.as_generic()
        except NotImplementedError:
            return kind
        if isinstance(generic, sa.DateTime) and type(kind).__module__.startswith("sqlalchemy.dialects.mysql"):
            return sa.DateTime(timezone=True)
        if isinstance(generic, sa.String) and generic.collation:  # another database's collation (utf8mb4_bin)
            generic.collation = None
        return generic

    # -- state ---------------------------------------------------------------------
    def init_state(self) -> tuple[str | None, str]:
        return state.upgrade(self.engine)

    def checkpoint(self, pair: str) -> state.Checkpoint | None:
        with self.engine.connect() as conn:
            state.ensure_current(conn)
            return state.read_checkpoint(conn, pair)

    def other_writers(self, pair: str) -> dict[str, list[tuple[str, bool]]]:
        with self.engine.connect() as conn:
            state.ensure_current(conn)
            return state.other_writers(conn, pair)

    def is_empty(self, table: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.exists().select_from(sa.table(table)))).scalar() is False

    def load_directly(self, table: str, on: bool) -> None:
        """While on, upserts into ``table`` are plain inserts: the snapshot fills an empty table
        with disjoint chunks (a dialect may then bulk-load straight into it)."""
        direct = self.__dict__.setdefault("_direct", set())
        (direct.add if on else direct.discard)(table)

    def set_generation(self, pair: str, generation: str | None) -> None:
        """Record the capture installation the pair's checkpoint belongs to (see Source.generation)."""
        with self.engine.begin() as conn:
            state.write_generation(conn, pair, generation)

    def forget_checkpoint(self, pair: str) -> bool:
        """Drop the pair's checkpoint (the next run snapshots again); True if there was one."""
        with self.engine.begin() as conn:
            state.ensure_current(conn)
            return state.forget_checkpoint(conn, self.claim(pair))

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
            if not state.claims.held_by_another(holder):  # no lock wait: the target refused (read-only, ...)
                raise
            raise state.claims.held(pair, holder, purpose, "; it is in the middle of a transaction") from None
        self.__dict__.setdefault("_claims", {})[pair] = claim
        return claim

    def heartbeat(self, pair: str, timeout: float) -> bool:
        """Refresh this process's claim of ``pair``; False when another process holds it now."""
        with self.engine.begin() as conn:
            return state.claims.heartbeat(conn, self.claim(pair), timeout)

    def forget_tables(self, pair: str, tables: list[str]) -> None:
        """Under this process's claim: see state.claims.forget_tables."""
        with self.engine.begin() as conn:
            state.claims.forget_tables(conn, self.claim(pair), tables)

    def forget_old_rows(self, pair: str, tables: list[str], mark: str) -> None:
        """A repair under this process's claim made these tables equal: see state.claims.forget_old_rows."""
        with self.engine.begin() as conn:
            state.claims.forget_old_rows(conn, self.claim(pair), tables, mark)

    def note_retrying(self, pair: str, error: str | None) -> None:
        """Record in this process's claim of ``pair`` that it retries ``error`` (None: running again)."""
        with self.engine.begin() as conn:
            state.claims.set_state(conn, self.claim(pair), error)

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

    def claim(self, pair: str) -> state.Claim:
        """This process's claim of ``pair``; ClaimLostError (stop) when it holds none."""
        claim = self.__dict__.get("_claims", {}).get(pair)
        if claim is None:
            raise state.ClaimLostError(f"pair {pair}: this process does not hold the pair's claim; nothing written")
        return claim

    def begin(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """One target transaction: committed when the block ends, rolled back when it raises."""
        return self.engine.begin()

    def prepare_tables(self, names: Iterable[str]) -> None:
        """Reflect these tables now: reflection inside an apply transaction would wait on itself."""
        for name in names:
            if self.exists(name):
                self.statement_table(name)

    def write_run(self, conn: sa.Connection, op: str, name: str, key: tuple[str, ...], params: list[dict]) -> None:
        """One run of upserts, inserts or deletes on one table as one executemany (a dialect may bulk-load)."""
        if op in ("upsert", "insert"):
            conn.execute(self._run_statement(op, name, key, tuple(params[0])), params)
        else:
            conn.execute(self._run_statement(op, name, key, ()), [{f"k_{k}": p[k] for k in key} for p in params])

    def read_rows(self, conn: sa.Connection, name: str, key: tuple[str, ...], keys: list[tuple],
                  latest: str | None = None) -> list[dict]:
        """The rows whose key is one of ``keys``, locked until the transaction ends: one SELECT per 500
        keys (a row-value IN for a compound key). ``latest``: only the row with the highest value of that column per key (a ledger's
        newest entry, see ``newest_rows``)."""
        table = self.table(name)
        if latest is not None:
            return self.newest_rows(conn, table, key, keys, latest)
        rows: list[dict] = []
        for start in range(0, len(keys), READ_KEYS):
            # Locked (FOR UPDATE; SQLite locks the database when the transaction writes): a person's
            # edit committed between this read and the write would otherwise be overwritten unseen.
            query = sa.select(table).where(key_in(table, key, keys[start:start + READ_KEYS])).with_for_update()
            try:
                rows.extend(plain_rows(table, conn.execute(query)))
            except (ValueError, TypeError) as exc:  # a value the driver cannot read as its column's type
                raise unreadable(conn, table, key, keys[start:start + READ_KEYS], exc) from None
        return rows

    def newest_rows(self, conn: sa.Connection, table: sa.Table, key: tuple[str, ...], keys: list[tuple],
                    latest: str) -> list[dict]:
        """Per key of ``keys``, its row with the highest ``latest``: a correlated MAX that the primary
        key's index answers per key, one SELECT per 500 keys (a dialect with LATERAL may do better)."""
        newer = table.alias("newer")
        newest = sa.select(sa.func.max(newer.c[latest])).where(*[newer.c[k] == table.c[k] for k in key])
        rows: list[dict] = []
        for start in range(0, len(keys), READ_KEYS):
            query = sa.select(table).where(key_in(table, key, keys[start:start + READ_KEYS]),
                                           table.c[latest] == newest.scalar_subquery())
            rows.extend(plain_rows(table, conn.execute(query)))
        return rows

    def _run_statement(self, op: str, name: str, key: tuple[str, ...], columns: tuple[str, ...]) -> sa.Executable:
        """The upsert or delete statement of a run, built once per table, key and columns: runs are
        short where the target keeps source order (see cdc/apply/_writes.py), and building (and cache-keying)
        the statement anew for each run cost more than executing it."""
        cache = self.__dict__.setdefault("_run_statements", {})
        if (op, name, key, columns) not in cache:
            table = self.statement_table(name)
            if op == "upsert":
                statement = self.upsert(table, key, list(columns))
            elif op == "insert":
                statement = table.insert()
            else:
                statement = table.delete().where(sa.and_(*[table.c[k] == sa.bindparam(f"k_{k}") for k in key]))
            cache[(op, name, key, columns)] = statement
        return cache[(op, name, key, columns)]


#: Keys one read_rows statement asks for (SQLite allows 32,766 bound values in a statement).
READ_KEYS = 500
#: Seconds a claim waits for a holder's open transaction before it counts as held.
CLAIM_LOCK_WAIT = 5.0
_NONE: frozenset[str] = frozenset()
