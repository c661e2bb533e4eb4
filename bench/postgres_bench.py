"""PostgreSQL -> PostgreSQL: snapshot and streaming rows/s next to COPY and native logical replication.

Run: python bench/postgres_bench.py [--rows 1000000] [--detect on|off|both] [--repeat N] [--replica-identity-full]
     [--ledger]
Starts two throw-away PostgreSQL servers (tests/pgserver.py) unless CDC_BENCH_SOURCE_URL and
CDC_BENCH_TARGET_URL name two empty databases. Baselines, in the same run on the same servers:
  snapshot  - COPY (SELECT ...) TO STDOUT piped into COPY ... FROM STDIN by psycopg
  streaming - PostgreSQL's own logical replication (CREATE PUBLICATION / CREATE SUBSCRIPTION),
              timed from the source COMMIT of one UPDATE of every row until the target has it
--ledger also streams one more UPDATE of every row into a journal in ledger mode (`mode: ledger`:
each row becomes a reversal and a new entry, 2 journal rows per change) from the same source,
printed beside the streaming apply in upsert mode above it.
--detect off: the pair says `detect_conflicts: false` (no target row read or compared before a write);
--detect both: the cdc pair twice, detection on and then off, each into a fresh target database, and
the streaming throughput with detection as a share of that without (issue 13 asks >= 80%). The
conflict policy is source_wins, the default, in every run. pgoutput sends a whole before image only
with REPLICA IDENTITY FULL (without it detection has nothing to compare an update with: README,
Decisions); --replica-identity-full sets it on the source table for every run, native ones included.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _report import print_table, timed_pair  # noqa: E402

TABLE = ("CREATE TABLE ledger (id BIGINT PRIMARY KEY, account INT NOT NULL, amount NUMERIC(18,2) NOT NULL, "
         "currency CHAR(3) NOT NULL, booked_at TIMESTAMPTZ NOT NULL, memo TEXT)")
FILL = ("INSERT INTO ledger SELECT g, 1000 + g %% 9000, ((g::bigint * 7919) %% 20000000 - 10000000) / 100.0, 'NOK', "
        "timestamptz '2024-01-01' + g * interval '1 second', 'Bilag ' || g || ' æøå' FROM generate_series(1, %s) g")
CHECK = "SELECT count(*), sum(amount), sum(hashtext(memo)) FROM ledger"


def sql(url: str, statement: str, params=None, autocommit: bool = True):
    with psycopg.connect(url, autocommit=autocommit) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def copy_pipe(source: str, target: str) -> float:
    start = time.perf_counter()
    with psycopg.connect(source) as src, psycopg.connect(target) as dst:
        with src.cursor().copy("COPY (SELECT * FROM ledger) TO STDOUT") as out, \
                dst.cursor().copy("COPY ledger FROM STDIN") as into:
            for block in out:
                into.write(block)
    return time.perf_counter() - start


def wait_until(url: str, expected, timeout: float = 900) -> float:
    start = time.perf_counter()
    while sql(url, CHECK) != expected:
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the target did not catch up")
        time.sleep(0.05)
    return time.perf_counter()


def native_replication(source: str, target: str, rows: int) -> float:
    """Seconds from the COMMIT of one UPDATE of every row until the subscriber has it."""
    sql(source, "CREATE PUBLICATION bench_native FOR TABLE ledger")
    sql(target, f"CREATE SUBSCRIPTION bench_native CONNECTION '{source.replace('postgresql+psycopg', 'postgresql')}' "
                "PUBLICATION bench_native WITH (copy_data = false)")
    time.sleep(2)
    sql(source, "UPDATE ledger SET amount = amount + 1, memo = memo || ' n'")
    committed = time.perf_counter()
    expected = sql(source, CHECK)
    seconds = wait_until(target, expected) - committed
    sql(target, "ALTER SUBSCRIPTION bench_native DISABLE")
    sql(target, "ALTER SUBSCRIPTION bench_native SET (slot_name = NONE)")
    sql(target, "DROP SUBSCRIPTION bench_native")
    sql(source, "SELECT pg_drop_replication_slot('bench_native')")
    sql(source, "DROP PUBLICATION bench_native")
    return seconds


LEDGER_MAPPING = """\
tables:
  ledger:
    target: journal
    mode: ledger
    ledger: {amounts: [amount], sequence: entry_no, reverses: reverses, entry_date: booked_at}
"""
JOURNAL_CHECK = "SELECT count(*), sum(amount) FROM journal"


def timed_ledger(source: str, target: str, rows: int) -> float:
    """Seconds of streaming one UPDATE of every row into a journal in ledger mode by `cdc run --once`
    in this process (after its snapshot: one entry per row); checks the journal after it: 3 rows
    per source row, summing to the source's amounts."""
    from cdc import commands

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        (Path(tmp) / "ledger.yaml").write_text(LEDGER_MAPPING, encoding="utf-8")
        config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  journal:\n"
                          "    source: src\n    target: dst\n    capture: logical\n    mapping: ledger.yaml\n"
                          "    batch_size: 20000\n    snapshot_chunk: 50000\n", encoding="utf-8")
        commands.init(str(config))
        commands.install(str(config))
        commands.run(str(config), once=True)
        sql(source, "UPDATE ledger SET amount = amount + 1, memo = memo || ' l'")
        start = time.perf_counter()
        commands.run(str(config), once=True)
        seconds = time.perf_counter() - start
        commands.uninstall(str(config))
    (count, total), ((expected,),) = sql(target, JOURNAL_CHECK)[0], sql(source, "SELECT sum(amount) FROM ledger")
    assert (count, total) == (3 * rows, expected), f"the journal holds {count} rows summing to {total}"
    return seconds


