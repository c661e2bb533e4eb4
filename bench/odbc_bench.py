"""The ODBC adapter beside the native drivers, on the same servers in the same process.

Run: python bench/odbc_bench.py [--rows 100000] [--seconds 15] [--clients 4] [--parts 1234]
Starts a throw-away PostgreSQL cluster and MariaDB server (tests/pgserver.py, tests/mysqlserver.py);
needs unixODBC and the Debian ODBC drivers (odbc-postgresql, odbc-mariadb).

1. Source through ODBC: a PostgreSQL table of --rows rows, capture timestamp, into PostgreSQL: the
   snapshot and one UPDATE of every row streamed, each by `cdc run --once`; baseline: the same pair with
   the source URL postgresql:// (psycopg).
2. Target through ODBC: a SQLite table (capture trigger) into MariaDB and into PostgreSQL: snapshot and
   one bulk UPDATE; baseline: each target's native driver (PyMySQL, psycopg).
3. Many small transactions: pgbench -c CLIENTS -j 2 -T SECONDS running a script of one UPDATE of a
   random row (updated_at = clock_timestamp()) per transaction, while `cdc run` (a subprocess, capture
   timestamp, poll_interval 0.2) follows it through psqlODBC and, on a fresh copy, through psycopg.
   Reported: the load's tx/s, row versions applied per second of load + catch-up, and the seconds from
   the load's end until the target equals the source. Polling applies row versions: a row changed twice
   between two polls is applied once, so "versions" is below the load's transactions.
4. MariaDB as a source with capture trigger (new through ODBC): PyMySQL, then the MariaDB
   ODBC driver, into PostgreSQL: snapshot and one bulk UPDATE; then --clients sessions of one-UPDATE
   transactions for --seconds while `cdc run` follows (every change audited once, checked).
Every run ends with the target compared with the source (count and sum of amounts).
"""

from __future__ import annotations

import argparse
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _report import print_table, timed_pair  # noqa: E402

PG_SOURCE = ("CREATE TABLE ledger (id BIGINT PRIMARY KEY, account INT NOT NULL, amount NUMERIC(18,2) NOT NULL, "
             "currency CHAR(3) NOT NULL, booked_at TIMESTAMPTZ NOT NULL, memo TEXT, "
             "updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())")
PG_FILL = ("INSERT INTO ledger SELECT g, 1000 + g % 9000, ((g * 7919) % 20000000 - 10000000) / 100.0, 'NOK', "
           "timestamptz '2024-01-01' + g * interval '1 second', 'Bilag ' || g || ' æøå' "
           "FROM generate_series(1, {rows}) g")
PG_TARGET = PG_SOURCE.replace(" DEFAULT clock_timestamp()", "")
MY_TARGET = ("CREATE TABLE ledger (id BIGINT PRIMARY KEY, account INT NOT NULL, amount DECIMAL(18,2) NOT NULL, "
             "currency CHAR(3) NOT NULL, booked_at DATETIME(6) NOT NULL, memo TEXT) ENGINE=InnoDB")
CHECK = "SELECT count(*), sum(amount) FROM ledger"
TIMESTAMP = "    timestamp: {column: updated_at}\n"


def pg_sql(url: str, statement: str):
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else None


def my_sql(port: int, database: str | None, statement: str):
    with pymysql.connect(host="127.0.0.1", port=port, user="root", database=database, autocommit=True) as conn:
        with conn.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall()


def odbc(url: str, driver: str) -> str:
    """The ODBC URL of a native one (same user, host, port, database), quoted for the YAML config."""
    scheme = url.split("://", 1)[1]
    return f'"odbc://{scheme}?driver={driver}"'


def fresh_pg(cluster, name: str, ddl: str) -> str:
    pg_sql(cluster.url(), f"DROP DATABASE IF EXISTS {name}")
    pg_sql(cluster.url(), f"CREATE DATABASE {name}")
    url = cluster.url(name)
    pg_sql(url, ddl)
    return url


