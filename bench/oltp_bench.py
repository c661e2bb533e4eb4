"""Many small transactions from several sessions: `cdc run` as a service beside native replication.

Run: python bench/oltp_bench.py [--seconds 30] [--only pg|mysql] [--modes native,logical,trigger,binlog]
                                [--kill N] [--scale 5] [--bulk-rows N] [--profile DIR] [--detect on|off|both]
Starts throw-away servers (tests/pgserver.py, tests/mysqlserver.py) and prints one table.

PostgreSQL -> PostgreSQL: `pgbench -i -s SCALE`, then `ALTER TABLE pgbench_history ADD COLUMN id
bigserial PRIMARY KEY` (as a DBA would), then `pgbench -n -c 4 -j 2 -T SECONDS` (TPC-B-like: 3 UPDATEs
and 1 INSERT per transaction). Each run starts from a fresh pgbench database:
  native   PostgreSQL's logical replication (CREATE PUBLICATION / SUBSCRIPTION, copy_data), the baseline
  logical  `cdc run` (a subprocess, started after `cdc init`, `cdc install` and the snapshot by
           `cdc run --once`), capture: logical
  trigger  the same with capture: trigger
MariaDB -> PostgreSQL: `sysbench oltp_write_only --tables=4 --table-size=10000 prepare`, then
`--threads=4 --time=SECONDS run` (2 UPDATEs, 1 DELETE, 1 INSERT per transaction), with capture:
binlog and capture: trigger. PostgreSQL has no native replication from MariaDB: no baseline there.

Columns:
  load tx/s     the load generator's own figure
  changes       row changes applied (cdc: audit rows; native: 4 per pgbench_history row)
  changes/s     changes applied while the load ran, per second of the load
  lag audit     p50/p99 seconds from source commit to applied, over the changes committed during
                the load, from cdc_audit_log: committed_at (logical: the commit time pgoutput sends;
                PostgreSQL trigger: clock_timestamp() in the trigger; MariaDB trigger: the trigger's
                NOW(6); binlog: the event header's timestamp, WHOLE SECONDS, so up to 1 s too much)
                to applied_at (the cdc process's clock when it wrote the part, just before the
                target COMMIT, so it misses the COMMIT's own time: milliseconds)
  lag stamp     p50/p99 seconds measured in the target rows themselves, the same for every run:
                the target table has an extra column replicated_at DEFAULT clock_timestamp().
                pgbench: replicated_at - pgbench_history.mtime (pgbench's CURRENT_TIMESTAMP, the
                transaction's start); sysbench: a marker row inserted every 0.1 s during the load
                into bench_marker (sent_at = UTC_TIMESTAMP(6)), replicated_at - sent_at
  catch-up s    seconds from the load's end until the target equals the source (polled every
                0.1 s: pgbench: count/max of history, sums of the balances; sysbench: per table
                count, sum(id), sum(k), and an end marker row written after the load). For a bulk
                row: seconds from the UPDATE's COMMIT until the target has it
  CPU s/10k     CPU seconds (user+system) of the cdc process(es) from the load's start to caught
                up, per 10,000 changes; native: its walsender + apply worker
  RSS MiB       peak RSS (VmHWM) of the cdc process (the highest over restarts); native: n/a
  check         after each run: every replicated table equal row by row (ORDER BY key), and for
                cdc no source position with two audit rows and (pgbench) exactly 4 audit rows per
                pgbench transaction plus one per bulk-updated row. A failure stops the bench.
With --kill N the cdc process is SIGKILLed N times (spread evenly over the load, each once the running
process has applied a change since its start, so on a slow machine a late one falls into the catch-up)
and restarted at once; the kills' checkpoint positions are printed under the table.
With --detect off the pairs say `detect_conflicts: false` (no target row is read or compared before a
write; the conflict policy is source_wins, the default, either way); --detect both runs every cdc run
twice, detection on and then off, on fresh databases, and prints under the table what detection costs:
its changes/s, bulk rows/s and CPU per change as a share of the same run without it (issue 13 asks
>= 80%).
With --profile DIR py-spy records each cdc process for 10 s during the load (pip install py-spy);
the top frames are printed after the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pymysql
import pymysql.cursors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _oltp  # noqa: E402
from _oltp import UTC, Row, Service, pg, progress  # noqa: E402

PG_TABLES = {"pgbench_accounts": "aid", "pgbench_branches": "bid", "pgbench_tellers": "tid", "pgbench_history": "id"}
PG_CHECK = ("SELECT (SELECT count(*) FROM pgbench_history), (SELECT max(id) FROM pgbench_history), "
            "(SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches), "
            "(SELECT sum(abalance) FROM pgbench_accounts)")
STAMP = "ADD COLUMN replicated_at timestamptz DEFAULT clock_timestamp()"


class Bench:
    """Options and the results of one bench run."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.rows: list[Row] = []
        self.profiles: list[tuple[str, Path]] = []
        self.failed = False
        self.detect = True  # this run's detect_conflicts

    def named(self, name: str) -> str:
        """A run's name, with its detection when the bench compares both."""
        if self.args.detect != "both":
            return name
        return f"{name} (detect {'on' if self.detect else 'off'})"

    def detections(self) -> list[bool]:
        """detect_conflicts of each cdc run: on first, so that a warmer cache favours detection off."""
        return {"on": [True], "off": [False], "both": [True, False]}[self.args.detect]

    def database(self, name: str) -> str:
        return name if self.detect else f"{name}_off"

    def config(self, name: str, source: str, target: str, capture: str, tables: list[str], stamped: str,
               stamped_columns: list[str]) -> Path:
        """A pair of ``tables`` with default settings; ``stamped`` lists its source columns, so that
        the target's extra replicated_at column is ours, not a column the source lost."""
        mapping = self.work / f"{name}_mapping.yaml"
        mapping.write_text("tables:\n" + "".join(f"  {t}: {{}}\n" for t in tables if t != stamped)
                           + f"  {stamped}:\n    columns: {{{', '.join(f'{c}: {c}' for c in stamped_columns)}}}\n")
        path = self.work / f"{name}.yaml"
        path.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  bench:\n    source: src\n"
                        f"    target: dst\n    capture: {capture}\n    mapping: {mapping.name}\n"
                        + ("" if self.detect else "    detect_conflicts: false\n"))
        return path

    def cdc(self, *args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "cdc", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"cdc {' '.join(args)} failed ({done.returncode}): {done.stderr[-3000:]}")

    def prepare_pair(self, config: Path) -> None:
        for command in ("init", "install"):
            self.cdc(command, str(config))
        start = time.monotonic()
        self.cdc("run", "--once", str(config))
        progress(f"  cdc init, install and snapshot (cdc run --once) done, snapshot {time.monotonic() - start:.1f} s")

    def under_load(self, name: str, service: Service | None, load, target: str | None = None
                   ) -> tuple[float, tuple[dt.datetime, dt.datetime], float]:
        """Run ``load()`` (returns tx/s) with kills and a profile; (tx/s, wall window, monotonic end).
        The kills may go on after the load: ``joined_kills()`` waits for them."""
        def applied() -> int:
            return pg(target, "SELECT coalesce(max(changes_applied), 0) FROM cdc_checkpoints")[0][0]

        seconds, start, wall = self.args.seconds, time.monotonic(), dt.datetime.now(UTC)
        spies: list = []
        self.killer = None
        if service is not None and self.args.kill:
            self.killer = _oltp.kill_during(service, self.args.kill, start, seconds, applied)
        if service is not None and self.args.profile:
            output = Path(self.args.profile) / f"{name}.txt"
            self.profiles.append((name, output))
            spy = threading.Timer(min(3.0, seconds / 4), lambda: spies.append(_oltp.profile(
                service.process.pid, max(2, min(10, int(seconds) - 5)), output)))
            spy.start()
        tps = load()
        end, wall_end = time.monotonic(), dt.datetime.now(UTC)
        for spy in filter(None, spies):
            spy.wait()
        progress(f"  load done: {tps:,.0f} tx/s")
        return tps, (wall, wall_end), end

    def joined_kills(self) -> None:
        if getattr(self, "killer", None) is not None:
            self.killer.join()
            self.killer = None


