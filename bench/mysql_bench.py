"""MariaDB -> PostgreSQL: snapshot and binlog streaming rows/s next to a plain SELECT | COPY script.

Run: python bench/mysql_bench.py [--rows 1000000] [--chameleon PATH-TO-chameleon]
Starts a throw-away MariaDB server (tests/mysqlserver.py) and PostgreSQL server (tests/pgserver.py).
Baseline, in the same run on the same servers: the ledger table read from MariaDB with an
unbuffered cursor (PyMySQL SSCursor) and written into PostgreSQL with COPY (psycopg), no mapping,
no checks, no audit. Streaming is timed from the source COMMIT of one UPDATE of every row until
`cdc run --once` has applied it (goal: at least 20,000 changes/s). The same is measured with trigger
capture into another target database.

With --chameleon (the `chameleon` script of a pg_chameleon installed from PyPI, e.g.
`python3 -m venv /tmp/chvenv && /tmp/chvenv/bin/pip install pg_chameleon`), pg_chameleon replicates the
same table into a third database: `init_replica` timed as its snapshot, then one UPDATE of every row
timed from the COMMIT until its replica daemon has replayed it. pg_chameleon refuses to run as
root: as root it runs as the `postgres` user.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
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


CHAMELEON_CONFIG = """---
pid_dir: '{home}/pid/'
log_dir: '{home}/logs/'
log_dest: file
log_level: info
log_days_keep: 1
rollbar_key: ''
rollbar_env: ''
type_override: {{}}
pg_conn: {{host: "127.0.0.1", port: "{pg_port}", user: "postgres", password: "trust", database: "chameleon",
          charset: "utf8"}}
sources:
  mysql:
    db_conn: {{host: "127.0.0.1", port: "{my_port}", user: "root", password: "", charset: "utf8",
               connect_timeout: 10}}
    schema_mappings: {{bench: bench}}
    limit_tables:
    skip_tables:
    grant_select_to:
    lock_timeout: "120s"
    my_server_id: 100
    replica_batch_size: 10000
    replay_max_rows: 10000
    batch_retention: '1 day'
    copy_max_memory: "300M"
    copy_mode: 'file'
    out_dir: {home}
    sleep_loop: 1
    on_error_replay: continue
    on_error_read: continue
    auto_maintenance: "disabled"
    gtid_enable: false
    type: mysql
    skip_events: {{insert: , delete: , update: }}
    keep_existing_schema: No
    net_read_timeout: 600
"""


def chameleon(script: str, my_port: int, cluster, update) -> tuple[float, float]:
    """pg_chameleon's init_replica seconds and the seconds its daemon takes to replay ``update()``."""
    pg_sql(cluster.url(), "CREATE DATABASE chameleon")
    target = cluster.url("chameleon")
    check = TARGET_CHECK.replace("FROM ledger", "FROM bench.ledger")
    with tempfile.TemporaryDirectory() as home:
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

        def run(*args: str, timeout: float | None = None) -> None:
            done = subprocess.run([*as_user, "env", f"HOME={home}", script, *args], capture_output=True, text=True,
                                  timeout=timeout)
            if done.returncode != 0:
                raise SystemExit(f"chameleon {' '.join(args)} failed: {done.stderr[-2000:]}")

        for sub in ("logs", "pid"):
            Path(home, sub).mkdir()
        if as_user:
            subprocess.run(["chown", "-R", "postgres", home], check=True)
        run("set_configuration_files")
        Path(home, ".pg_chameleon/configuration/default.yml").write_text(
            CHAMELEON_CONFIG.format(home=home, pg_port=cluster.port, my_port=my_port))
        run("create_replica_schema")
        run("add_source", "--source", "mysql")
        start = time.perf_counter()
        run("init_replica", "--source", "mysql", "--debug")  # --debug: in the foreground, else it detaches
        snapshot = time.perf_counter() - start
        assert list(my_sql(my_port, SOURCE_CHECK)[0]) == list(pg_sql(target, check)[0]), "chameleon's copy differs"
        run("start_replica", "--source", "mysql")
        try:
            time.sleep(5)  # the daemon's first loop
            update()
            want, start = list(my_sql(my_port, SOURCE_CHECK)[0]), time.perf_counter()
            while list(pg_sql(target, check)[0]) != want:
                if time.perf_counter() - start > 3600:
                    raise SystemExit("pg_chameleon did not replay the UPDATE within an hour")
                time.sleep(0.2)
            stream = time.perf_counter() - start
        finally:
            try:
                run("stop_replica", "--source", "mysql", timeout=60)
            except (SystemExit, subprocess.TimeoutExpired):  # seen spinning forever: end its daemon directly
                subprocess.run(["pkill", "-f", f"{script} (start|stop)_replica"])
    return snapshot, stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chameleon", help="pg_chameleon's `chameleon` script: run it on the same data too")
    args = parser.parse_args()
    rows = args.rows
    from mysqlserver import LocalMariaDB
    from pgserver import LocalCluster

    mariadb, cluster = LocalMariaDB({"innodb-buffer-pool-size": "1G"}), LocalCluster({"max_wal_size": "4GB"})
    try:
        with my(mariadb.port) as conn, conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE bench")
        my_sql(mariadb.port, SOURCE_TABLE)
        my_sql(mariadb.port, FILL.format(rows=rows))
        for database in ("bench", "baseline", "trig"):
            pg_sql(cluster.url(), f"CREATE DATABASE {database}")
            pg_sql(cluster.url(database), TARGET_TABLE)
        baseline_seconds = select_copy(mariadb.port, cluster.url("baseline"))

        def update() -> None:
            my_sql(mariadb.port, "UPDATE ledger SET amount = amount + 1, memo = CONCAT(memo, ' c')")

        measures = [("baseline SELECT (unbuffered) | COPY", baseline_seconds, None)]
        for capture, database in (("binlog", "bench"), ("trigger", "trig")):
            target = cluster.url(database)
            snapshot_seconds, stream_seconds = timed_pair(
                mariadb.url("bench"), target, capture,
                lambda: list(my_sql(mariadb.port, SOURCE_CHECK)[0]) == list(pg_sql(target, TARGET_CHECK)[0]), update)
            measures += [(f"cdc initial snapshot ({capture} pair)", snapshot_seconds, baseline_seconds),
                         (f"cdc {capture} streaming apply (UPDATE of every row)", stream_seconds, None)]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.chameleon:
            snapshot_seconds, stream_seconds = chameleon(args.chameleon, mariadb.port, cluster, update)
            measures += [("pg_chameleon init_replica", snapshot_seconds, baseline_seconds),
                         ("pg_chameleon replay of the UPDATE (its daemon)", stream_seconds, None)]
    finally:
        mariadb.remove()
        cluster.remove()
    print_table(f"MariaDB -> PostgreSQL, {rows:,} rows (bigint key, int, decimal(18,2), char(3), datetime, text)",
                rows, measures, peak)


if __name__ == "__main__":
    main()