def source_side(cluster, rows: int) -> list[tuple[str, float, float | None]]:
    """Part 1: a PostgreSQL source read by psycopg, then by psqlODBC."""
    measures, base = [], None
    for label, through_odbc in (("psycopg", False), ("psqlODBC", True)):
        source = fresh_pg(cluster, "src", PG_SOURCE)
        pg_sql(source, PG_FILL.format(rows=rows))
        target = fresh_pg(cluster, "dst", PG_TARGET)
        url = odbc(source, "PostgreSQL Unicode") if through_odbc else source
        snapshot, stream = timed_pair(
            url, target, "timestamp", lambda: pg_sql(source, CHECK) == pg_sql(target, CHECK),
            lambda: pg_sql(source, "UPDATE ledger SET amount = amount + 1, updated_at = clock_timestamp()"),
            TIMESTAMP)
        base = base or (snapshot, stream)
        measures += [(f"source {label}: snapshot", snapshot, None if not through_odbc else base[0]),
                     (f"source {label}: bulk UPDATE", stream, None if not through_odbc else base[1])]
    return measures


def target_side(cluster, mariadb, rows: int, work: Path) -> list[tuple[str, float, float | None]]:
    """Part 2: a SQLite source into MariaDB and PostgreSQL, by their native drivers and by ODBC."""
    measures = []
    for kind in ("mariadb", "postgresql"):
        base = None
        for through_odbc in (False, True):
            db = work / f"src-{kind}-{through_odbc}.db"
            with sqlite3.connect(db) as conn:
                conn.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, account INTEGER NOT NULL, amount TEXT NOT NULL, "
                             "currency TEXT NOT NULL, booked_at TEXT NOT NULL, memo TEXT)")
                conn.executemany("INSERT INTO ledger VALUES (?, ?, ?, 'NOK', ?, ?)",
                                 ((i, 1000 + i % 9000, f"{(i * 7919) % 20000000 / 100 - 100000:.2f}",
                                   f"2024-01-01 00:00:{i % 60:02d}+00:00", f"Bilag {i} æøå") for i in range(1, rows + 1)))
            if kind == "mariadb":
                my_sql(mariadb.port, None, "DROP DATABASE IF EXISTS dst")
                my_sql(mariadb.port, None, "CREATE DATABASE dst")
                my_sql(mariadb.port, "dst", MY_TARGET)
                native = mariadb.url("dst")
                same = (lambda db=db: _sqlite_check(db) == _decimal_check(my_sql(mariadb.port, "dst", CHECK)))
                label, url = ("MariaDB ODBC", odbc(native, "MariaDB Unicode")) if through_odbc else ("PyMySQL", native)
            else:
                native = fresh_pg(cluster, "dst", PG_TARGET.replace(", updated_at TIMESTAMPTZ NOT NULL", ""))
                same = (lambda db=db, native=native: _sqlite_check(db) == _decimal_check(pg_sql(native, CHECK)))
                label, url = ("psqlODBC", odbc(native, "PostgreSQL Unicode")) if through_odbc else ("psycopg", native)
            snapshot, stream = timed_pair(
                f"sqlite:///{db}", url, "trigger", same,
                lambda db=db: _sqlite_update(db))
            base = base or (snapshot, stream)
            measures += [(f"target {label}: snapshot", snapshot, base[0] if through_odbc else None),
                         (f"target {label}: bulk UPDATE", stream, base[1] if through_odbc else None)]
    return measures


