"""A random but reproducible mix of inserts, updates and deletes in many source transactions."""

from __future__ import annotations

import random
import sqlite3
from decimal import Decimal
from pathlib import Path

MEMOS = ["Blåbærsyltetøy AS", "Ærlig Østlandsk Rørlegger", "Kaffe ☕ og kake", "Faktura 1042", None, "", "ÆØÅ æøå"]


def amount(rng: random.Random) -> str:
    exact = [Decimal("0.10"), Decimal("1234567890123.45"), Decimal("-0.01")]
    if rng.random() < 0.1:
        return str(rng.choice(exact))
    return str(Decimal(rng.randint(-10_000_000, 10_000_000)) / 100)


class _Postgres:
    """Just enough of sqlite3's connection interface over psycopg for the workload."""

    def __init__(self, url: str):
        import psycopg

        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)

    def execute(self, sql: str, params: tuple = ()):
        return self.conn.execute(sql.replace("?", "%s"), params)

    def __enter__(self):
        self._tx = self.conn.transaction()
        self._tx.__enter__()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.last_txid = self.conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        return self._tx.__exit__(*exc)

    def close(self):
        self.conn.close()


class _MySQL:
    """The same over PyMySQL; a transaction's id is its GTID (MariaDB's @@last_gtid after COMMIT)."""

    def __init__(self, url: str):
        import pymysql
        import sqlalchemy as sa

        parts = sa.engine.make_url(url)
        self.conn = pymysql.connect(host=parts.host, port=parts.port, user=parts.username,
                                    password=parts.password or "", database=parts.database, charset="utf8mb4")

    def execute(self, sql: str, params: tuple = ()):
        cursor = self.conn.cursor()
        cursor.execute(sql.replace("?", "%s"), params or None)
        return cursor

    def __enter__(self):
        self.conn.begin()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            self.conn.rollback()
            return False
        self.conn.commit()
        self.last_txid = self.execute("SELECT @@last_gtid").fetchone()[0]
        return False

    def close(self):
        self.conn.close()


def connect(db: Path | str):
    """sqlite3 for a path, psycopg for a postgresql:// URL, PyMySQL for mysql://."""
    if str(db).startswith("postgresql"):
        return _Postgres(db)
    if str(db).startswith(("mysql", "mariadb")):
        return _MySQL(db)
    return sqlite3.connect(db, timeout=30)


def run(db: Path | str, changes: int, seed: int, pause: float = 0.0, log: list | None = None) -> int:
    """Apply about ``changes`` row changes to ``entries`` and ``parties``; returns the exact count.

    ``log`` (PostgreSQL, MySQL): gets (transaction id, changes in it) for each transaction, in commit order.
    """
    import time

    rng = random.Random(seed)
    conn = connect(db)
    done = 0
    try:
        ids = [r[0] for r in conn.execute("SELECT id FROM entries")]
        parties = [tuple(r) for r in conn.execute("SELECT code, region FROM parties")]
        next_id = max(ids, default=0) + 1
        while done < changes:
            if pause:
                time.sleep(pause)
            with conn:
                started = done
                for _ in range(min(rng.randint(1, 20), changes - done)):
                    roll = rng.random()
                    if roll < 0.45 or not ids:
                        conn.execute("INSERT INTO entries VALUES (?, ?, ?, 'NOK', ?, ?)",
                                     (next_id, rng.choice([1500, 1920, 2700, 3000]), amount(rng), rng.choice(MEMOS),
                                      f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 12:00:00"))
                        ids.append(next_id)
                        next_id += 1
                    elif roll < 0.75:
                        victim, new_amount, new_memo = rng.choice(ids), amount(rng), rng.choice(MEMOS)
                        old = conn.execute("SELECT amount, memo FROM entries WHERE id = ?", (victim,)).fetchone()
                        if old is not None and Decimal(str(old[0])) == Decimal(new_amount) and old[1] == new_memo:
                            # Always a real change: MySQL's binlog has no event for an UPDATE that sets the
                            # values a row already has (PostgreSQL's WAL and every trigger do).
                            new_memo = "endret" if new_memo != "endret" else "endret igjen"
                        conn.execute("UPDATE entries SET amount = ?, memo = ? WHERE id = ?",
                                     (new_amount, new_memo, victim))
                    elif roll < 0.9:
                        victim = ids.pop(rng.randrange(len(ids)))
                        conn.execute("DELETE FROM entries WHERE id = ?", (victim,))
                    elif roll < 0.95 or not parties:
                        key = (f"K{rng.randint(1, 10**6)}", rng.randint(1, 9))
                        if key in parties:
                            continue
                        conn.execute("INSERT INTO parties VALUES (?, ?, ?)", (*key, rng.choice(MEMOS[:4])))
                        parties.append(key)
                    else:
                        key = parties.pop(rng.randrange(len(parties)))
                        conn.execute("DELETE FROM parties WHERE code = ? AND region = ?", key)
                    done += 1
            if log is not None and done > started:
                log.append((conn.last_txid, done - started))
    finally:
        conn.close()
    return done



class _SQLite:
    """sqlite3 with BEGIN IMMEDIATE: writer threads on one file wait for each other's write lock
    (busy timeout) instead of failing at once, as deferred transactions that read first may."""

    last_txid = None

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)

    def execute(self, sql: str, params: tuple = ()):
        return self.conn.execute(sql, params)

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            try:
                self.conn.execute("COMMIT")
                return False
            except sqlite3.OperationalError:
                self.conn.execute("ROLLBACK")
                raise
        self.conn.execute("ROLLBACK")
        return False

    def close(self):
        self.conn.close()


def _lost_race(exc: Exception) -> bool:
    """Whether the database rolled the transaction back because another session held what it needed."""
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc)
    if type(exc).__module__.startswith("psycopg"):
        import psycopg

        return isinstance(exc, psycopg.errors.TransactionRollback)
    return type(exc).__name__ == "OperationalError" and exc.args[:1] in ((1213,), (1205,))  # PyMySQL