# --- PostgreSQL -> PostgreSQL -------------------------------------------------------------------------

def pgbench(cluster, database: str, *args: str) -> str:
    done = subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", *args, database],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pgbench {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout + done.stderr


def pgbench_load(cluster, database: str, seconds: float) -> float:
    # -n: no VACUUM and no TRUNCATE of pgbench_history first (the run's set-up, not its load; cdc
    # refuses to replicate a TRUNCATE, native replication would replay it)
    out = pgbench(cluster, database, "-n", "-c", "4", "-j", "2", "-T", str(int(seconds)))
    return float(re.search(r"tps = ([\d.]+)", out).group(1))


def fresh_pgbench(cluster, database: str, scale: int) -> str:
    """A new database with pgbench's tables at ``scale`` and a primary key on pgbench_history."""
    pg(cluster.url(), f"DROP DATABASE IF EXISTS {database}")
    pg(cluster.url(), f"CREATE DATABASE {database}")
    pgbench(cluster, database, "-i", "-q", "-s", str(scale))
    pg(cluster.url(database), "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY")
    return cluster.url(database)


def columns(url: str, table: str) -> list[str]:
    return [c for (c,) in pg(url, "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                                  "ORDER BY ordinal_position", (table,))]


def stamp_lag(target: str, table: str, stamp: str, source_zone: str, window) -> tuple[float, float] | None:
    """p50/p99 of replicated_at - the row's own source time stamp, over rows stamped during the load."""
    kind = pg(target, "SELECT data_type FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
              (table, stamp))[0][0]
    moment = f"({stamp} AT TIME ZONE '{source_zone}')" if kind == "timestamp without time zone" else stamp
    return _oltp.percentiles(target, f"extract(epoch FROM replicated_at - {moment})",
                             f"FROM {table} WHERE {moment} BETWEEN %s AND %s", window)


def same_pg_tables(source: str, target: str) -> int:
    rows = 0
    for table, key in PG_TABLES.items():
        names = columns(source, table)
        rows += _oltp.same_rows(_oltp.pg_rows(source, table, names, key), _oltp.pg_rows(target, table, names, key),
                                table)
    return rows


def caught_up_pg(target: str, want: list) -> bool:
    if pg(target, "SELECT count(*) FROM pgbench_history")[0][0] != want[0][0]:
        return False
    return pg(target, PG_CHECK) == want


def native_run(bench: Bench, source_cluster, target_cluster) -> Row:
    progress("PostgreSQL native logical replication: pgbench -i")
    source = fresh_pgbench(source_cluster, "native", bench.args.scale)
    pg(target_cluster.url(), "DROP DATABASE IF EXISTS native")
    pg(target_cluster.url(), "CREATE DATABASE native")
    pgbench(target_cluster, "native", "-i", "-q", "-I", "dtp")  # the tables and their keys, no rows
    target = target_cluster.url("native")
    pg(target, "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY")
    pg(target, f"ALTER TABLE pgbench_history {STAMP}")
    pg(source, f"CREATE PUBLICATION bench_native FOR TABLE {', '.join(PG_TABLES)}")
    pg(target, f"CREATE SUBSCRIPTION bench_native CONNECTION 'host=127.0.0.1 port={source_cluster.port} "
               "user=postgres dbname=native' PUBLICATION bench_native WITH (copy_data = true)")
    start = time.monotonic()
    synced = _oltp.wait_until(lambda: pg(target, "SELECT count(*) FILTER (WHERE srsubstate = 'r'), count(*) "
                                                 "FROM pg_subscription_rel")[0] == (4, 4), start, 600)
    if synced is None:
        raise SystemExit("native replication's initial copy did not finish in 600 s")
    progress(f"  initial copy done in {synced:.1f} s; load: pgbench -n -c 4 -j 2 -T {bench.args.seconds}")
    workers = [pg(source, "SELECT pid FROM pg_stat_replication WHERE application_name = 'bench_native'")[0][0],
               pg(target, "SELECT pid FROM pg_stat_subscription WHERE relid IS NULL")[0][0]]
    cpu_start = sum(_oltp.process_usage(pid)[0] for pid in workers)
    tps, window, end = bench.under_load("native", None, lambda: pgbench_load(source_cluster, "native",
                                                                               bench.args.seconds))
    want = pg(source, PG_CHECK)
    catch_up = _oltp.wait_until(lambda: caught_up_pg(target, want), end, bench.args.catch_up_timeout)
    cpu = sum(_oltp.process_usage(pid)[0] for pid in workers) - cpu_start
    changes = 4 * pg(target, "SELECT count(*) FROM pgbench_history")[0][0]
    during = 4 * pg(target, "SELECT count(*) FROM pgbench_history WHERE replicated_at BETWEEN %s AND %s", window)[0][0]
    zone = pg(source, "SHOW TimeZone")[0][0]
    row = Row("native logical replication", tps, changes, during / bench.args.seconds, None,
              stamp_lag(target, "pgbench_history", "mtime", zone, window), catch_up,
              cpu / changes * 10000 if changes else None, None, None)
    if catch_up is not None:
        row.check = f"equal ({same_pg_tables(source, target):,} rows)"
    else:
        row.check, bench.failed = "NOT CAUGHT UP, not checked", True
    pg(target, "DROP SUBSCRIPTION bench_native")
    pg(source_cluster.url(), "DROP DATABASE native")
    return row


def cdc_pg_run(bench: Bench, source_cluster, target_cluster, capture: str) -> list[Row]:
    database = bench.database(f"cdc_{capture}")
    progress(f"PostgreSQL {bench.named(f'cdc run, capture: {capture}')}: pgbench -i")
    source = fresh_pgbench(source_cluster, database, bench.args.scale)
    pg(target_cluster.url(), f"DROP DATABASE IF EXISTS {database}")
    pg(target_cluster.url(), f"CREATE DATABASE {database}")
    target = target_cluster.url(database)
    config = bench.config(database, source, target, capture, list(PG_TABLES), "pgbench_history",
                          columns(source, "pgbench_history"))
    bench.prepare_pair(config)
    pg(target, f"ALTER TABLE pgbench_history {STAMP}")
    service = Service(config, bench.work / f"{database}.log")
    time.sleep(3)  # its start-up (imports, claim) is not the load's
    progress(f"  cdc run started (pid {service.process.pid}); load: pgbench -n -c 4 -j 2 -T {bench.args.seconds}")
    cpu_start = service.usage()[0]
    tps, window, end = bench.under_load(f"pg_{capture}", service,
                                        lambda: pgbench_load(source_cluster, database, bench.args.seconds), target)
    want = pg(source, PG_CHECK)
    catch_up = _oltp.wait_until(lambda: caught_up_pg(target, want), end, bench.args.catch_up_timeout)
    bench.joined_kills()
    cpu, rss = service.usage()
    lag, during = _oltp.audit_lag(target, window)
    changes = pg(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'")[0][0]
    zone = pg(source, "SHOW TimeZone")[0][0]
    row = Row(bench.named(f"cdc {capture}"), tps, changes, during / bench.args.seconds, lag,
              stamp_lag(target, "pgbench_history", "mtime", zone, window), catch_up,
              (cpu - cpu_start) / changes * 10000 if changes else None, rss, service.kills)
    rows = [row]
    if service.kill_points:
        row.notes.append(f"SIGKILLed at {', '.join(f'{n:,}' for n in service.kill_points)} changes applied")
    progress(f"  caught up after {catch_up} s; changes {changes:,}")
    bulk = idle = 0
    if catch_up is not None:
        bulk = min(bench.args.bulk_rows or 10 ** 12, bench.args.scale * 100_000)
        rows.append(pg_bulk(bench, source, target, service, capture, bulk))
        idle = 10
        progress("  idle pair: single small transactions")
        row.notes.append(_oltp.idle_latency(
            service, lambda i: pg(source, "UPDATE pgbench_branches SET filler = %s WHERE bid = 1", (f"idle {i}",)),
            lambda i: (pg(target, "SELECT filler FROM pgbench_branches WHERE bid = 1")[0][0] or "").rstrip() == f"idle {i}", idle))
    service.stop()
    if catch_up is None:
        row.check, bench.failed = "NOT CAUGHT UP, not checked", True
    else:
        history = pg(source, "SELECT count(*) FROM pgbench_history")[0][0]
        # A transaction of delta 0 changes no column of its three updates: a capture with whole before
        # images sees that, and cdc skips them (README, Decisions, item 2): its insert alone is audited.
        still = pg(source, "SELECT count(*) FROM pgbench_history WHERE delta = 0")[0][0] if capture == "trigger" else 0
        audit = _oltp.audit_exactly_once(target, 4 * history - 3 * still + bulk + idle,
                                         tally({4: history - still, 1: idle + still, bulk: 1}))
        row.check = f"equal ({same_pg_tables(source, target):,} rows), {audit}"
    bench.cdc("uninstall", str(config))
    pg(source_cluster.url(), f"DROP DATABASE {database}")
    return rows


def tally(counts: dict[int, int]) -> dict[int, int]:
    """{changes per transaction: transactions} without the sizes no transaction has; equal sizes summed."""
    found: dict[int, int] = {}
    for size, count in counts.items():
        if count:
            found[size] = found.get(size, 0) + count
    return found


def pg_bulk(bench: Bench, source: str, target: str, service: Service, capture: str, rows: int) -> Row:
    progress(f"  bulk: one UPDATE of {rows:,} pgbench_accounts rows")
    cpu_start = service.usage()[0]
    pg(source, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= %s", (rows,))
    return bulk_row(bench, service, capture, rows, cpu_start, lambda: pg(source, PG_CHECK), lambda: pg(target, PG_CHECK))


def bulk_row(bench: Bench, service: Service, capture: str, rows: int, cpu_start: float, source_check, target_check
             ) -> Row:
    """The bulk UPDATE just committed: seconds until ``target_check()`` equals ``source_check()``, as a row."""
    start = time.monotonic()
    want = source_check()
    seconds = _oltp.wait_until(lambda: target_check() == want, start, bench.args.catch_up_timeout)
    cpu, rss = service.usage()
    if seconds is None:
        bench.failed = True
    progress(f"  bulk applied in {seconds} s")
    return Row(bench.named(f"bulk UPDATE {rows:,} rows, cdc {capture}"), None, rows, rows / seconds if seconds else None,
               catch_up=seconds, cpu_per_10k=(cpu - cpu_start) / rows * 10000, rss_mib=rss,
               check="" if seconds else f"NOT APPLIED in {bench.args.catch_up_timeout:.0f} s")


def postgres_section(bench: Bench, modes: list[str]) -> None:
    from pgserver import LocalCluster

    clusters = [LocalCluster({"max_wal_size": "4GB"}), LocalCluster({"max_wal_size": "4GB"})]
    try:
        for mode in modes:
            if mode == "native":
                bench.rows.append(native_run(bench, *clusters))
            else:
                for detect in bench.detections():
                    bench.detect = detect
                    bench.rows.extend(cdc_pg_run(bench, *clusters, mode))
    finally:
        for cluster in clusters:
            cluster.remove()


# --- MariaDB -> PostgreSQL ----------------------------------------------------------------------------

SB_TABLES = 4
MARKER = ("CREATE TABLE bench_marker (id INT AUTO_INCREMENT PRIMARY KEY, sent_at DATETIME(6) NOT NULL, "
          "note VARCHAR(10) NOT NULL DEFAULT 'load')")


def my(port: int, database: str, statement: str, params=None) -> list:
    with pymysql.connect(host="127.0.0.1", port=port, user="root", database=database, autocommit=True) as conn, \
            conn.cursor() as cursor:
        cursor.execute(statement, params)
        return list(cursor.fetchall())


def my_rows(port: int, database: str, table: str, names: list[str], key: str):
    with pymysql.connect(host="127.0.0.1", port=port, user="root", database=database,
                         cursorclass=pymysql.cursors.SSCursor) as conn, conn.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(names)} FROM {table} ORDER BY {key}")
        yield from cursor


def sysbench(port: int, database: str, size: int, *args: str) -> str:
    done = subprocess.run(["sysbench", "oltp_write_only", "--mysql-host=127.0.0.1", f"--mysql-port={port}",
                           "--mysql-user=root", f"--mysql-db={database}", f"--tables={SB_TABLES}",
                           f"--table-size={size}", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sysbench {' '.join(args)} failed: {(done.stderr or done.stdout)[-2000:]}")
    return done.stdout


def my_check_sql(tables: list[str]) -> str:
    parts = [f"(SELECT count(*) FROM {t}), (SELECT sum(id) FROM {t}), (SELECT sum(k) FROM {t})" for t in tables]
    return "SELECT " + ", ".join(parts) + ", (SELECT count(*) FROM bench_marker), (SELECT max(id) FROM bench_marker)"


def sysbench_load(bench: Bench, port: int, database: str, stop: threading.Event, counted: list) -> float:
    """sysbench for --seconds, with a marker row every 0.1 s beside it; tx/s, and the transactions
    appended to ``counted``."""
    def markers() -> None:
        with pymysql.connect(host="127.0.0.1", port=port, user="root", database=database, autocommit=True) as conn:
            while not stop.wait(0.1):
                conn.cursor().execute("INSERT INTO bench_marker (sent_at) VALUES (UTC_TIMESTAMP(6))")
    thread = threading.Thread(target=markers, daemon=True)
    thread.start()
    try:
        out = sysbench(port, database, bench.args.table_size, "--threads=4", f"--time={int(bench.args.seconds)}",
                       "run")
    finally:
        stop.set()
        thread.join()
    found = re.search(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec", out)
    counted.append(int(found.group(1)))
    return float(found.group(2))


def cdc_mysql_run(bench: Bench, mariadb, target_cluster, capture: str) -> list[Row]:
    database = bench.database(f"sb_{capture}")
    size = bench.args.table_size
    progress(f"MariaDB {bench.named(f'cdc run, capture: {capture}')}: sysbench prepare")
    my(mariadb.port, "", f"DROP DATABASE IF EXISTS {database}")
    my(mariadb.port, "", f"CREATE DATABASE {database}")
    sysbench(mariadb.port, database, size, "prepare")
    my(mariadb.port, database, MARKER)
    tables = [f"sbtest{i}" for i in range(1, SB_TABLES + 1)]
    pg(target_cluster.url(), f"DROP DATABASE IF EXISTS {database}")
    pg(target_cluster.url(), f"CREATE DATABASE {database}")
    target = target_cluster.url(database)
    config = bench.config(database, mariadb.url(database), target, capture, [*tables, "bench_marker"],
                          "bench_marker", ["id", "sent_at", "note"])
    bench.prepare_pair(config)
    pg(target, f"ALTER TABLE bench_marker {STAMP}")
    service = Service(config, bench.work / f"{database}.log")
    time.sleep(3)
    progress(f"  cdc run started (pid {service.process.pid}); load: sysbench oltp_write_only --threads=4 "
             f"--time={bench.args.seconds}")
    cpu_start = service.usage()[0]
    stop, counted = threading.Event(), []
    tps, window, end = bench.under_load(f"mysql_{capture}", service,
                                        lambda: sysbench_load(bench, mariadb.port, database, stop, counted), target)
    transactions = counted[0]
    my(mariadb.port, database, "INSERT INTO bench_marker (sent_at, note) VALUES (UTC_TIMESTAMP(6), 'end')")
    check = my_check_sql(tables)
    want = [tuple(int(v) for v in my(mariadb.port, database, check)[0])]
    catch_up = _oltp.wait_until(lambda: pg(target, check) == want, end, bench.args.catch_up_timeout)
    bench.joined_kills()
    cpu, rss = service.usage()
    lag, during = _oltp.audit_lag(target, window)
    changes = pg(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'")[0][0]
    row = Row(bench.named(f"cdc {capture}"), tps, changes, during / bench.args.seconds, lag,
              stamp_lag(target, "bench_marker", "sent_at", "UTC", window), catch_up,
              (cpu - cpu_start) / changes * 10000 if changes else None, rss, service.kills)
    progress(f"  caught up after {catch_up} s; changes {changes:,}")
    rows = [row]
    if service.kill_points:
        row.notes.append(f"SIGKILLed at {', '.join(f'{n:,}' for n in service.kill_points)} changes applied")
    idle = 0
    if catch_up is not None:
        rows.append(mysql_bulk(bench, mariadb.port, database, target, service, capture, tables, check))
        idle = 10
        progress("  idle pair: single small transactions")
        row.notes.append(_oltp.idle_latency(
            service, lambda i: my(mariadb.port, database, "INSERT INTO bench_marker (sent_at, note) VALUES "
                                                          "(UTC_TIMESTAMP(6), %s)", (f"idle {i}",)),
            lambda i: bool(pg(target, "SELECT 1 FROM bench_marker WHERE note = %s", (f"idle {i}",))), idle))
    service.stop()
    if catch_up is None:
        row.check, bench.failed = "NOT CAUGHT UP, not checked", True
    else:
        compared = sum(_oltp.same_rows(my_rows(mariadb.port, database, t, names, "id"),
                                       _oltp.pg_rows(target, t, names, "id"), t)
                       for t in [*tables, "bench_marker"]
                       for names in [[c for (c,) in my(mariadb.port, database,
                                                       "SELECT column_name FROM information_schema.columns WHERE "
                                                       "table_schema = %s AND table_name = %s ORDER BY "
                                                       "ordinal_position", (database, t))]])
        markers = my(mariadb.port, database, "SELECT count(*) FROM bench_marker")[0][0]  # idle ones included
        bulk = len(tables) * size
        # each sysbench oltp_write_only transaction: an UPDATE of k, an UPDATE of c, a DELETE and an INSERT;
        # binlog capture's source_txid is the transaction's GTID, trigger capture's the epoch (many transactions)
        row.check = f"equal ({compared:,} rows), " + _oltp.audit_exactly_once(
            target, 4 * transactions + markers + bulk,
            tally({4: transactions, 1: markers, bulk: 1}) if capture == "binlog" else None)
    bench.cdc("uninstall", str(config))
    my(mariadb.port, "", f"DROP DATABASE {database}")
    return rows


def mysql_bulk(bench: Bench, port: int, database: str, target: str, service: Service, capture: str,
               tables: list[str], check: str) -> Row:
    rows = len(tables) * bench.args.table_size
    progress(f"  bulk: one transaction updating every row of {', '.join(tables)}")
    cpu_start = service.usage()[0]
    with pymysql.connect(host="127.0.0.1", port=port, user="root", database=database) as conn, \
            conn.cursor() as cursor:
        for table in tables:
            cursor.execute(f"UPDATE {table} SET k = k + 1")
        conn.commit()
    return bulk_row(bench, service, capture, rows, cpu_start,
                    lambda: [tuple(int(v) for v in my(port, database, check)[0])], lambda: pg(target, check))


def mysql_section(bench: Bench, modes: list[str]) -> None:
    if shutil.which("sysbench") is None:
        print("sysbench is missing: install it: apt-get install sysbench (MariaDB section skipped)")
        return
    from mysqlserver import LocalMariaDB
    from pgserver import LocalCluster

    mariadb, cluster = LocalMariaDB(), LocalCluster({"max_wal_size": "4GB"})
    try:
        for mode in modes:
            for detect in bench.detections():
                bench.detect = detect
                bench.rows.extend(cdc_mysql_run(bench, mariadb, cluster, mode))
    finally:
        mariadb.remove()
        cluster.remove()


def detection_cost(rows: list[Row]) -> list[str]:
    """Per run measured with detection on and off: on's throughput as a share of off's (changes/s of the
    load, rows/s of the bulk UPDATE) and off's CPU per change as a share of on's (issue 13: >= 80%)."""
    lines = ["conflict detection on vs off (source_wins; >= 80% required):"]
    named = {r.run: r for r in rows}
    for on in [r for r in rows if r.run.endswith("(detect on)")]:
        off = named.get(on.run.replace("(detect on)", "(detect off)"))
        if off is None or not on.rate or not off.rate:
            continue
        cpu = f", CPU per change {off.cpu_per_10k / on.cpu_per_10k:.0%}" if on.cpu_per_10k and off.cpu_per_10k else ""
        what = "rows/s" if on.run.startswith("bulk") else "changes/s"
        # pgbench's tables keep REPLICA IDENTITY DEFAULT: logical capture sends no before image, so
        # conflicts are found by row hashes; trigger and binlog capture send whole before images.
        how = " (row hashes)" if on.run.removesuffix(" (detect on)").endswith("logical") else " (before images)"
        lines.append(f"  {on.run.removesuffix(' (detect on)')}{how}: {what} {on.rate:,.0f} vs {off.rate:,.0f} = "
                     f"{on.rate / off.rate:.0%}{cpu}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="load duration of each run (default 30)")
    parser.add_argument("--only", choices=("pg", "mysql"), help="only the PostgreSQL or the MariaDB source")
    parser.add_argument("--modes", default="native,logical,trigger,binlog",
                        help="runs, comma-separated: native, logical, trigger (both sources), binlog")
    parser.add_argument("--kill", type=int, default=0, help="SIGKILL and restart cdc run N times during each load")
    parser.add_argument("--scale", type=int, default=2, help="pgbench scale (100,000 accounts each; default 2)")
    parser.add_argument("--bulk-rows", type=int, help="rows of the bulk UPDATE (default: every pgbench account)")
    parser.add_argument("--table-size", type=int, default=10000, help="sysbench rows per table (default 10000)")
    parser.add_argument("--catch-up-timeout", type=float, default=300,
                        help="seconds to wait for the target to catch up after a load (default 300)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy record each cdc process for 10 s during the load")
    parser.add_argument("--detect", choices=("on", "off", "both"), default="on",
                        help="conflict detection (detect_conflicts) of the cdc runs; both: each run twice, side by "
                             "side, and what detection costs (default on)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"native", "logical", "trigger", "binlog"}
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cdc-oltp-"))
    progress(f"configs and cdc run logs in {work}")
    bench = Bench(args, work)
    try:
        if args.only in (None, "pg"):
            postgres_section(bench, [m for m in ("native", "logical", "trigger") if m in modes])
        if args.only in (None, "mysql"):
            mysql_section(bench, [m for m in ("binlog", "trigger") if m in modes])
    finally:
        title = (f"Small transactions from several sessions, {args.seconds:.0f} s of load per run, "
                 f"--kill {args.kill} (pgbench -s {args.scale} -c 4 -j 2 TPC-B-like; sysbench oltp_write_only "
                 f"--threads=4 --tables={SB_TABLES} --table-size={args.table_size}; MariaDB has no native "
                 "baseline)")
        _oltp.print_table(title, bench.rows, args.catch_up_timeout)
        if args.detect == "both":
            print("\n".join(detection_cost(bench.rows)))
        for name, path in bench.profiles:
            print(f"\npy-spy profile of cdc run, {name} ({path}):")
            print("\n".join(_oltp.summarize_profile(path)))
    sys.exit(1 if bench.failed else 0)


if __name__ == "__main__":
    main()
