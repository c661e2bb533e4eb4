"""The target rows a part's changes touch, read set-wise, and what this pair last wrote to them."""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa

from .. import state, values
from ..canonical import canonical, texter
from ..changes import Row, dumps
from ..mapping import MappedChange, TargetOp

#: A row's key as read back and as mapped, told apart by canonical text (an int and a Decimal of one value agree).
KeyText = tuple


class TargetRows:
    """The rows, read once per part (one statement per table and 500 keys), then kept current as
    the part's changes are decided; and for tables kept by row hash, the hashes stored for them
    and those to store."""

    def __init__(self, conn: Any, target: Any, pair: str, items: list[MappedChange]):
        self.target, self.pair = target, pair
        self._plain: dict[tuple, tuple] = {}
        self._where: KeyText = ()  # the key text of the last op ``current`` looked up
        self._where_of: Any = None
        self._fitters: dict[sa.Column, Any] = {}  # column -> its canonical text function
        self._texts: dict[int, list] = {}  # id of a mapping -> (column, text function) per column it writes
        self._divergent: set[tuple[str, str]] = set()
        #: target table -> key text -> the row as it stands in this part (None: none), for the keys read.
        self._tables: dict[str, dict[KeyText, Row | None]] = {}
        self._stored: dict[tuple[str, str], str] = {}
        #: (id of the change, target table, key digest) -> hash of the row written, or None (deleted):
        #: stored with the part for the changes the target took.
        self.hashes: dict[tuple, str | None] = {}
        self.conn = conn
        wanted: dict[tuple[str, tuple[str, ...]], dict[KeyText, tuple]] = {}
        hashed: dict[str, set[str]] = {}
        for item in items:
            by_hash = item.mapping.spec.row_hashes
            for op in item.ops:
                keys = wanted.get((op.table, op.key_columns))
                if keys is None:
                    keys = wanted[(op.table, op.key_columns)] = {}
                keys[self.key_text(op.table, op.key_columns, op.key)] = op.key
                if by_hash:
                    hashed.setdefault(op.table, set()).add(key_digest(op.key))
        for (name, key), keys in wanted.items():
            found = self._tables.setdefault(name, {})
            found.update(dict.fromkeys(keys))
            read = target.read_rows(conn, name, key, list(keys.values()))
            if len(key) == 1:  # the common key: its text is the value itself where it is plain
                (column,), kind = key, self._plain_of(name, key)[0][1]
                for row in read:
                    value = row[column]
                    found[(value,) if type(value) is kind else self.key_text(name, key, (value,))] = row
            else:
                for row in read:
                    found[self.key_text(name, key, tuple([row[k] for k in key]))] = row
        for name, digests in hashed.items():
            self._read_hashes(conn, name, sorted(digests | {WHOLE}))

    def _read_hashes(self, conn: Any, name: str, digests: list[str]) -> None:
        """The stored hashes of these keys of ``name``, read as the target reads rows (set-wise)."""
        found = self.target.read_rows(conn, state.row_hashes.name, ("pair", "target_table", "key_digest"),
                                      [(self.pair, name, digest) for digest in digests])
        self._stored.update({(name, row["key_digest"]): row["row_hash"] for row in found})

    @classmethod
    def hashing(cls, target: Any) -> TargetRows:
        """An instance that reads nothing: for row_hash and text only."""
        rows = cls.__new__(cls)
        rows.target, rows._fitters, rows._texts = target, {}, {}
        return rows

    def written(self, items: list[MappedChange]) -> dict[tuple, str | None]:
        """The row hashes to store for ``items`` written as they are (see ``hashes``): a snapshot's,
        with the mark that the pair has the hash of every row it wrote to their tables (``whole``)."""
        hashes: dict[tuple, str | None] = {}
        for item in items:
            for op in item.ops:
                hashes[(id(item), op.table, key_digest(op.key))] = self.row_hash(item, op.row)
                hashes[(id(item), op.table, WHOLE)] = WHOLE
        return hashes

    def whole(self, table: str) -> bool:
        """Whether the pair has the hash of every row it wrote to ``table`` (its copy stored them, as
        every later write does): a row there without one is not the pair's."""
        return self._stored.get((table, WHOLE)) is not None

    def key_text(self, name: str, key: tuple[str, ...], values: tuple) -> KeyText:
        """The key as it is told apart: an int or a text in an integer or (variable) text column as
        it is, anything else by its canonical text."""
        plain = self._plain.get((name, key)) or self._plain_of(name, key)
        if len(plain) == 1 and type(values[0]) is plain[0][1]:
            return values  # the common key: one integer or text column
        return tuple([v if kind is not None and type(v) is kind else canonical(v, column)
                      for (column, kind), v in zip(plain, values)])

    def _plain_of(self, name: str, key: tuple[str, ...]) -> tuple:
        """Per key column of ``name``: (the column, int or str where a value of that type is its own text)."""
        columns = self.target.table(name).c
        plain = self._plain[(name, key)] = tuple([(columns[k], _plain_type(columns[k].type)) for k in key])
        return plain

    def current(self, op: TargetOp) -> tuple[bool, Row | None]:
        """(whether the row was read, the row as it stands now in this part: None if there is none)."""
        where = self._where = self.key_text(op.table, op.key_columns, op.key)
        self._where_of = op
        found = self._tables.get(op.table)
        if found is None or where not in found:
            return False, None
        return True, found[where]

    def as_left(self, item: MappedChange, op: TargetOp) -> bool:
        """For ``item``'s only ``op``, of a table kept by before images: whether its row was read and
        stands exactly as the change's before image says (no conflict); if so, it is taken as written.
        What ``current``, ``same`` and ``wrote`` would find, asked in one step for most of a part."""
        found = self._tables.get(op.table)
        if found is None or self._divergent:
            return False
        where = self.key_text(op.table, op.key_columns, op.key)
        row = found.get(where)
        if row is None or row != item.before_row():  # NOT_WHOLE never equals a row
            return False
        found[where] = op.row  # a delete's is None
        return True

    def wrote(self, item: MappedChange) -> None:
        """``item``'s ops are written: later changes of its keys in this part see its rows."""
        by_hash = item.mapping.spec.row_hashes
        for op in item.ops:
            found = self._tables.get(op.table)
            if found is not None:
                where = self._where if op is self._where_of else self.key_text(op.table, op.key_columns, op.key)
                if where in found:
                    found[where] = op.row  # a delete's is None
            if not by_hash and not self._divergent:
                continue
            row = op.row
            digest = None
            if by_hash:
                digest = key_digest(op.key)
                written = None if row is None else self.row_hash(item, row)
                self.hashes[(id(item), op.table, digest)] = written
                self._stored[(op.table, digest)] = written
            if self._divergent and (op.table, digest or key_digest(op.key)) in self._divergent:
                self.hashes[(id(item), op.table, digest or key_digest(op.key))] = None  # back in step

    def stored_hash(self, op: TargetOp) -> str | None:
        """The hash of the row this pair last wrote with ``op``'s key, or None: none known."""
        return self._stored.get((op.table, key_digest(op.key)))

    def divergent_hash(self, op: TargetOp) -> str | None:
        """For a key whose changes did not all reach the target (parked, discarded), the hash of the
        row this pair last left there (see divergences), read on demand (such keys are few)."""
        where = (op.table, key_digest(op.key))
        if where not in self._stored:
            table = state.row_hashes
            self._stored[where] = self.conn.execute(sa.select(table.c.row_hash).where(
                table.c.pair == self.pair, table.c.target_table == where[0],
                table.c.key_digest == where[1])).scalar()
        if self._stored[where] is not None:
            self._divergent.add(where)
        return self._stored[where]

    def row_hash(self, item: MappedChange, row: Row | None) -> str | None:
        """SHA-256 of the canonical texts of the mapping's columns of ``row`` (None: no row)."""
        if row is None:
            return None
        mapping = item.mapping
        texts = self._texts.get(id(mapping))
        if texts is None:
            columns = self.target.table(mapping.target).c
            texts = self._texts[id(mapping)] = [(c, self._texter(columns[c])) for c in mapping.target_columns
                                                if c in columns]
        get = row.get
        return hashlib.sha256(dumps([text(get(c)) for c, text in texts]).encode()).hexdigest()

    def same(self, item: MappedChange, a: Row | None, b: Row | None) -> bool:
        """Whether two rows agree on every column the mapping writes (values as the target column
        holds them, by canonical text, where they are not plainly equal)."""
        if a is None or b is None:
            return a is b
        if a == b:
            return True  # the common case, asked at C speed: a target row of just the mapped columns, equal
        names = item.mapping.target_columns
        if list(map(a.get, names)) == list(map(b.get, names)):
            return True  # equal values: equal as the column holds them
        columns = self.target.table(item.mapping.target).c
        for c in names:
            x, y = a.get(c), b.get(c)
            if (x != y or type(x) is not type(y)) and c in columns and self.text(x, columns[c]) != self.text(y, columns[c]):
                return False
        return True

    def text(self, value: Any, column: sa.Column) -> str | None:
        """The canonical text of ``value`` as ``column`` holds it: fitted first (the text '2.25' of a
        source that has no decimals is the 2.2500000000 a NUMERIC(20,10) column holds), as it is
        when it does not fit."""
        return self._texter(column)(value)

    def _texter(self, column: sa.Column) -> Any:
        text = self._fitters.get(column)
        if text is None:
            text = self._fitters[column] = texter(column, values.fitter(column))
        return text

    def differences(self, item: MappedChange, found: Row | None, expected: Row | None) -> str:
        """In words, where the target row differs from what was expected there."""
        if found is None:
            return "the target row is missing"
        if expected is None:
            return "the target already has a row with this key"
        columns = self.target.table(item.mapping.target).c
        differ = [f"{c}: target {_shown(found.get(c))}, expected {_shown(expected.get(c))}"
                  for c in item.mapping.target_columns
                  if c in columns and self.text(found.get(c), columns[c]) != self.text(expected.get(c), columns[c])]
        return "; ".join(differ) or "the target row differs"

    def before_of(self, item: MappedChange) -> Row | None:
        """The row ``item`` changes as the target has it (read: at its first op, the old key of a
        key that moves), else its mapped before image."""
        if item.ops:
            read, row = self.current(item.ops[0])
            if read:
                return row
        return item.before_image()


