"""Trigger capture under many small transactions: changes/s applied next to the writers' own rate.

Run: python bench/trigger_bench.py [--seconds 15] [--cases sqlite,postgres,mariadb]
For SQLite -> SQLite, PostgreSQL -> PostgreSQL and MariaDB -> PostgreSQL (throw-away servers from
tests/pgserver.py and tests/mysqlserver.py), 4 writer sessions commit small transactions (2-4 row
changes: UPDATE accounts, UPDATE orders, INSERT order_lines, every other one DELETE order_lines) for
``--seconds`` while `python -m cdc run CONFIG` (capture: trigger, default settings) runs:

  live     - changes/s applied during the load, lag behind at its end, catch-up time after it;
  backlog  - the same load written while the streaming `cdc run` is paused (SIGSTOP), then resumed:
             changes/s it drains (what the pair can apply, whatever the writers manage);
  idle     - a single small transaction on the idle pair: seconds until the target has it (p50 of
             5), and CPU seconds of the idle cdc process per minute.

Baseline in the same run: the writers' own rate at the source (changes/s committed, capture
triggers included). CPU is the cdc process's user+system time per 10,000 changes applied.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

WRITERS = 4
ROWS = 5000  # rows in accounts and in orders
TICK = os.sysconf("SC_CLK_TCK")
STARTED: list[subprocess.Popen] = []  # cdc processes, killed if the bench fails
PROFILE = os.environ.get("CDC_BENCH_PROFILE")  # a path prefix: py-spy records each cdc run into it

SCHEMA = [
    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance NUMERIC(14,2) NOT NULL, name VARCHAR(60) NOT NULL)",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, status VARCHAR(20) NOT NULL, total NUMERIC(14,2) NOT NULL, "
    "updated_at TIMESTAMP NOT NULL)",
    "CREATE TABLE order_lines (id BIGINT PRIMARY KEY, order_id INTEGER NOT NULL, amount NUMERIC(14,2) NOT NULL, "
    "memo VARCHAR(100))",
]
TABLES = ("accounts", "orders", "order_lines")


class Case:
    """A source/target pair of databases and how writers talk to the source."""

    name = ""
    placeholder = "%s"

    def connect(self): ...
    def target_scalar(self, statement: str): ...
    def source_url(self) -> str: ...
    def target_url(self) -> str: ...
    def close(self) -> None: ...

    def setup(self) -> None:
        conn = self.connect()
        cursor = conn.cursor()
        for statement in SCHEMA:
            cursor.execute(statement)
        p = self.placeholder
        cursor.executemany(f"INSERT INTO accounts VALUES ({p}, {p}, {p})",
                           [(i, "100.00", f"Konto {i} æøå") for i in range(1, ROWS + 1)])
        cursor.executemany(f"INSERT INTO orders VALUES ({p}, {p}, {p}, {p})",
                           [(i, "open", "0.00", "2026-01-01 00:00:00") for i in range(1, ROWS + 1)])
        conn.commit()
        conn.close()

    def source_scalar(self, statement: str):
        conn = self.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(statement)
            return cursor.fetchone()[0]
        finally:
            conn.close()


class SqliteCase(Case):
    name = "SQLite -> SQLite"
    placeholder = "?"

    def __init__(self, root: Path):
        self.root = root
        conn = sqlite3.connect(root / "source.db")
        conn.execute("PRAGMA journal_mode = WAL")  # as a busy SQLite application runs
        conn.close()

    def connect(self):
        conn = sqlite3.connect(self.root / "source.db", timeout=30)
        return conn

    def target_scalar(self, statement: str):
        while True:  # a large apply transaction keeps readers out of a rollback-journal database
            conn = sqlite3.connect(self.root / "target.db", timeout=30)
            try:
                return conn.execute(statement).fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
            finally:
                conn.close()

    def source_url(self) -> str:
        return f"sqlite:///{self.root / 'source.db'}"

    def target_url(self) -> str:
        return f"sqlite:///{self.root / 'target.db'}"


class PostgresCase(Case):
    name = "PostgreSQL -> PostgreSQL"

    def __init__(self, root: Path):
        from pgserver import LocalCluster
        self.source, self.target = LocalCluster(), LocalCluster()

    def connect(self):
        import psycopg
        return psycopg.connect(self.source.url())

    def target_scalar(self, statement: str):
        import psycopg
        with psycopg.connect(self.target.url(), autocommit=True) as conn:
            return conn.execute(statement).fetchone()[0]

    def source_url(self) -> str:
        return self.source.url()

    def target_url(self) -> str:
        return self.target.url()

    def close(self) -> None:
        self.source.remove()
        self.target.remove()


class MariadbCase(PostgresCase):
    name = "MariaDB -> PostgreSQL"

    def __init__(self, root: Path):
        from mysqlserver import LocalMariaDB
        from pgserver import LocalCluster
        self.source, self.target = LocalMariaDB(), LocalCluster()
        conn = self._connect(None)
        conn.cursor().execute("CREATE DATABASE bench")
        conn.close()

    def _connect(self, database):
        import pymysql
        return pymysql.connect(host="127.0.0.1", port=self.source.port, user="root", database=database)

    def connect(self):
        return self._connect("bench")

    def source_url(self) -> str:
        return self.source.url("bench")


class Load:
    """WRITERS threads committing small transactions until stopped; counts the row changes."""

    def __init__(self, case: Case, first_line: int):
        self.case, self.stop, self.changes, self.transactions = case, threading.Event(), 0, 0
        self.next_line, self.lock = first_line, threading.Lock()
        self.threads = [threading.Thread(target=self._write, args=(n,), daemon=True) for n in range(WRITERS)]

    def run(self, seconds: float) -> float:
        start = time.perf_counter()
        for thread in self.threads:
            thread.start()
        time.sleep(seconds)
        self.stop.set()
        for thread in self.threads:
            thread.join()
        return time.perf_counter() - start

    def _line(self) -> int:
        with self.lock:
            self.next_line += 1
            return self.next_line

    def _write(self, number: int) -> None:
        rng, p = random.Random(number), self.case.placeholder
        conn = self.case.connect()
        cursor = conn.cursor()
        mine: list[int] = []
        while not self.stop.is_set():
            statements = [(f"UPDATE accounts SET balance = balance + {p} WHERE id = {p}",
                           # whole kroner: SQLite keeps NUMERIC as REAL, and sums of cents would drift
                           # (the pair then refuses a balance like 89.5599999999999 rather than round it)
                           (rng.randint(-99, 99), rng.randint(1, ROWS))),
                          (f"INSERT INTO order_lines VALUES ({p}, {p}, {p}, {p})",
                           (self._line(), rng.randint(1, ROWS), rng.randint(1, 99999) / 100, "linje æøå"))]
            if rng.random() < 0.5:
                statements.append((f"UPDATE orders SET status = {p}, total = total + 1 WHERE id = {p}",
                                   (rng.choice(["open", "paid", "sent"]), rng.randint(1, ROWS))))
            if mine and rng.random() < 0.5:
                statements.append((f"DELETE FROM order_lines WHERE id = {p}", (mine.pop(0),)))
            try:
                count = 0
                for statement, params in statements:
                    cursor.execute(statement, params)
                    count += cursor.rowcount
                conn.commit()
            except Exception as exc:  # a deadlock or busy source: the transaction is lost, try another
                conn.rollback()
                print(f"  writer {number}: {str(exc).splitlines()[0]}", file=sys.stderr)
                continue
            mine.append(statements[1][1][0])
            with self.lock:
                self.changes += count
                self.transactions += 1
        conn.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cdc(config: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "cdc", *args, str(config)], check=True, capture_output=True)


def start_cdc(config: Path, log: Path, profile: str | None = None) -> subprocess.Popen:
    """`cdc run CONFIG`; ``profile``: py-spy records it (raw, folded stacks) into that file."""
    process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(config)], stdout=log.open("ab"),
                               stderr=subprocess.STDOUT)
    STARTED.append(process)
    if profile:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))  # pip install py-spy
        subprocess.Popen([spy, "record", "-r", "50", "-f", "raw", "-o", profile, "--pid", str(process.pid)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process


def stop_cdc(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)


class Watch:
    """The target's count of applied changes (the checkpoint's changes_applied)."""

    def __init__(self, case: Case):
        self.case = case

    def applied(self) -> int:
        return self.case.target_scalar("SELECT coalesce(max(changes_applied), 0) FROM cdc_checkpoints") or 0

    def until(self, count: int, timeout: float = 900) -> float:
        start = time.perf_counter()
        while self.applied() < count:
            _require_running()
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"the target did not catch up ({self.applied()} of {count})")
            time.sleep(0.05)
        return time.perf_counter()


def _require_running() -> None:
    """SystemExit when a `cdc run` the bench started has ended on its own (its log says why)."""
    for process in STARTED:
        if process.poll() not in (None, 0, -signal.SIGTERM):
            raise SystemExit(f"cdc run ended on its own (exit {process.returncode}); see its log "
                             f"(CDC_BENCH_LOG, default cdc.log in the bench's directory)")


def probe(case: Case, watch: Watch) -> float:
    """Seconds from the commit of one small transaction until the target has applied it."""
    have = watch.applied()
    conn = case.connect()
    conn.cursor().execute(f"UPDATE accounts SET name = {case.placeholder} WHERE id = 1", (f"probe {have}",))
    start = time.perf_counter()
    conn.commit()
    conn.close()
    return watch.until(have + 1) - start


def same(case: Case) -> bool:
    checks = ["SELECT count(*) FROM accounts", "SELECT sum(balance) FROM accounts", "SELECT count(*) FROM order_lines",
              "SELECT coalesce(sum(id), 0) FROM order_lines", "SELECT sum(total) FROM orders"]
    return all(str(round(float(case.source_scalar(c)), 2)) == str(round(float(case.target_scalar(c)), 2))
               for c in checks)


def run_case(case: Case, root: Path, seconds: float) -> list[tuple[str, int, float, str]]:
    case.setup()
    config = root / "config.yaml"
    config.write_text(f"connections:\n  src: {case.source_url()}\n  dst: {case.target_url()}\npairs:\n"
                      f"  bench: {{source: src, target: dst, capture: trigger, tables: [{', '.join(TABLES)}]}}\n")
    log = Path(os.environ.get("CDC_BENCH_LOG", root / "cdc.log"))  # what `cdc run` printed
    cdc(config, "init")
    cdc(config, "install")
    cdc(config, "run", "--once")
    watch, rows = Watch(case), []

    # live: cdc runs while the writers write
    process = start_cdc(config, log, PROFILE and f"{PROFILE}-{case.name.split()[0].lower()}-live.txt")
    probe(case, watch)  # started and streaming (a start takes seconds on a busy machine)
    base, cpu0 = watch.applied(), cpu_seconds(process.pid)
    load = Load(case, 10**9)
    took = load.run(seconds)
    end = time.perf_counter()
    applied = watch.applied() - base
    caught = watch.until(base + load.changes)
    cpu = cpu_seconds(process.pid) - cpu0
    rows.append(("writers at the source (baseline)", load.changes, took, f"{load.transactions / took:,.0f} tx/s"))
    rows.append(("cdc live: applied during the load", applied, took,
                 f"catch-up {caught - end:.1f}s after; {cpu * 10000 / load.changes:.2f} CPU s/10k"))

    # idle: one small transaction at a time, and what an idle pair costs
    latencies = []
    for n in range(5):
        time.sleep(1.3)
        latencies.append(probe(case, watch))
    time.sleep(2)
    cpu0 = cpu_seconds(process.pid)
    time.sleep(10)
    idle_cpu = (cpu_seconds(process.pid) - cpu0) * 6
    stop_cdc(process)
    rows.append(("idle: one small transaction, p50", 1, statistics.median(latencies),
                 f"max {max(latencies):.2f}s; idle cdc {idle_cpu:.2f} CPU s/min"))

    # backlog: written while the streaming cdc process is paused (SIGSTOP), then drained (SIGCONT)
    process = start_cdc(config, log, PROFILE and f"{PROFILE}-{case.name.split()[0].lower()}-backlog.txt")
    probe(case, watch)  # started and streaming
    time.sleep(2)  # waiting idle, holding no lock
    base = watch.applied()
    process.send_signal(signal.SIGSTOP)
    load = Load(case, 2 * 10**9)
    load.run(seconds)
    cpu0 = cpu_seconds(process.pid)
    start = time.perf_counter()
    process.send_signal(signal.SIGCONT)
    while watch.applied() == base:
        _require_running()
        time.sleep(0.02)
    first = time.perf_counter()
    caught = watch.until(base + load.changes)
    cpu = cpu_seconds(process.pid) - cpu0
    stop_cdc(process)
    rows.append(("cdc backlog drain (resumed to caught up)", load.changes, caught - start,
                 f"{first - start:.1f}s to its first commit; {cpu * 10000 / load.changes:.2f} CPU s/10k"))
    if not same(case):
        rows.append(("TARGET DIFFERS FROM SOURCE", 0, 1, ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--cases", default="sqlite,postgres,mariadb")
    args = parser.parse_args()
    kinds = {"sqlite": SqliteCase, "postgres": PostgresCase, "mariadb": MariadbCase}
    results = []
    for name in args.cases.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            case = kinds[name](Path(tmp))
            try:
                rows = run_case(case, Path(tmp), args.seconds)
            finally:
                for process in STARTED:
                    if process.poll() is None:
                        process.kill()
                case.close()
        results.append((case.name, rows))
        print_case(case.name, rows)
    print(f"trigger capture, {WRITERS} writers x {args.seconds:g}s of 2-4-change transactions on 3 tables")
    for name, rows in results:
        print_case(name, rows)


def print_case(name: str, rows: list[tuple[str, int, float, str]]) -> None:
    width = max(len(r[0]) for r in rows) + 2
    print(name)
    print(f"  {'measure':<{width}}{'changes':>9}{'seconds':>9}{'changes/s':>11}  note")
    for measure, changes, seconds, note in rows:
        print(f"  {measure:<{width}}{changes:>9,}{seconds:>9.2f}{changes / seconds:>11,.0f}  {note}", flush=True)


if __name__ == "__main__":
    main()