def cdc_runs(source: str, target: str, detections: list[bool], repeat: int = 1) -> list[tuple[bool, float, float]]:
    """(detect, snapshot seconds, streaming seconds) of one pair per detection setting, each into a
    fresh database beside ``target`` (the first into ``target`` itself). ``repeat``: each setting that
    many times, in turns whose order alternates (on, off, off, on, ...), and per setting the median
    of its runs: a shared machine's slow minute then falls on both sides, not on one."""
    order = [d for turn in range(repeat) for d in (detections if turn % 2 == 0 else detections[::-1])]
    timed = {d: [] for d in detections}
    for detect, snapshot, stream in _cdc_runs(source, target, order):
        timed[detect].append((snapshot, stream))
        print(f"  detect {'on' if detect else 'off'}: streaming {stream:.2f} s", flush=True)
    return [(d, statistics.median(s for s, _ in timed[d]), statistics.median(t for _, t in timed[d]))
            for d in detections]


def _cdc_runs(source: str, target: str, detections: list[bool]) -> list[tuple[bool, float, float]]:
    runs = []
    for number, detect in enumerate(detections):
        into = target if number == 0 else target.rsplit("/", 1)[0] + f"/bench_{number}"
        if number:
            sql(target, f"CREATE DATABASE bench_{number}")
            sql(into, TABLE)
        runs.append((detect, *timed_pair(source, into, "logical", lambda: sql(source, CHECK) == sql(into, CHECK),
                                         lambda: sql(source, "UPDATE ledger SET amount = amount + 1, "
                                                             "memo = memo || ' c'"),
                                         f"    detect_conflicts: {'true' if detect else 'false'}\n")))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--detect", choices=("on", "off", "both"), default="on",
                        help="conflict detection of the cdc pair; both: on, then off, side by side (default on)")
    parser.add_argument("--replica-identity-full", action="store_true",
                        help="ALTER TABLE ledger REPLICA IDENTITY FULL on the source (whole before images)")
    parser.add_argument("--ledger", action="store_true", help="also stream the UPDATE into a journal in ledger mode")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the cdc pair this many times per detection setting, in alternating order, "
                             "and report the medians (default 1)")
    args = parser.parse_args()
    rows, detections = args.rows, {"on": [True], "off": [False], "both": [True, False]}[args.detect]
    clusters = []
    if os.environ.get("CDC_BENCH_SOURCE_URL"):
        source, target = os.environ["CDC_BENCH_SOURCE_URL"], os.environ["CDC_BENCH_TARGET_URL"]
    else:
        from pgserver import LocalCluster

        clusters = [LocalCluster({"max_wal_size": "4GB"}), LocalCluster({"max_wal_size": "4GB"})]
        source, target = clusters[0].url(), clusters[1].url()
        for url in (source, target):
            sql(url, "CREATE DATABASE bench")
        source, target = clusters[0].url("bench"), clusters[1].url("bench")
    native_target = target.rsplit("/", 1)[0] + "/native"
    sql(target, "CREATE DATABASE native")
    journal_target = target.rsplit("/", 1)[0] + "/journal"
    if args.ledger:
        sql(target, "CREATE DATABASE journal")
    try:
        sql(source, TABLE)
        sql(source, FILL, (rows,))
        sql(source, "VACUUM ANALYZE ledger")
        if args.replica_identity_full:
            sql(source, "ALTER TABLE ledger REPLICA IDENTITY FULL")
        for url in (target, native_target):
            sql(url, TABLE)
        copy_seconds = copy_pipe(source, native_target)
        native_seconds = native_replication(source, native_target, rows)
        runs = cdc_runs(source, target, detections, args.repeat)
        ledger_seconds = timed_ledger(source, journal_target, rows) if args.ledger else None
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        for cluster in clusters:
            cluster.remove()
    named = (lambda name, detect: f"{name}, detect {'on' if detect else 'off'}") if len(runs) > 1 else \
        (lambda name, detect: name)
    print_table(f"PostgreSQL -> PostgreSQL, {rows:,} rows (bigint key, int, numeric(18,2), char(3), timestamptz, text)",
                rows, [("baseline COPY TO STDOUT | COPY FROM STDIN", copy_seconds, None),
                       *[(named("cdc initial snapshot", d), snap, copy_seconds) for d, snap, _ in runs],
                       ("baseline native logical replication (UPDATE)", native_seconds, None),
                       *[(named("cdc streaming apply (UPDATE of every row)", d), stream, native_seconds)
                         for d, _, stream in runs]]
                + ([("cdc ledger mode, same UPDATE (2 journal rows each)", ledger_seconds, runs[0][2])]
                   if ledger_seconds else []), peak)
    if len(runs) > 1:
        (_, _, on), (_, _, off) = runs
        how = ("by before images (REPLICA IDENTITY FULL)" if args.replica_identity_full else
               "by row hashes (REPLICA IDENTITY DEFAULT sends no before image; see --replica-identity-full)")
        print(f"conflict detection on vs off, streaming apply (source_wins; >= 80% required), conflicts found {how}: "
              f"{rows / on:,.0f} vs {rows / off:,.0f} rows/s = {off / on:.0%}")


if __name__ == "__main__":
    main()
