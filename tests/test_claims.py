"""One process per pair: a second `cdc run` is refused (or waits), and a paused one that lost the pair
commits nothing afterwards (fencing token), so every change is applied exactly once."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import workload
from test_postgres_source import (assert_each_transaction_once, cdc_ok, execute, logical_pair,  # noqa: F401
                                  pg_to_pg, rows)


def start(ws, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cdc", "run", *args, str(ws.config)], cwd=ws.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _waits(process: subprocess.Popen) -> bool:
    """Whether a `cdc run --wait` said it waits (reads its stderr up to that line)."""
    import select

    while select.select([process.stderr], [], [], 0)[0]:
        line = process.stderr.readline()
        if not line:
            return False
        if "waiting" in line:
            return True
    return False


def kill_all(*processes) -> None:
    """Kill what a test left running, paused or not."""
    for process in processes:
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()


def pause_outside_a_write(process: subprocess.Popen, db) -> None:
    """SIGSTOP ``process`` at a moment it holds no lock on the SQLite file ``db``: a process paused
    inside a transaction, even a read (its shared lock holds off every commit of a rollback-journal
    database), blocks every other writer of the file until it resumes (SQLite's own rule, a VM paused
    there too), so no other process could take the pair meanwhile."""
    import sqlite3

    for _ in range(200):
        os.kill(process.pid, signal.SIGSTOP)
        conn = sqlite3.connect(db, timeout=0.2, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")  # granted only while no other connection holds any lock
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # it holds a lock: let it finish and try again
            os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            conn.close()
    raise AssertionError("the run never let go of the target's write lock")


def running(ws) -> bool:
    return ws.query(ws.target, "SELECT count(*) FROM cdc_leases WHERE state = 'running'")[0][0] == 1


def test_a_second_run_is_refused_with_the_holder_named_or_waits(ledger):
    ws = ledger
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 1500, 10.00, 'NOK', 'a', NULL)")
    first = start(ws)
    try:
        wait_for(lambda: ws.target.exists() and running(ws), what="the first run to claim the pair")
        second = ws.cdc("run", "--once", str(ws.config))
        assert second.returncode == 3, second.stderr
        assert f"pair p is running elsewhere (host {os.uname().nodename}, pid {first.pid}, since " in second.stderr
        assert "Traceback" not in second.stderr
        status = ws.cdc("status", str(ws.config))
        assert "streaming, running" in status.stdout and f"pid {first.pid}" in status.stdout, status.stdout
        # --wait: the second run waits for the first to stop, then drains what is pending.
        log = ws.root / "waiting.log"
        with open(log, "w") as err:
            waiting = subprocess.Popen([sys.executable, "-m", "cdc", "run", "--once", "--wait", str(ws.config)],
                                       cwd=ws.root, stdout=subprocess.PIPE, stderr=err, text=True)
        wait_for(lambda: "waiting" in log.read_text(), what="the second run to say it waits")
        assert waiting.poll() is None, "--wait must wait while the pair is held"
        assert "running elsewhere" in log.read_text()
        ws.sql(ws.source, "UPDATE entries SET amount = 11.00 WHERE id = 1")
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0
        assert waiting.wait(120) == 0, log.read_text()
    finally:
        for process in (first,):
            if process.poll() is None:
                process.kill()
    assert ws.rows(ws.target, "entries", "id") == ws.rows(ws.source, "entries", "id")
    assert ws.query(ws.target, "SELECT state, token FROM cdc_leases") == [("stopped", 2)]


def test_a_process_that_lost_the_pair_commits_nothing(ledger):
    """SIGSTOP the holder past its claim timeout: the other takes over; the woken one's next commit is refused."""
    ws = ledger
    ws.write_config("""
        source: src
        target: dst
        capture: trigger
        tables: [entries, parties]
        batch_size: 5
        poll_interval: 0.05
        claim_timeout: 1
    """)
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 1500, 10.00, 'NOK', 'a', NULL)")
    first, second = start(ws), None
    try:
        wait_for(lambda: ws.target.exists() and running(ws), what="the first run to claim the pair")
        wait_for(lambda: ws.query(ws.target, "SELECT count(*) FROM entries")[0][0] == 1, what="the snapshot")
        second = start(ws, "--wait")
        wait_for(lambda: _waits(second), what="the second run to wait")
        for _ in range(20):
            # Paused past the claim timeout, the pair is free for the other process; a pause that
            # lands inside a write transaction holds SQLite's lock, so the other waits: try again.
            os.kill(first.pid, signal.SIGSTOP)
            time.sleep(2.5)
            try:
                taken = ws.query(ws.target, "SELECT token FROM cdc_leases")[0][0] == 2
            except sqlite3.OperationalError:  # paused holding the write lock: even readers wait
                taken = False
            os.kill(first.pid, signal.SIGCONT)
            if taken:
                break
            time.sleep(0.3)
        assert taken, "the waiting process never took over from the paused one"
        workload.run(ws.source, 300, seed=5)
        wait_for(lambda: first.poll() is not None, what="the fenced process to stop")
        err = first.communicate()[1]
        assert first.returncode == 1 and "another process took the pair" in err, err
        wait_for(lambda: ws.rows(ws.target, "entries", "id") == ws.rows(ws.source, "entries", "id"), what="sync")
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        kill_all(first, second)
    audited, distinct = ws.query(ws.target, "SELECT count(*), count(DISTINCT source_position) FROM cdc_audit_log "
                                            "WHERE op != 'snapshot'")[0]
    assert audited == distinct == 300


