"""MariaDB -> PostgreSQL: snapshot and binlog streaming rows/s next to a plain SELECT | COPY script.

Run: python bench/mysql_bench.py [--rows 1000000]
Starts a throw-away MariaDB server (tests/mysqlserver.py) and PostgreSQL server (tests/pgserver.py).
Baseline, in the same run on the same servers: the ledger table read from MariaDB with an
unbuffered cursor (PyMySQL SSCursor) and written into PostgreSQL with COPY (psycopg), no mapping,
no checks, no audit. Streaming is timed from the source COMMIT of one UPDATE of every row until
`cdc run --once` has applied it (goal: at least 20,000 changes/s).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import psycopg
import pymysql
import pymysql.cursors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _report import print_table, timed_pair  # noqa: E402

SOURCE_TABLE = ("CREATE TABLE ledger (id BIGINT PRIMARY KEY, account INT NOT NULL, amount DECIMAL(18,2) NOT NULL, "
                "currency CHAR(3) NOT NULL, booked_at DATETIME(6) NOT NULL, memo TEXT) ENGINE=InnoDB")
TARGET_TABLE = ("CREATE TABLE ledger (id BIGINT PRIMARY KEY, account INT NOT NULL, amount NUMERIC(18,2) NOT NULL, "
                "currency CHAR(3) NOT NULL, booked_at TIMESTAMPTZ NOT NULL, memo TEXT)")
FILL = ("INSERT INTO ledger SELECT seq, 1000 + seq % 9000, (CAST(seq * 7919 % 20000000 AS SIGNED) - 10000000) / 100, 'NOK', "
        "TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND, CONCAT('Bilag ', seq, ' æøå') "
        "FROM seq_1_to_{rows}")
SOURCE_CHECK = "SELECT COUNT(*), SUM(amount) FROM ledger"
TARGET_CHECK = "SELECT count(*), sum(amount) FROM ledger"


def my(port: int, database: str | None = None, **options):
    return pymysql.connect(host="127.0.0.1", port=port, user="root", database=database, autocommit=True,
                           charset="utf8mb4", **options)


def my_sql(port: int, statement: str):
    with my(port, "bench") as conn, conn.cursor() as cursor:
        cursor.execute(statement)
        return cursor.fetchall()


def pg_sql(url: str, statement: str):
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else None


def select_copy(port: int, target: str) -> float:
    """The baseline: SELECT streamed from MariaDB, COPY'd into PostgreSQL, nothing else."""
    start = time.perf_counter()
    with my(port, "bench", cursorclass=pymysql.cursors.SSCursor) as source, psycopg.connect(target) as dst:
        with source.cursor() as cursor, dst.cursor().copy("COPY ledger FROM STDIN") as into:
            cursor.execute("SET time_zone = '+00:00'")
            cursor.execute("SELECT id, account, amount, currency, booked_at, memo FROM ledger")
            for row in cursor:
                into.write_row(row)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    rows = parser.parse_args().rows
    from mysqlserver import LocalMariaDB
    from pgserver import LocalCluster

    mariadb, cluster = LocalMariaDB({"innodb-buffer-pool-size": "1G"}), LocalCluster({"max_wal_size": "4GB"})
    try:
        with my(mariadb.port) as conn, conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE bench")
        my_sql(mariadb.port, SOURCE_TABLE)
        my_sql(mariadb.port, FILL.format(rows=rows))
        for database in ("bench", "baseline"):
            pg_sql(cluster.url(), f"CREATE DATABASE {database}")
            pg_sql(cluster.url(database), TARGET_TABLE)
        target = cluster.url("bench")
        baseline_seconds = select_copy(mariadb.port, cluster.url("baseline"))
        snapshot_seconds, stream_seconds = timed_pair(
            mariadb.url("bench"), target, "binlog",
            lambda: list(my_sql(mariadb.port, SOURCE_CHECK)[0]) == list(pg_sql(target, TARGET_CHECK)[0]),
            lambda: my_sql(mariadb.port, "UPDATE ledger SET amount = amount + 1, memo = CONCAT(memo, ' c')"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        mariadb.remove()
        cluster.remove()
    print_table(f"MariaDB -> PostgreSQL, {rows:,} rows (bigint key, int, decimal(18,2), char(3), datetime, text)",
                rows, [("baseline SELECT (unbuffered) | COPY", baseline_seconds, None),
                       ("cdc initial snapshot", snapshot_seconds, baseline_seconds),
                       ("cdc binlog streaming apply (UPDATE of every row)", stream_seconds, None)], peak)


if __name__ == "__main__":
    main()
