"""Binlog capture keeps one replica connection open across reads (adapters/mysql/_live_binlog.py)."""

from __future__ import annotations

import random
import threading
import time

import pymysql
import sqlalchemy as sa

from cdc.config import load_config
from cdc.pipeline import open_source
from test_mysql_source import ENTRIES, cdc_ok, mexec, pair_config, pexec, same_rows


def dump_threads(url: str) -> set[int]:
    """The ids of the server's Binlog Dump threads (one per replica connection reading the binlog)."""
    return {r[0] for r in mexec(url, "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")}


def read(source, after: dict, size: int = 1) -> tuple[list, dict]:
    """One stream read: its changes as (op, id) and the position it ends at."""
    changes, position = [], after
    for part in source.stream(after, size):
        changes += [(c.op, c.key[0]) for c in part.changes]
        if part.complete:
            position = part.position
    return changes, position


def read_up_to(source, after: dict, end: dict) -> list:
    """The changes of reads from ``after`` until one ends at ``end``."""
    changes, position = [], after
    while position != end:
        more, position = read(source, position)
        changes += more
    return changes


def binlog_source(ws, mysql_url: str, pg_url: str):
    pair_config(ws, mysql_url, pg_url, "live")
    source, _ = open_source(load_config(str(ws.config)).pairs["live"])
    return source


def one_dump_thread(url: str, others: set[int]) -> int:
    """Our one Binlog Dump thread (a replaced connection's may take the server a moment to end)."""
    deadline = time.monotonic() + 10
    while len(ours := dump_threads(url) - others) != 1:
        assert time.monotonic() < deadline, f"binlog dump threads: {ours}"
        time.sleep(0.1)
    return ours.pop()


def test_reads_share_one_binlog_connection_and_a_read_elsewhere_starts_there(ws, mysql_url, pg_url):
    mexec(mysql_url, ENTRIES)
    others = dump_threads(mysql_url)
    source = binlog_source(ws, mysql_url, pg_url)
    try:
        start = position = source.current_position()
        ends, threads = [], set()
        for i in range(1, 9):  # one transaction, one read, eight times: each read sees what committed before it
            mexec(mysql_url, f"INSERT INTO entries VALUES ({i}, 1500, {i}.00, 'NOK', NULL, NULL)")
            changes, position = read(source, position)
            assert changes == [("insert", i)]
            ends.append(position)
            threads |= dump_threads(mysql_url) - others
        assert len(threads) == 1, f"a new binlog connection for some reads: dump threads {threads}"
        # A retry of an earlier read (a failed target commit) and a restart at an older checkpoint:
        # a new connection there, and nothing lost or doubled from there on.
        assert read(source, ends[4]) == ([("insert", 6)], ends[5])
        assert read(source, ends[5]) == ([("insert", 7)], ends[6])
        assert read_up_to(source, start, ends[-1]) == [("insert", i) for i in range(1, 9)]
        assert one_dump_thread(mysql_url, others) not in threads
        # An idle pair's wait ends as soon as a transaction is there to read.
        assert read(source, ends[-1]) == ([], ends[-1])
        writer = threading.Timer(0.5, lambda: mexec(mysql_url, "DELETE FROM entries WHERE id = 1"))
        writer.start()
        started = time.monotonic()
        source.idle(30, threading.Event())
        assert time.monotonic() - started < 15, "idle() did not end when a transaction arrived"
        writer.join()
        assert read(source, ends[-1])[0] == [("delete", 1)]
    finally:
        source.close()
    deadline = time.monotonic() + 10
    while dump_threads(mysql_url) - others:
        assert time.monotonic() < deadline, "close() left the binlog connection open"
        time.sleep(0.1)


def test_other_tables_move_the_position_at_most_once_a_second(ws, mysql_url, pg_url):
    mexec(mysql_url, ENTRIES + ";\nCREATE TABLE notes (id INT PRIMARY KEY) ENGINE=InnoDB")
    source = binlog_source(ws, mysql_url, pg_url)
    try:
        position = source.current_position()
        moves, started = 0, time.monotonic()
        for i in range(30):
            mexec(mysql_url, f"INSERT INTO notes VALUES ({i})")
            changes, moved = read(source, position, 1000)
            assert changes == []
            moves += moved != position
            position = moved
        seconds = time.monotonic() - started
        assert 1 <= moves <= seconds + 1, f"{moves} moves in {seconds:.1f} s"
        mexec(mysql_url, "INSERT INTO entries VALUES (1, 1500, 1.00, 'NOK', NULL, NULL);\n"
                         "INSERT INTO notes VALUES (99)")
        end = source.current_position()
        changes, position = read(source, position, 1000)
        while position["pos"] != end["pos"]:  # and the position reaches the end of the binlog
            more, position = read(source, position, 1000)
            changes += more
        assert changes == [("insert", 1)]
    finally:
        source.close()