def test_two_runs_one_paused_at_random_moments_apply_each_change_once(pg_to_pg):
    """The issue's case: two `cdc run` on one logical pair while a writer makes 2,000 changes, one of
    them SIGSTOPped and resumed at random moments (often past the claim timeout)."""
    ws, source, target = pg_to_pg
    logical_pair(ws, source, target, "duo", batch_size=20, poll_interval=0.05, claim_timeout=1.5)
    workload.run(source, 300, seed=61)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    changes, log = [], []
    writer = threading.Thread(target=lambda: changes.append(workload.run(source, 2000, seed=62, pause=0.05, log=log)))
    processes, finished = [start(ws, "--wait"), start(ws, "--wait")], []
    writer.start()
    rng, pauses = random.Random(63), 0
    try:
        wait_for(lambda: execute(target, "SELECT count(*) FROM pg_tables WHERE tablename = 'cdc_leases'")[0][0] and
                 execute(target, "SELECT count(*) FROM cdc_leases")[0][0], what="a process to claim the pair")

        def token() -> int:
            return execute(target, "SELECT token FROM cdc_leases")[0][0]

        # Until the writer is done and the pair has changed hands at least twice under a paused holder.
        while writer.is_alive() or token() < 3:
            assert pauses < 60, "no takeover happened"
            time.sleep(rng.uniform(0.1, 0.8))
            holder = execute(target, "SELECT pid FROM cdc_leases") if pauses % 2 else []
            # Every other pause hits the holder (a takeover when it lasts past the claim timeout).
            victim = next((p for p in processes if holder and p.pid == holder[0][0]), rng.choice(processes))
            os.kill(victim.pid, signal.SIGSTOP)
            # A paused holder loses the pair when the pause outlasts the claim timeout (1.5 s).
            time.sleep(rng.uniform(2.5, 3.5) if pauses % 2 else rng.uniform(0.05, 1.5))
            os.kill(victim.pid, signal.SIGCONT)
            pauses += 1
            for i, process in enumerate(processes):
                if process.poll() is not None:  # fenced out: it stopped; start another, as systemd would
                    finished.append((process.returncode, process.communicate()[1]))
                    processes[i] = start(ws, "--wait")
        writer.join()
        wait_for(lambda: rows(source, "entries", "id") == rows(target, "entries", "id"), 120, "the pair to catch up")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                finished.append((process.wait(60), process.communicate()[1]))
            except subprocess.TimeoutExpired:
                process.kill()
    cdc_ok(ws, "run", "--once")
    for table, order in (("entries", "id"), ("parties", "code, region")):
        assert rows(source, table, order) == rows(target, table, order), table
    assert_each_transaction_once(target, (log,), changes[0])
    errors = "\n".join(err for _, err in finished)
    assert "running elsewhere" in errors, finished
    for code, err in finished:
        assert code == 0 or "another process took the pair" in err or "checkpoint moved" in err, err


def test_a_process_that_lost_the_pair_while_idle_stops_with_exit_1(ledger):
    """Nothing to commit, so no fence to fail: the heartbeat that finds the pair taken stops the run."""
    ws = ledger
    ws.write_config("""
        source: src
        target: dst
        capture: trigger
        tables: [entries, parties]
        poll_interval: 0.05
        claim_timeout: 1
    """)
    first, second = start(ws), None
    try:
        wait_for(lambda: ws.target.exists() and running(ws), what="the first run to claim the pair")
        pause_outside_a_write(first, ws.target)
        time.sleep(2.5)  # past its claim timeout
        second = start(ws)
        wait_for(lambda: ws.query(ws.target, "SELECT token FROM cdc_leases")[0][0] == 2, what="the takeover")
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(30) == 1
        err = first.stderr.read()
        assert "another process took the pair" in err and "Traceback" not in err, err
        assert second.poll() is None, "the process that holds the pair goes on"
        ws.sql(ws.source, "INSERT INTO entries VALUES (7, 1500, 7.00, 'NOK', 'after', NULL)")
        wait_for(lambda: ws.rows(ws.target, "entries", "id") == ws.rows(ws.source, "entries", "id"), what="sync")
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        kill_all(first, second)