def _plain_type(kind: sa.types.TypeEngine) -> type | None:
    """int or str when a value of that type in such a column is its own canonical text."""
    if isinstance(kind, sa.Integer):
        return int
    if isinstance(kind, sa.String) and not isinstance(kind, sa.CHAR):
        return str
    return None


def _shown(value: Any) -> str:
    return "NULL" if value is None else repr(value) if isinstance(value, str) else str(value)


#: The key digest of the mark a copy leaves in cdc_row_hashes (see TargetRows.whole); never a SHA-256.
WHOLE = "whole"
#: The key digest of the mark of a table kept by row hash (see settle_hashing).
HASHING = "hashing"


def key_digest(key: tuple) -> str:
    """The key as cdc_row_hashes stores it: SHA-256 of its JSON. An int or a text key's is
    remembered (a change's key is asked for several times on its way), others computed each time:
    equal Decimals of different scales are one dict key but not one JSON text."""
    if len(key) == 1 and type(key[0]) in _MEMO_TYPES:
        digest = _digests.get(key)
        if digest is None:
            if len(_digests) >= _MEMO_SIZE:
                _digests.clear()
            digest = _digests[key] = hashlib.sha256(dumps(list(key)).encode()).hexdigest()
        return digest
    return hashlib.sha256(dumps(list(key)).encode()).hexdigest()