def small_transactions(db: Path | str, writer: int, seed: int, stop, shared: tuple[int, list],
                       pause: float = 0.005, log: list | None = None, go=None) -> list[tuple[str | None, list]]:
    """One of several sessions writing at once: small transactions until ``stop`` (an Event) is set,
    each one when ``go`` (an Event, if given) is set.

    Each transaction UPDATEs one or two random rows of ``entries`` that every writer changes
    (``shared``: the ids 1..N of those rows and the ``parties`` keys every writer changes), in key
    order, so that writers wait for each other but never deadlock; INSERTs an entry of its own;
    now and then UPDATEs or DELETEs an entry it inserted before; and INSERTs a party, DELETEs one it
    inserted or UPDATEs a shared one. Every UPDATE changes a value (the memo names the transaction):
    MySQL's binlog logs no event for one that does not.

    Returns (and appends to ``log`` as they commit) each committed transaction as (its id:
    PostgreSQL pg_current_xact_id, MySQL GTID, SQLite None; the (table, key) of each row change).
    A transaction the database rolled back as a lost race (deadlock, lock wait) is left out.
    """
    import time

    rng = random.Random(seed)
    conn = _SQLite(db) if isinstance(db, Path) else connect(db)
    shared_entries, shared_parties = shared
    entries, parties, number = [], [], 0  # the rows of its own it may update or delete
    done = [] if log is None else log
    try:
        while not stop.is_set():
            if go is not None and not go.wait(0.1):
                continue
            number += 1
            memo, new_id, changed = f"w{writer} t{number}", (writer + 1) * 1_000_000 + number, []
            try:
                with conn:
                    for victim in sorted(rng.sample(range(1, shared_entries + 1), rng.randint(1, 2))):
                        if conn.execute("UPDATE entries SET amount = ?, memo = ? WHERE id = ?",
                                        (amount(rng), memo, victim)).rowcount:
                            changed.append(("entries", (victim,)))
                    conn.execute("INSERT INTO entries VALUES (?, ?, ?, 'NOK', ?, ?)",
                                 (new_id, rng.choice([1500, 1920, 2700, 3000]), amount(rng), memo,
                                  f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 12:00:00"))
                    changed.append(("entries", (new_id,)))
                    roll, victim, deleted = rng.random(), rng.choice(entries) if entries else None, None
                    if victim and roll < 0.3:
                        conn.execute("DELETE FROM entries WHERE id = ?", (victim,))
                        changed.append(("entries", (victim,)))
                        deleted = victim
                    elif victim and roll < 0.5:
                        conn.execute("UPDATE entries SET memo = ?, account = account + 1 WHERE id = ?", (memo, victim))
                        changed.append(("entries", (victim,)))
                    roll, party, party_op = rng.random(), rng.choice(parties) if parties else None, None
                    if roll < 0.25:
                        party = (f"W{writer}-{number}", rng.randint(1, 9))
                        conn.execute("INSERT INTO parties VALUES (?, ?, ?)", (*party, rng.choice(MEMOS[:4])))
                        changed.append(("parties", party))
                        party_op = "insert"
                    elif party and roll < 0.4:
                        conn.execute("DELETE FROM parties WHERE code = ? AND region = ?", party)
                        changed.append(("parties", party))
                        party_op = "delete"
                    elif roll < 0.55:
                        shared_party = rng.choice(shared_parties)
                        conn.execute("UPDATE parties SET name = ? WHERE code = ? AND region = ?", (memo, *shared_party))
                        changed.append(("parties", tuple(shared_party)))
            except Exception as exc:  # noqa: BLE001 - a lost race is expected; anything else goes on up
                if not _lost_race(exc):
                    raise
                continue
            # Its own rows after the commit: what it deleted goes, what it inserted comes.
            if deleted is not None:
                entries.remove(deleted)
            entries.append(new_id)
            if party_op == "delete":
                parties.remove(party)
            elif party_op == "insert":
                parties.append(party)
            done.append((conn.last_txid, changed))
            if pause:
                time.sleep(pause)
    finally:
        conn.close()
    return done


def shared_rows(db: Path | str, entries: int = 200, parties: int = 40) -> tuple[int, list]:
    """Insert the rows every writer of ``small_transactions`` changes; returns its ``shared`` argument."""
    conn = _SQLite(db) if isinstance(db, Path) else connect(db)
    keys = [(f"P{n}", n % 9 + 1) for n in range(1, parties + 1)]
    try:
        with conn:
            for n in range(1, entries + 1):
                conn.execute("INSERT INTO entries VALUES (?, 1500, ?, 'NOK', ?, '2024-01-31 12:00:00')",
                             (n, f"{n}.{n % 100:02d}", MEMOS[n % 4]))
            for key in keys:
                conn.execute("INSERT INTO parties VALUES (?, ?, ?)", (*key, MEMOS[len(key[0]) % 4]))
    finally:
        conn.close()
    return entries, keys
