"""MariaDB -> PostgreSQL binlog capture under many small transactions (sysbench oltp_write_only).

Run: python bench/binlog_small_transactions.py [--seconds 20] [--threads 4]
Starts a throw-away MariaDB and PostgreSQL (tests/mysqlserver.py, tests/pgserver.py), copies four
10,000-row sysbench tables, then runs `cdc run CONFIG` (default settings) as a service while
`sysbench oltp_write_only` drives the source. Prints the load's transactions/s, changes/s applied
during the load, catch-up time after the load ends (the checkpoint reaching the binlog's end), the
lag of marker rows written every 0.1 s during the load (p50/p99: source COMMIT to the row in the
target), the idle latency of single small transactions (p50), and the CPU the idle cdc process uses.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mysqlserver import LocalMariaDB  # noqa: E402
from pgserver import LocalCluster  # noqa: E402

TABLES = ["sbtest1", "sbtest2", "sbtest3", "sbtest4", "marker"]


def my_sql(port: int, statement: str, params=None):
    with pymysql.connect(host="127.0.0.1", port=port, user="root", database="bench", autocommit=True) as conn:
        with conn.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall()


def pg_sql(url: str, statement: str, params=None):
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def sysbench(port: int, threads: int, *args: str) -> str:
    return subprocess.run(["sysbench", "oltp_write_only", "--db-driver=mysql", "--mysql-host=127.0.0.1",
                           f"--mysql-port={port}", "--mysql-user=root", "--mysql-db=bench", "--tables=4",
                           "--table-size=10000", f"--threads={threads}", *args],
                          capture_output=True, text=True, check=True).stdout


def binlog_end(port: int) -> tuple[int, int]:
    file, pos = my_sql(port, "SHOW MASTER STATUS")[0][:2]
    return int(file.rsplit(".", 1)[1]), int(pos)


def checkpoint(target: str) -> tuple[int, int]:
    rows = pg_sql(target, "SELECT position FROM cdc_checkpoints")
    position = json.loads(rows[0][0]) if rows else None
    return (int(position["file"].rsplit(".", 1)[1]), int(position["pos"])) if position else (0, 0)


def markers(port: int, stop: threading.Event) -> None:
    while not stop.wait(0.1):
        my_sql(port, "INSERT INTO marker (at) VALUES (%s)", (time.time(),))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    mariadb, postgres = LocalMariaDB(), LocalCluster()
    process = None
    try:
        port = mariadb.port
        pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True).cursor().execute(
            "CREATE DATABASE bench")
        sysbench(port, 4, "prepare")
        my_sql(port, "CREATE TABLE marker (id INT AUTO_INCREMENT PRIMARY KEY, at DOUBLE NOT NULL, seen DOUBLE)")
        pg_sql(postgres.url(), "CREATE DATABASE bench")
        target = postgres.url("bench")
        pg_sql(target, "CREATE TABLE marker (id INT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, "
                       "seen DOUBLE PRECISION)")
        pg_sql(target, "CREATE FUNCTION seen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                       "NEW.seen := extract(epoch from clock_timestamp()); RETURN NEW; END $$")
        pg_sql(target, "CREATE TRIGGER seen BEFORE INSERT ON marker FOR EACH ROW EXECUTE FUNCTION seen()")
        home = Path(tempfile.mkdtemp(prefix="binlog-bench-"))
        config = home / "config.yaml"
        config.write_text(f"connections:\n  src: {mariadb.url('bench')}\n  dst: {target}\npairs:\n  bench:\n"
                          f"    source: src\n    target: dst\n    capture: binlog\n    tables: [{', '.join(TABLES)}]\n")
        cdc = [sys.executable, "-m", "cdc"]
        for command in (["init"], ["install"], ["run", "--once"]):
            done = subprocess.run([*cdc, *command, str(config)], capture_output=True, text=True, cwd=home)
            assert done.returncode == 0, done.stderr
        log = open(home / "run.log", "wb")
        process = subprocess.Popen([*cdc, "run", str(config)], cwd=home, stdout=log, stderr=log)
        time.sleep(3)
        stop = threading.Event()
        marking = threading.Thread(target=markers, args=(port, stop))
        marking.start()
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(process.pid), "--duration", str(args.seconds),
                                "--format", "raw", "--threads", "-o", os.environ["BENCH_PYSPY"]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) \
            if os.environ.get("BENCH_PYSPY") else None
        started = time.time()
        out = sysbench(port, args.threads, f"--time={args.seconds}", "--report-interval=0", "run")
        ended = time.time()
        stop.set()
        marking.join()
        applied_in_load = pg_sql(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot' "
                                         "AND applied_at <= to_timestamp(%s)", (ended,))[0][0]
        end = binlog_end(port)
        while checkpoint(target) < end:
            if time.time() - ended > 240:
                break
            time.sleep(0.05)
        caught_up = time.time() - ended
        total = pg_sql(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'")[0][0]
        lags = sorted(r[0] for r in pg_sql(target, "SELECT seen - at FROM marker WHERE seen IS NOT NULL"))
        tps = float(out.split("transactions:")[1].split("(")[1].split()[0])
        # Idle: single small transactions, each timed from COMMIT to visible in the target.
        time.sleep(2)
        idle = []
        for i in range(10):
            count = pg_sql(target, "SELECT count(*) FROM marker")[0][0]
            at = time.time()
            my_sql(port, "INSERT INTO marker (at) VALUES (%s)", (at,))
            while pg_sql(target, "SELECT count(*) FROM marker")[0][0] == count:
                time.sleep(0.005)
            idle.append(time.time() - at)
            time.sleep(0.37)
        before = cpu_seconds(process.pid)
        time.sleep(10)
        idle_cpu = (cpu_seconds(process.pid) - before) / 10
        print(f"load: sysbench oltp_write_only, {args.threads} threads, {ended - started:.1f} s, {tps:,.0f} tps")
        print(f"changes applied during the load: {applied_in_load:,} ({applied_in_load / (ended - started):,.0f}/s); "
              f"in all {total:,} ({total / (ended - started + caught_up):,.0f}/s until caught up)")
        print(f"caught up {caught_up:.2f} s after the load ended")
        print(f"marker lag during the load: p50 {statistics.median(lags):.3f} s, "
              f"p99 {lags[int(len(lags) * 0.99) - 1]:.3f} s, max {lags[-1]:.3f} s ({len(lags)} markers)")
        print(f"idle latency of one small transaction: p50 {statistics.median(idle):.3f} s, max {max(idle):.3f} s")
        print(f"idle CPU of cdc run: {idle_cpu * 100:.2f} % of a core")
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        mariadb.remove()
        postgres.remove()


if __name__ == "__main__":
    main()