def _foreign_holder(engine, **where) -> None:
    """A live holder this process cannot see: a `cdc run` in another container (PID namespace) or boot
    of a machine with this host name, whose pid means nothing here; heartbeat fresh by the database."""
    import socket

    from cdc import state

    with engine.begin() as conn:
        state.ensure_current(conn)
        moment = state._store.db_now(conn)
        values = dict(token=4, host=socket.gethostname(), pid=999_999_999, since=moment, heartbeat_at=moment,
                      expires_at=moment, state="running",
                      owner=f"{socket.gethostname()}|another-boot|pid:[4026531999]|999999999|123")
        conn.execute(state.leases.delete().where(state.leases.c.pair == "p"))
        conn.execute(state.leases.insert().values(pair="p", **values))


def test_a_holder_in_another_pid_namespace_on_this_host_is_not_taken_over(ledger):
    import sqlalchemy as sa

    ws = ledger
    cdc_ok(ws, "run", "--once")
    engine = sa.create_engine(f"sqlite:///{ws.target}")
    _foreign_holder(engine)
    engine.dispose()
    refused = ws.cdc("run", "--once", str(ws.config))
    assert refused.returncode == 3, refused.stderr
    assert "running elsewhere" in refused.stderr and "pid 999999999" in refused.stderr
    assert ws.query(ws.target, "SELECT token FROM cdc_leases") == [(4,)]


def test_a_taker_whose_clock_runs_ahead_does_not_take_a_live_holder(pg_url, monkeypatch):
    """Heartbeats are written and judged by the database server's clock, not the machine's."""
    import datetime as dt

    import pytest
    import sqlalchemy as sa

    from cdc import state
    from cdc.state import _claims, _store

    engine = sa.create_engine(pg_url)
    state.upgrade(engine)
    _foreign_holder(engine)
    ahead = _store.now() + dt.timedelta(hours=2)
    monkeypatch.setattr(_store, "now", lambda: ahead)
    monkeypatch.setattr(_claims, "now", lambda: ahead)
    with pytest.raises(state.ClaimHeldError, match="running elsewhere"):
        with engine.begin() as conn:
            _claims.take(conn, "p", 30)
    engine.dispose()


def test_a_run_taking_over_a_logical_pair_ends_the_walsender_of_the_paused_one(pg_to_pg):
    """The paused holder keeps the slot's replication connection open: the run that took the pair
    over ends it (the slot would otherwise stay busy until wal_sender_timeout) and streams."""
    ws, source, target = pg_to_pg
    logical_pair(ws, source, target, "takeover", poll_interval=0.05, claim_timeout=1)
    execute(source, "INSERT INTO entries VALUES (1, 1500, 10.00, 'NOK', 'a', NULL)")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    first, second = start(ws), None
    try:
        wait_for(lambda: rows(target, "entries", "id") == rows(source, "entries", "id"), what="the first run's copy")
        execute(source, "UPDATE entries SET memo = 'streamed' WHERE id = 1")
        wait_for(lambda: rows(target, "entries", "id") == rows(source, "entries", "id"), what="the first run's stream")
        os.kill(first.pid, signal.SIGSTOP)
        second = start(ws, "--wait")
        execute(source, "UPDATE entries SET memo = 'after the pause' WHERE id = 1")
        wait_for(lambda: rows(target, "entries", "id") == rows(source, "entries", "id"), timeout=60,
                 what="the second run to stream while the first is paused")
        assert execute(target, "SELECT token FROM cdc_leases")[0][0] == 2
        os.kill(first.pid, signal.SIGCONT)
        wait_for(lambda: first.poll() is not None, what="the fenced first run to stop")
        assert first.returncode == 1 and "another process took the pair" in first.communicate()[1]
        second.send_signal(signal.SIGTERM)
        err = second.communicate(timeout=60)[1]
        assert second.returncode == 0, err
        assert "replication slot cdc_takeover is held by a connection" in err and "ending it" in err, err
    finally:
        kill_all(first, second)