def writer(url: str, number: int, transactions: int, log: list) -> None:
    """Small transactions (1-4 changes) on rows of its own: inserts, updates, deletes."""
    rng = random.Random(number)
    parts = sa.engine.make_url(url)
    conn = pymysql.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password or "",
                           database=parts.database)
    ids, next_id = [], number * 1_000_000
    try:
        for _ in range(transactions):
            conn.begin()
            count = rng.randint(1, 4)
            with conn.cursor() as cursor:
                for _ in range(count):
                    roll = rng.random()
                    if roll < 0.5 or len(ids) < 3:
                        next_id += 1
                        cursor.execute("INSERT INTO entries VALUES (%s, %s, %s, 'NOK', NULL, NULL)",
                                       (next_id, number, rng.randint(1, 10**6) / 100))
                        ids.append(next_id)
                    elif roll < 0.85:
                        cursor.execute("UPDATE entries SET amount = amount + 1 WHERE id = %s", (rng.choice(ids),))
                    else:
                        cursor.execute("DELETE FROM entries WHERE id = %s", (ids.pop(rng.randrange(len(ids))),))
            conn.commit()
            with conn.cursor() as cursor:
                cursor.execute("SELECT @@last_gtid")
                log.append((cursor.fetchone()[0], count))
            time.sleep(rng.uniform(0, 0.004))
    finally:
        conn.close()


def test_sigkill_while_four_writers_commit_small_transactions(ws, mysql_url, pg_url):
    mexec(mysql_url, ENTRIES)
    mexec(mysql_url, "INSERT INTO entries VALUES (1, 1500, 1.00, 'NOK', NULL, NULL)")
    pair_config(ws, mysql_url, pg_url, "busy", batch_size=50)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    log: list = []
    writers = [threading.Thread(target=writer, args=(mysql_url, n, 400, log)) for n in range(1, 5)]
    for thread in writers:
        thread.start()
    ws.kill_while(lambda: any(t.is_alive() for t in writers), 11, 0.5, 1.5)
    for thread in writers:
        thread.join()
    cdc_ok(ws, "run", "--once")
    source_rows, target_rows = same_rows(mysql_url, pg_url, "entries", "id")
    assert source_rows == target_rows
    audited = dict(pexec(pg_url, "SELECT source_txid, count(*) FROM cdc_audit_log WHERE op <> 'snapshot' "
                                 "GROUP BY source_txid"))
    assert audited == dict(log), "a transaction applied twice, in part, or not at all"


def test_the_binlog_reader_process_dies_with_a_sigkilled_run(ws, mysql_url, pg_url):
    """The binlog is decoded in a process forked by `cdc run`: SIGKILL of the run ends it too, so no
    orphan keeps a replica connection (and the binlog's position) open."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    mexec(mysql_url, ENTRIES)
    pair_config(ws, mysql_url, pg_url, "orphan")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    others = dump_threads(mysql_url)
    process = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        mexec(mysql_url, "INSERT INTO entries VALUES (5, 1500, 5.00, 'NOK', NULL, NULL)")
        deadline = time.monotonic() + 60
        while pexec(pg_url, "SELECT count(*) FROM entries WHERE id = 5") != [(1,)]:
            assert time.monotonic() < deadline and process.poll() is None, "cdc run did not apply the insert"
            time.sleep(0.1)
        children = {int(c) for task in Path(f"/proc/{process.pid}/task").iterdir()
                    for c in (task / "children").read_text().split()}
        assert len(children) == 1 and one_dump_thread(mysql_url, others)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 10
    while any(map(_alive, children)) or dump_threads(mysql_url) - others:
        assert time.monotonic() < deadline, "the binlog reader process outlived the killed run"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, ended but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
