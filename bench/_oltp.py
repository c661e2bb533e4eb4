"""What bench/oltp_bench.py measures around a load: the `cdc run` service, lag, catch-up, checks, the table."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psycopg

UTC = dt.timezone.utc
_TICK = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pg(url: str, statement: str, params=None) -> list:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def process_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, all threads, its child processes included: a binlog pair's reader
    process) and peak RSS in KiB (VmHWM, the highest of the process and its children) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, and cutime, cstime of children already ended: fields 14-17 of stat
    cpu = sum(int(f) for f in fields[11:15]) / _TICK
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                child_cpu, child_hwm = process_usage(int(child))
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                continue  # ended meanwhile: counted in cutime from now on
            cpu, hwm = cpu + child_cpu, max(hwm, child_hwm)
    return cpu, hwm


class Service:
    """`python -m cdc run CONFIG` as a subprocess: the CPU and peak RSS of every process it was
    (read from /proc just before each kill or stop), SIGKILL and restart, SIGTERM at the end."""

    def __init__(self, config: Path, log: Path):
        self.config, self.log = config, log
        self.cpu_done, self.hwm_kib, self.kills = 0.0, 0, 0
        self.kill_points: list[int] = []  # the checkpoint's changes_applied at each kill
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT)

    def _settle_usage(self) -> None:
        cpu, hwm = process_usage(self.process.pid)
        self.cpu_done, self.hwm_kib = self.cpu_done + cpu, max(self.hwm_kib, hwm)

    def usage(self) -> tuple[float, float]:
        """CPU seconds so far over every process, peak RSS in MiB over every process."""
        if self.process.poll() is not None:
            raise SystemExit(f"cdc run ended on its own (exit {self.process.returncode}); see {self.log}")
        cpu, hwm = process_usage(self.process.pid)
        return self.cpu_done + cpu, max(self.hwm_kib, hwm) / 1024

    def kill_and_restart(self) -> None:
        if self.process.poll() is not None:
            raise SystemExit(f"cdc run ended on its own (exit {self.process.returncode}); see {self.log}")
        self._settle_usage()
        self.process.kill()
        self.process.wait()  # reaped: the pid is gone, so the restarted process may take the pair at once
        self.kills += 1
        self.start()

    def stop(self) -> None:
        if self.process.poll() is not None:
            raise SystemExit(f"cdc run ended on its own (exit {self.process.returncode}); see {self.log}")
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=120)
        if code != 0:
            raise SystemExit(f"cdc run exited {code} on SIGTERM (expected 0); see {self.log}")


def kill_during(service: Service, kills: int, start: float, seconds: float, applied: Callable[[], int]
                ) -> threading.Thread:
    """SIGKILL and restart the service ``kills`` times, spread evenly over the load's ``seconds``. Each
    kill first waits (up to 60 s) until the running process has applied something (``applied()``: the
    checkpoint's changes_applied), so that it lands mid-stream, not while the process is still
    starting; on a slow machine the last kills may so fall after the load, into the catch-up."""
    def run() -> None:
        since = applied()
        for i in range(kills):
            time.sleep(max(0.0, start + seconds * (i + 1) / (kills + 1) - time.monotonic()))
            deadline = time.monotonic() + 60
            while applied() == since and time.monotonic() < deadline:
                time.sleep(0.05)
            since = applied()
            service.kill_and_restart()
            service.kill_points.append(since)
            progress(f"  SIGKILLed cdc run at {since:,} changes applied and restarted it ({i + 1}/{kills})")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def profile(pid: int, seconds: int, output: Path) -> subprocess.Popen | None:
    """py-spy record of the process for ``seconds`` (raw collapsed stacks, waits included: where the
    wall-clock time goes, per thread), when py-spy is installed."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return None
    return subprocess.Popen([str(spy), "record", "--nonblocking", "--idle", "--threads", "-d", str(seconds), "-r", "50",
                             "-f", "raw", "-o", str(output), "--pid", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def idle_latency(service: "Service", write: Callable[[int], None], visible: Callable[[int], bool],
                 count: int = 10) -> str:
    """On the caught-up pair: ``count`` single small transactions ``write(i)``, one every 0.7 s, each
    timed until ``visible(i)`` in the target; then the service's CPU over 10 idle seconds."""
    seconds = []
    for i in range(count):
        start = time.monotonic()
        write(i)
        while not visible(i):
            if time.monotonic() - start > 60:
                break
            time.sleep(0.005)
        seconds.append(time.monotonic() - start)
        time.sleep(0.7)
    cpu = service.usage()[0]
    time.sleep(10)
    idle_cpu = service.usage()[0] - cpu
    seconds.sort()
    return (f"idle pair: one small transaction visible in the target after p50 {seconds[len(seconds) // 2]:.3f} s "
            f"(max {seconds[-1]:.3f} s); CPU while idle {idle_cpu / 10 * 100:.1f} % of a core")


def wait_until(done: Callable[[], bool], since: float, timeout: float) -> float | None:
    """Seconds from ``since`` (time.monotonic) until ``done()`` holds, polled every 0.1 s; None after ``timeout``."""
    while not done():
        if time.monotonic() - since > timeout:
            return None
        time.sleep(0.1)
    return time.monotonic() - since


def percentiles(url: str, seconds_sql: str, where: str, params) -> tuple[float, float] | None:
    """p50 and p99 of a seconds expression over target rows (PostgreSQL)."""
    row = pg(url, f"SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY {seconds_sql}) {where}",
             params)[0][0]
    return (row[0], row[1]) if row else None


def audit_lag(target: str, load: tuple[dt.datetime, dt.datetime]) -> tuple[tuple[float, float] | None, int]:
    """Lag of the changes committed during the load (source commit time -> the cdc process's clock
    when it wrote the change, just before its target COMMIT), and the changes applied during the load."""
    lag = percentiles(target, "extract(epoch FROM applied_at - committed_at)",
                      "FROM cdc_audit_log WHERE op <> 'snapshot' AND committed_at BETWEEN %s AND %s", load)
    applied = pg(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot' AND applied_at BETWEEN %s AND %s",
                 load)[0][0]
    return lag, applied


def audit_exactly_once(target: str, expected: int | None, transactions: dict[int, int] | None = None) -> str:
    """One audit row per change: no change audited twice (a change is its source position, transaction,
    table, key, kind and images: a replayed change repeats all of them, two changes of one row in one
    transaction differ in kind or images), as many as the source made (``expected``), and, where the
    audit's source_txid is the source transaction, ``transactions``: {changes in a transaction: how many
    transactions} exactly."""
    audited, distinct = pg(target, "SELECT count(*), count(DISTINCT (source_position, source_txid, source_table, "
                                   "key, op, before, after)) FROM cdc_audit_log WHERE op <> 'snapshot'")[0]
    if audited != distinct:
        raise SystemExit(f"FAILED: {audited - distinct} source change(s) have more than one audit row")
    if expected is not None and audited != expected:
        raise SystemExit(f"FAILED: {audited:,} audit rows for {expected:,} source changes")
    if transactions is not None:
        found = dict(pg(target, "SELECT n, count(*) FROM (SELECT count(*) AS n FROM cdc_audit_log WHERE op <> "
                                "'snapshot' GROUP BY source_txid) AS t GROUP BY n"))
        if found != transactions:
            raise SystemExit(f"FAILED: source transactions by their number of audit rows {found}, expected "
                             f"{transactions} (a transaction applied in part or twice)")
    return f"{audited:,} audit rows = changes" + (", per transaction" if transactions else "")


def _normal(value):
    if isinstance(value, str):
        return value.rstrip(" ")  # CHAR(n) comes back padded from PostgreSQL, trimmed from MariaDB
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def same_rows(source_rows, target_rows, table: str) -> int:
    """Compare two key-ordered row streams; SystemExit at the first difference. Returns the row count."""
    count = 0
    end = object()
    while True:
        a, b = next(source_rows, end), next(target_rows, end)
        if a is end and b is end:
            return count
        if a is end or b is end or tuple(map(_normal, a)) != tuple(map(_normal, b)):
            raise SystemExit(f"FAILED: table {table} differs at row {count + 1}: source {a if a is not end else '-'}"
                             f" target {b if b is not end else '-'}")
        count += 1


def pg_rows(url: str, table: str, columns: list[str], key: str):
    with psycopg.connect(url) as conn, conn.cursor(name=f"read_{table}") as cursor:
        cursor.itersize = 20000
        cursor.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {key}")
        yield from cursor


@dataclass
class Row:
    """One line of the table."""

    run: str
    tps: float | None = None
    changes: int | None = None
    rate: float | None = None
    lag_audit: tuple[float, float] | None = None
    lag_stamp: tuple[float, float] | None = None
    catch_up: float | None = None
    cpu_per_10k: float | None = None
    rss_mib: float | None = None
    kills: int | None = None
    check: str = ""
    notes: list[str] = field(default_factory=list)


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _lag(pair) -> str:
    return "n/a" if pair is None else f"{pair[0]:.2f}/{pair[1]:.2f}"


def print_table(title: str, rows: list[Row], timeout: float) -> None:
    header = ("run", "load tx/s", "changes", "changes/s", "lag audit p50/p99 s", "lag stamp p50/p99 s",
              "catch-up s", "CPU s/10k", "RSS MiB", "kills", "check")
    lines = [(r.run, _cell(r.tps, ",.0f"), _cell(r.changes, ","), _cell(r.rate, ",.0f"), _lag(r.lag_audit),
              _lag(r.lag_stamp), f"> {timeout:.0f}" if r.catch_up is None and r.changes is not None
              and not r.run.startswith("bulk") else _cell(r.catch_up, ".1f"),
              _cell(r.cpu_per_10k, ".2f"), _cell(r.rss_mib, ",.0f"), _cell(r.kills, "d"), r.check) for r in rows]
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]
    print(title)
    for line in (header, *lines):
        print("  ".join(c.ljust(w) if i in (0, 10) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    for r in rows:
        for note in r.notes:
            print(f"  {r.run}: {note}")


def _function(frame: str) -> str:
    """'read (adapters/postgres/source.py:120)' -> 'read (adapters/postgres/source.py)': one name per function."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/wt-bench/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name


def summarize_profile(path: Path, top: int = 8) -> list[str]:
    """Where each thread's wall-clock time goes: samples by the deepest cdc-sync function on the
    stack and the frame on top (a wait shows as the cdc-sync call that waits)."""
    if not path.exists():
        return ["  (no profile written: the process ended or py-spy failed)"]
    threads: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        thread = frames.pop(0) if frames and frames[0].startswith("thread ") else "all threads"
        names = [_function(f) for f in frames]
        ours = [n for n in names if "cdc/" in n or "adapters/" in n]
        place = f"{ours[-1] if ours else '-'} -> {names[-1] if names else '-'}"
        counts = threads.setdefault(thread, {})
        counts[place] = counts.get(place, 0) + int(count)
    lines = []
    for thread, counts in sorted(threads.items(), key=lambda t: -sum(t[1].values())):
        samples = sum(counts.values())
        lines.append(f"  {thread}: {samples} samples (waits included), by deepest cdc-sync function -> top frame:")
        lines += [f"    {n / samples:6.1%}  {place}" for place, n in sorted(counts.items(), key=lambda i: -i[1])[:top]]
    return lines