def _sqlite_update(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE ledger SET amount = printf('%.2f', CAST(amount AS REAL) + 1)")


def _sqlite_check(db: Path) -> tuple:
    with sqlite3.connect(db) as conn:
        count = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
        total = sum(Decimal(a) for (a,) in conn.execute("SELECT amount FROM ledger"))
    return count, total


def _decimal_check(found) -> tuple:
    count, total = found[0]
    return count, Decimal(total)


def _caught_up(same, label: str) -> float:
    """Seconds from now until ``same()`` holds (the target equals the source after a load)."""
    ended = time.perf_counter()
    while not same():
        if time.perf_counter() - ended > 600:
            raise SystemExit(f"{label}: not caught up within 10 minutes")
        time.sleep(0.1)
    return time.perf_counter() - ended


def _audited(target: str, pair: str) -> int:
    return pg_sql(target, f"SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot' AND pair = '{pair}'")[0][0]


def oltp(cluster, seconds: float, clients: int, rows: int, work: Path) -> list[str]:
    """Part 3: pgbench's small transactions followed by `cdc run` through psycopg and through psqlODBC."""
    pgbench = Path(cluster.bindir) / "pgbench"
    script = work / "update.sql"
    script.write_text(f"\\set id random(1, {rows})\nUPDATE ledger SET amount = amount + 1, "
                      "updated_at = clock_timestamp() WHERE id = :id;\n")
    lines = [f"{'source':<10}{'load tx/s':>11}{'versions':>10}{'applied/s':>11}{'catch-up s':>12}  check"]
    for label, through_odbc in (("psycopg", False), ("psqlODBC", True)):
        source = fresh_pg(cluster, "src", PG_SOURCE)
        pg_sql(source, PG_FILL.format(rows=rows))
        target = fresh_pg(cluster, "dst", PG_TARGET)
        config = work / f"oltp-{label}.yaml"
        config.write_text(f"connections:\n  src: {odbc(source, 'PostgreSQL Unicode') if through_odbc else source}\n"
                          f"  dst: {target}\npairs:\n  bench:\n    source: src\n    target: dst\n    capture: timestamp\n"
                          f"    tables: [ledger]\n    poll_interval: 0.2\n{TIMESTAMP}")
        for command in ("init", "install"):
            subprocess.run([sys.executable, "-m", "cdc", command, str(config)], check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "cdc", "run", "--once", str(config)], check=True, capture_output=True)
        before = _audited(target, "bench")
        run = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            time.sleep(2)  # started, caught up with nothing
            load = subprocess.run([str(pgbench), "-n", "-f", str(script), "-c", str(clients), "-j", "2",
                                   "-T", str(int(seconds)), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
                                   "src"], capture_output=True, text=True)
            if load.returncode != 0:
                raise SystemExit(f"pgbench failed: {load.stderr}")
            tps = float(re.search(r"tps = ([0-9.]+)", load.stdout).group(1))
            want = pg_sql(source, CHECK)
            catch_up = _caught_up(lambda: pg_sql(target, CHECK) == want, label)
        finally:
            run.terminate()
            run.wait(60)
        versions = _audited(target, "bench") - before
        equal = pg_sql(source, "SELECT id, amount FROM ledger ORDER BY id") == \
            pg_sql(target, "SELECT id, amount FROM ledger ORDER BY id")
        lines.append(f"{label:<10}{tps:>11,.0f}{versions:>10,}{versions / (seconds + catch_up):>11,.0f}"
                     f"{catch_up:>12.1f}  {'equal' if equal else 'DIFFERS'}")
        if not equal:
            raise SystemExit("\n".join(lines))
    return lines


MY_SOURCE = MY_TARGET


def trigger_source(cluster, mariadb, rows: int, seconds: float, clients: int) -> tuple[list, list[str]]:
    """Part 4: a MariaDB source with capture trigger (new through ODBC) read by PyMySQL, then by the
    MariaDB ODBC driver, into PostgreSQL: snapshot and one bulk UPDATE; then CLIENTS sessions of small
    transactions (one UPDATE each, autocommit) for SECONDS while `cdc run` follows."""
    measures, lines, base = [], [f"{'source':<14}{'load tx/s':>11}{'changes':>10}{'applied/s':>11}{'catch-up s':>12}  check"], None
    fill = (f"INSERT INTO ledger SELECT g, 1000 + g % 9000, ((g * 7919) % 20000000 - 10000000) / 100.0, 'NOK', "
            f"'2024-01-01' + INTERVAL g SECOND, CONCAT('Bilag ', g, ' æøå') "
            f"FROM (SELECT CAST(seq AS SIGNED) AS g FROM seq_1_to_{rows}) s")
    for label, through_odbc in (("PyMySQL", False), ("MariaDB ODBC", True)):
        my_sql(mariadb.port, None, "DROP DATABASE IF EXISTS src")
        my_sql(mariadb.port, None, "CREATE DATABASE src")
        my_sql(mariadb.port, "src", MY_SOURCE)
        my_sql(mariadb.port, "src", fill)
        target = fresh_pg(cluster, "dst", PG_TARGET.replace(", updated_at TIMESTAMPTZ NOT NULL", ""))
        native = mariadb.url("src")
        url = odbc(native, "MariaDB Unicode") if through_odbc else native
        same = (lambda t=target: _decimal_check(my_sql(mariadb.port, "src", CHECK)) == _decimal_check(pg_sql(t, CHECK)))
        snapshot, stream = timed_pair(url, target, "trigger", same,
                                      lambda: my_sql(mariadb.port, "src", "UPDATE ledger SET amount = amount + 1"))
        base = base or (snapshot, stream)
        measures += [(f"trigger source {label}: snapshot", snapshot, base[0] if through_odbc else None),
                     (f"trigger source {label}: bulk UPDATE", stream, base[1] if through_odbc else None)]
        lines.append(_small_transactions(label, url, target, mariadb, rows, seconds, clients, same))
    return measures, lines


