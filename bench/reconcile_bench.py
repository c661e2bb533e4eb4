"""`cdc reconcile` against reladiff on 1,000,000-row ledger tables.

Run: python bench/reconcile_bench.py [--rows 1000000] [--reladiff PATH-TO-reladiff]
Starts two throw-away PostgreSQL servers and a MariaDB server (tests/pgserver.py, tests/mysqlserver.py)
and fills the same ledger table in each (bigint key, int, numeric(18,2), char(3), timestamp, text).
Measured in this one run:
  1. PostgreSQL -> PostgreSQL, identical tables: cdc reconcile, then reladiff (if given);
  2. the same after 100 scattered rows of the target were changed by one cent: both must find
     exactly those 100 rows;
  3. the same data in a table whose amount is numeric(20,4) and whose booked_at is a timestamp without
     time zone (UTC wall-clock): equal values in other types, so any difference reported is a false one;
  4. MariaDB -> PostgreSQL, identical data in DECIMAL/DATETIME(6) against numeric/timestamptz: cdc
     reconcile, then reladiff across the two databases (any difference it reports is a false one).
reladiff is installed apart from cdc-sync (its own dependencies), e.g.
`python3 -m venv /tmp/rdvenv && /tmp/rdvenv/bin/pip install "reladiff[postgresql,mysql]"`.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mysql_bench import FILL as MY_FILL, SOURCE_TABLE as MY_TABLE, my, my_sql, pg_sql  # noqa: E402

PG_TABLE = ("CREATE TABLE ledger (id BIGINT PRIMARY KEY, account INT NOT NULL, amount NUMERIC(18,2) NOT NULL, "
            "currency CHAR(3) NOT NULL, booked_at TIMESTAMPTZ NOT NULL, memo TEXT)")
# The same values MariaDB's FILL makes (mysql_bench.py), in PostgreSQL.
PG_FILL = ("INSERT INTO ledger SELECT g, 1000 + g % 9000, ((g::bigint * 7919) % 20000000 - 10000000) / 100.0, 'NOK', "
           "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', 'Bilag ' || g || ' æøå' "
           "FROM generate_series(1, {rows}) g")
COLUMNS = ["account", "amount", "currency", "booked_at", "memo"]


def cdc_reconcile(source: str, target: str) -> tuple[float, int]:
    """Seconds of `cdc reconcile` (in this process) and the differing rows it found."""
    from cdc import commands

    with tempfile.TemporaryDirectory() as tmp:
        config = str(Path(tmp) / "config.yaml")
        Path(config).write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  bench:\n"
                                "    source: src\n    target: dst\n    tables: [ledger]\n")
        commands.init(config)
        start = time.perf_counter()
        report = commands.reconcile(config, settle=0, limit=1000)
        seconds = time.perf_counter() - start
    table = report.tables[0]
    return seconds, table.missing + table.extra + table.different


def reladiff(path: str, a: str, b: str) -> tuple[float, int]:
    """Seconds of reladiff comparing ledger in ``a`` and ``b`` and the differing rows it reported
    (a changed row is one '-' and one '+' line: counted once, by key)."""
    args = [path, a, "ledger", b, "ledger", "-k", "id", *[x for c in COLUMNS for x in ("-c", c)], "--json"]
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"reladiff failed: {done.stderr[-2000:]}")
    keys = {match.group(1) for match in re.finditer(r'^\["[+-]", \["([^"]*)"', done.stdout, re.MULTILINE)}
    return seconds, len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reladiff", help="the reladiff command: run it on the same tables too")
    args = parser.parse_args()
    rows = args.rows
    from mysqlserver import LocalMariaDB
    from pgserver import LocalCluster

    servers = [LocalCluster({"max_wal_size": "4GB"}), LocalCluster({"max_wal_size": "4GB"}),
               LocalMariaDB({"innodb-buffer-pool-size": "1G"})]
    first, second, mariadb = servers
    results = []
    try:
        for cluster in (first, second):
            pg_sql(cluster.url(), "CREATE DATABASE bench")
            pg_sql(cluster.url("bench"), PG_TABLE)
            pg_sql(cluster.url("bench"), PG_FILL.format(rows=rows))
            pg_sql(cluster.url("bench"), "VACUUM ANALYZE ledger")
        with my(mariadb.port) as conn, conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE bench")
        my_sql(mariadb.port, MY_TABLE)
        my_sql(mariadb.port, MY_FILL.format(rows=rows))
        a, b = first.url("bench"), second.url("bench")

        def case(name: str, source: str, target: str, expected: int) -> None:
            seconds, found = cdc_reconcile(source, target)
            results.append((name, "cdc reconcile", seconds, found, expected))
            if args.reladiff:
                seconds, found = reladiff(args.reladiff, source, target)
                results.append((name, "reladiff", seconds, found, expected))

        case("PostgreSQL -> PostgreSQL, identical", a, b, 0)
        step = max(1, rows // 100)
        pg_sql(b, f"UPDATE ledger SET amount = amount + 0.01 WHERE id % {step} = 7")
        changed = pg_sql(b, f"SELECT count(*) FROM ledger WHERE id % {step} = 7")[0][0]
        case(f"PostgreSQL -> PostgreSQL, {changed} rows one cent off", a, b, changed)
        pg_sql(second.url(), "CREATE DATABASE typed")
        typed = second.url("typed")
        pg_sql(typed, PG_TABLE.replace("NUMERIC(18,2)", "NUMERIC(20,4)").replace("TIMESTAMPTZ", "TIMESTAMP"))
        pg_sql(typed, "SET TimeZone = 'UTC'; " + PG_FILL.format(rows=rows))
        case("identical, numeric(20,4) and timestamp there", a, typed, 0)
        case("MariaDB -> PostgreSQL, identical", mariadb.url("bench"), a, 0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        for server in servers:
            server.remove()
    print(f"reconcile, {rows:,}-row ledger tables (bigint key, int, numeric(18,2), char(3), timestamp, text)")
    print(f"{'case':<48}{'tool':<16}{'seconds':>9}{'rows/s':>12}{'found':>8}{'expected':>10}")
    for name, tool, seconds, found, expected in results:
        flag = "" if found == expected else "  <- wrong"
        print(f"{name:<48}{tool:<16}{seconds:>9.2f}{rows / seconds:>12,.0f}{found:>8}{expected:>10}{flag}")
    print(f"peak RSS of the process cdc ran in: {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