_MEMO_TYPES = (int, str)
_MEMO_SIZE = 100_000
_digests: dict[tuple, str] = {}


def divergences(target: Any, parked: list) -> dict[tuple[str, str], str]:
    """For changes parked for a reason of their own (not held), whose before image is whole: the
    hash of that before image, mapped: the row this pair last left on the target. Their key's
    later changes carry before images the target never got; compared by this hash instead, they
    are not taken for a person's edit (a capture without before images keeps its hashes anyway)."""
    found = {}
    for item, error in parked:
        change, mapping = item.change, item.mapping
        if error.kind == "held" or mapping.spec.row_hashes or not item.ops or change.before is None \
                or not change.before.keys() >= mapping.read_columns():
            continue
        rows = TargetRows.hashing(target)
        found.setdefault((item.ops[0].table, key_digest(item.ops[0].key)),
                         rows.row_hash(item, item.before_image()))
    return found


def settle_hashing(conn: Any, pair: str, hashed: list[str], unhashed: list[str]) -> list[str]:
    """Mark the ``hashed`` tables as kept by row hash (HASHING); of the ``unhashed`` ones, drop every
    hash of those that carry the mark: they were kept by hash until now, and the pair writes them
    without hashes from here. (An unhashed table's own hashes, kept for keys whose changes were parked,
    see divergences, are current: they stay.) Returns the tables whose hashes were dropped."""
    table = state.row_hashes
    marked = set(conn.execute(sa.select(table.c.target_table).where(
        table.c.pair == pair, table.c.key_digest == HASHING, table.c.target_table.in_(hashed + unhashed))).scalars())
    dropped = sorted(marked & set(unhashed))
    if dropped:
        conn.execute(table.delete().where(table.c.pair == pair, table.c.target_table.in_(dropped)))
    new = [{"pair": pair, "target_table": name, "key_digest": HASHING, "row_hash": HASHING}
           for name in sorted(set(hashed) - marked)]
    if new:
        conn.execute(table.insert(), new)
    return dropped


def hashed_whole(conn: Any, pair: str, tables: list[str]) -> set[str]:
    """Those of ``tables`` whose copy left the mark that the pair has the hash of every row it wrote."""
    table = state.row_hashes
    return set(conn.execute(sa.select(table.c.target_table).where(
        table.c.pair == pair, table.c.target_table.in_(tables), table.c.key_digest == WHOLE)).scalars())


def store_hashes(target: Any, conn: Any, pair: str, hashes: dict[tuple[str, str], str | None]) -> None:
    """Replace the stored row hashes of these (target table, key digest)s (None: drop the hash),
    through the target's own batched writes (COPY and one upsert on PostgreSQL): a copy stores one
    hash per row it writes, where a DELETE and an INSERT per 500 rows cost it ten times its rows' time."""
    key = ("pair", "target_table", "key_digest")
    kept = [{"pair": pair, "target_table": name, "key_digest": digest, "row_hash": row_hash}
            for (name, digest), row_hash in hashes.items() if row_hash]
    gone = [{"pair": pair, "target_table": name, "key_digest": digest}
            for (name, digest), row_hash in hashes.items() if not row_hash]
    if kept:
        target.write_run(conn, "upsert", state.row_hashes.name, key, kept)
    if gone:
        target.write_run(conn, "delete", state.row_hashes.name, key, gone)