def _small_transactions(label, url, target, mariadb, rows, seconds, clients, same) -> str:
    import random
    import threading
    pg_sql(target, "DELETE FROM cdc_checkpoints WHERE pair = 'bench'")  # that pair is done: this one writes the table
    work = Path(tempfile.mkdtemp())
    config = work / "oltp.yaml"
    config.write_text(f"connections:\n  src: {url}\n  dst: {target}\npairs:\n  oltp:\n    source: src\n    target: dst\n"
                      "    capture: trigger\n    tables: [ledger]\n    poll_interval: 0.2\n")
    for command in (["init"], ["install"], ["run", "--once"]):
        done = subprocess.run([sys.executable, "-m", "cdc", *command, str(config)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{label}: cdc {' '.join(command)}: {done.stdout}{done.stderr}")
    before = _audited(target, "oltp")
    run = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(config)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    done = [0] * clients
    try:
        time.sleep(2)
        end = time.perf_counter() + seconds

        def session(n: int) -> None:
            rng = random.Random(n)
            with pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", database="src",
                                 autocommit=True) as conn, conn.cursor() as cursor:
                while time.perf_counter() < end:
                    cursor.execute("UPDATE ledger SET amount = amount + 1 WHERE id = %s", (rng.randint(1, rows),))
                    done[n] += 1

        threads = [threading.Thread(target=session, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        catch_up = _caught_up(same, label)
    finally:
        run.terminate()
        run.wait(60)
    changes = _audited(target, "oltp") - before
    if changes != sum(done):
        raise SystemExit(f"{label}: {sum(done)} transactions of one change each, {changes} audit rows")
    return (f"{label:<14}{sum(done) / seconds:>11,.0f}{changes:>10,}{changes / (seconds + catch_up):>11,.0f}"
            f"{catch_up:>12.1f}  equal, one audit row per change")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--parts", default="1234", help="which parts to run (default all: 1234)")
    args = parser.parse_args()
    from mysqlserver import LocalMariaDB
    from pgserver import LocalCluster

    cluster, mariadb = LocalCluster(), LocalMariaDB()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            measures = (source_side(cluster, args.rows) if "1" in args.parts else []) + \
                (target_side(cluster, mariadb, args.rows, Path(tmp)) if "2" in args.parts else [])
            if measures:
                print_table(f"ODBC vs native drivers, {args.rows:,} rows (baseline: the native driver, same run)",
                            args.rows, measures, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            if "3" in args.parts:
                print(f"\nMany small transactions: pgbench -c {args.clients} -T {args.seconds:g}, one UPDATE each, "
                      f"{args.rows:,} rows; cdc run (capture timestamp) into PostgreSQL")
                print("\n".join(oltp(cluster, args.seconds, args.clients, args.rows, Path(tmp))))
            if "4" not in args.parts:
                return
            measures, lines = trigger_source(cluster, mariadb, args.rows, args.seconds, args.clients)
            print_table(f"\nMariaDB source, capture trigger, into PostgreSQL, {args.rows:,} rows (baseline: PyMySQL, "
                        "same run)", args.rows, measures, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            print(f"\nMany small transactions: {args.clients} sessions, one UPDATE of a random row each, "
                  f"{args.seconds:g} s; cdc run (capture trigger) into PostgreSQL")
            print("\n".join(lines))
    finally:
        cluster.remove()
        mariadb.remove()


if __name__ == "__main__":
    main()
