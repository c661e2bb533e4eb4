"""SQLite -> SQLite: initial snapshot and streaming apply rows/s, next to plain SQL baselines.

Run: python bench/sqlite_bench.py [--rows 100000]
Baselines, in the same process on the same files:
  snapshot  - ATTACH + INSERT INTO target SELECT * FROM source (SQLite copying inside one engine)
  streaming - ATTACH + INSERT ... SELECT ... ON CONFLICT DO UPDATE of every row (a set-based upsert)
"""

from __future__ import annotations

import argparse
import random
import resource
import sqlite3
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from _report import print_table

from cdc import commands

SCHEMA = ("CREATE TABLE entries (id INTEGER PRIMARY KEY, account INTEGER NOT NULL, amount NUMERIC(18,2) NOT NULL, "
          "currency CHAR(3) NOT NULL, booked_at DATETIME NOT NULL, memo TEXT)")
CONFIG = """connections:
  src: sqlite:///source.db
  dst: sqlite:///target.db
pairs:
  bench: {source: src, target: dst, capture: trigger, tables: [entries], batch_size: 5000, snapshot_chunk: 10000}
"""


def make_source(path: Path, rows: int) -> None:
    rng = random.Random(1)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(SCHEMA)
        conn.executemany("INSERT INTO entries VALUES (?, ?, ?, 'NOK', ?, ?)", (
            (i, rng.choice([1500, 1920, 2700, 3000]), str(Decimal(rng.randint(-10**8, 10**8)) / 100),
             f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 12:00:00", f"Bilag {i} æøå") for i in range(1, rows + 1)))
    conn.close()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def baseline(source: Path, target: Path, upsert: bool) -> float:
    conn = sqlite3.connect(target)
    if not upsert:
        conn.execute(SCHEMA)
    conn.execute("ATTACH ? AS src", (str(source),))
    tail = (" ON CONFLICT (id) DO UPDATE SET account = excluded.account, amount = excluded.amount, "
            "currency = excluded.currency, booked_at = excluded.booked_at, memo = excluded.memo") if upsert else ""
    where = " WHERE true" if upsert else ""  # SQLite needs a WHERE to parse ON CONFLICT after SELECT
    seconds = timed(lambda: (conn.execute(f"INSERT INTO main.entries SELECT * FROM src.entries{where}{tail}"),
                             conn.commit()))
    conn.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    rows = parser.parse_args().rows
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_source(root / "source.db", rows)
        (root / "config.yaml").write_text(CONFIG)
        config = str(root / "config.yaml")
        base_copy = baseline(root / "source.db", root / "baseline.db", upsert=False)
        commands.init(config)
        commands.install(config)
        snapshot = timed(lambda: commands.run(config, once=True))
        conn = sqlite3.connect(root / "source.db")
        with conn:
            conn.execute("UPDATE entries SET amount = amount + 1, memo = memo || ' endret'")
        conn.close()
        streaming = timed(lambda: commands.run(config, once=True))
        base_upsert = baseline(root / "source.db", root / "baseline.db", upsert=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(f"SQLite -> SQLite, {rows:,} rows (ledger-like: bigint key, int account, numeric(18,2), char(3), "
                "timestamp, text)", rows, [("baseline INSERT ... SELECT copy", base_copy, None),
                                           ("cdc initial snapshot", snapshot, base_copy),
                                           ("baseline INSERT ... ON CONFLICT", base_upsert, None),
                                           ("cdc streaming apply (1 UPDATE)", streaming, base_upsert)], peak)


if __name__ == "__main__":
    main()
