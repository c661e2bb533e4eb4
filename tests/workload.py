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
