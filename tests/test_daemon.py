"""`cdc daemon` as a service: systemd's notify protocol on a real datagram socket, /healthz and /metrics
scraped over HTTP, SIGHUP reloads, SIGTERM stops, a hung database call stops the watchdog, alerts reach
a real webhook."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import workload
from test_postgres_source import cdc_ok, execute, pg_to_pg, rows  # noqa: F401


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A `cdc daemon` process with its HTTP port, as systemd would start it."""

    def __init__(self, ws, *args: str, env: dict | None = None, config: Path | None = None):
        self.port = free_port()
        self.log = ws.root / f"daemon-{self.port}.log"
        command = [sys.executable, "-m", "cdc", "daemon", "--listen", f"127.0.0.1:{self.port}", *args,
                   str(config or ws.config)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ws.root, stdout=subprocess.DEVNULL, stderr=log,
                                            env={**os.environ, **(env or {})})

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def health(self) -> tuple[int, dict]:
        code, body = self.get("/healthz")
        return code, json.loads(body)

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample of /metrics, None when it has none."""
        _, body = self.get("/metrics")
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in body.splitlines():
            if line.startswith(f"{name}{{{wanted}}} ") or line.startswith(f"{name} ") and not labels:
                return float(line.rsplit(" ", 1)[1])
        return None

    def up(self) -> bool:
        try:
            return self.health()[0] in (200, 503)
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def stop(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def received(sock: socket.socket, seconds: float) -> list[str]:
    """The notify lines that arrive on ``sock`` within ``seconds``."""
    lines, end = [], time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            lines += sock.recv(4096).decode().split("\n")
        except TimeoutError:
            break
    return lines


@pytest.fixture
def services():
    started: list[Service] = []
    yield started
    for service in started:
        service.kill()


def test_notify_protocol_health_metrics_and_a_clean_stop(ledger, services):
    """READY=1 after start-up, STATUS= lines, WATCHDOG=1 pings every third of WatchdogSec, STOPPING=1 at
    SIGTERM; /healthz and /metrics follow the changes; exit 0; the target equals the source."""
    ws = ledger
    ws.write_config("""
        source: src
        target: dst
        capture: trigger
        tables: [entries, parties]
        batch_size: 50
        poll_interval: 0.1
    """)
    workload.run(ws.source, 300, seed=1)
    where = Path(tempfile.mkdtemp(prefix="cdc-notify-", dir="/tmp"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(where / "notify"))
    sock.settimeout(60)
    service = Service(ws, env={"NOTIFY_SOCKET": str(where / "notify"), "WATCHDOG_USEC": "1500000"})
    services.append(service)
    messages: list[str] = []

    def until(word: str) -> float:
        while True:
            messages.append(sock.recv(4096).decode())
            if word in messages[-1].split("\n"):
                return time.monotonic()

    until("READY=1")
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in messages), messages
    first = until("WATCHDOG=1")
    second = until("WATCHDOG=1")
    assert second - first < 1.5, "a ping every third of WatchdogSec (1.5 s)"
    wait_for(lambda: service.health()[1]["pairs"][0]["state"] == "idle", what="the snapshot to finish")
    code, body = service.health()
    assert code == 200 and body["healthy"] and body["pairs"][0]["pair"] == "p"
    changes = workload.run(ws.source, 400, seed=2)
    wait_for(lambda: ws.rows(ws.source, "entries", "id") == ws.rows(ws.target, "entries", "id"), what="catch-up")
    applied = sum(service.metric("cdc_changes_applied_total", op=op, pair="p") or 0
                  for op in ("insert", "update", "delete"))
    assert applied == changes, "the metrics count every change applied once"
    assert service.metric("cdc_replication_lag_seconds", pair="p") is not None
    assert service.metric("cdc_pair_up", pair="p") == 1
    assert service.metric("cdc_batches_total", pair="p") >= 1
    # The source's backlog and the open dead letters, read as `cdc status` reads them (first after 2 s).
    wait_for(lambda: service.metric("cdc_source_backlog", pair="p", unit="changes") is not None, 30, "the backlog")
    assert service.metric("cdc_dead_letters_open", pair="p") == 0
    assert service.get("/nothing")[0] == 404
    assert service.stop() == 0
    until("STOPPING=1")
    for table, order in (("entries", "id"), ("parties", "code, region")):
        assert ws.rows(ws.source, table, order) == ws.rows(ws.target, table, order)
    assert ws.query(ws.target, "SELECT count(*) FROM cdc_audit_log WHERE op != 'snapshot'")[0][0] == changes
    logged = [json.loads(line) for line in service.logged().splitlines() if line.startswith("{")]
    assert any("daemon started" in line["message"] for line in logged), "JSON log lines when not on a terminal"
    assert ws.query(ws.target, "SELECT state FROM cdc_leases")[0][0] == "stopped"
    sock.close()


def test_sighup_reloads_changed_pairs_and_refuses_a_bad_config(ledger, services):
    ws = ledger
    service = Service(ws)
    services.append(service)
    wait_for(lambda: service.up() and service.health()[1]["pairs"][0]["state"] == "idle", what="start-up")
    # A second pair added by the reload (its own target); the first pair's definition is unchanged.
    second = ws.root / "second.db"
    text = ws.config.read_text() + ("  q:\n    source: src\n    target: other\n    capture: trigger\n"
                                    "    tables: [parties]\n")
    ws.config.write_text(text.replace("connections:\n", f"connections:\n  other: sqlite:///{second.name}\n"))
    cdc_ok(ws, "init")
    cdc_ok(ws, "install")
    service.process.send_signal(signal.SIGHUP)
    wait_for(lambda: [p["pair"] for p in service.health()[1]["pairs"]] == ["p", "q"], what="the reload")
    assert "config reloaded: 0 pair(s) restarted, 1 added" in service.logged()
    # A typo: refused, and both pairs keep running.
    ws.config.write_text(ws.config.read_text().replace("batch_size: 50", "batch_sise: 50"))
    service.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reload refused" in service.logged(), what="the refusal")
    assert "batch_sise" in service.logged() and "did you mean" in service.logged()
    workload.run(ws.source, 200, seed=3)
    wait_for(lambda: ws.rows(ws.source, "parties", "code, region") == ws.rows(second, "parties", "code, region"),
             what="the added pair to catch up")
    wait_for(lambda: ws.rows(ws.source, "entries", "id") == ws.rows(ws.target, "entries", "id"),
             what="the first pair to catch up")
    code, body = service.health()
    assert code == 200 and {p["state"] for p in body["pairs"]} <= {"idle", "streaming"}
    # A setting fixed for the daemon's life: said once it differs from what runs, not when it is back.
    fixed = ws.config.read_text().replace("batch_sise: 50", "batch_size: 50")
    for text, reloads in ((fixed + "daemon:\n  lease_seconds: 7\n", 2), (fixed, 3)):
        ws.config.write_text(text, encoding="utf-8")
        service.process.send_signal(signal.SIGHUP)
        wait_for(lambda: service.logged().count("config reloaded") == reloads, 30, "the reload")
    warned = "daemon.lease_seconds in the config differs from what this daemon runs with"
    assert service.logged().count(warned) == 1
    assert service.stop() == 0


class _Webhook:
    """A real HTTP endpoint that records the alerts POSTed to it."""

    def __init__(self):
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0/secret-token-1234"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [alert["event"] for alert in self.received]


def test_a_hung_database_call_stops_the_watchdog_and_lag_alerts_fire_once(pg_to_pg, services):
    """A target table locked by someone else: the apply waits in the database (a real hang). /healthz says
    so, watchdog pings stop, lag rises past the alert's threshold (one `lagging` alert); once the lock
    goes, everything recovers (one `lag recovered`), and the target equals the source."""
    ws, source, target = pg_to_pg
    hook = _Webhook()
    ws.config.write_text(
        f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  hang:\n    source: src\n    target: dst\n"
        "    capture: logical\n    tables: [entries, parties]\n    poll_interval: 0.1\n"
        "daemon:\n  hung_after: 3\n"
        f"alerts:\n  - url: {hook.url}\n    events: [failed, recovered, lagging]\n    lag_seconds: 2\n",
        encoding="utf-8")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    where = Path(tempfile.mkdtemp(prefix="cdc-notify-", dir="/tmp"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(where / "notify"))
    service = Service(ws, env={"NOTIFY_SOCKET": str(where / "notify"), "WATCHDOG_USEC": "1000000"})
    services.append(service)
    wait_for(lambda: service.up() and service.health()[1]["pairs"][0]["state"] == "idle", what="start-up")
    import psycopg

    locker = psycopg.connect(target)
    locker.execute("LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
    changes = workload.run(source, 100, seed=4)
    wait_for(lambda: service.health()[1]["pairs"][0]["hung"], 30, "the pair to count as hung")
    code, body = service.health()
    assert code == 503 and not body["healthy"]
    time.sleep(1.0)
    received(sock, 0.5)  # what was sent before the hang was seen
    assert "WATCHDOG=1" not in received(sock, 2.5), "no watchdog ping while a worker hangs"
    wait_for(lambda: "lagging" in hook.events(), 30, "the lag alert")
    assert (service.metric("cdc_replication_lag_seconds", pair="hang") or 0) > 2
    locker.rollback()
    locker.close()
    wait_for(lambda: rows(source, "entries", "id") == rows(target, "entries", "id"), what="catch-up")
    wait_for(lambda: service.health()[0] == 200, 30, "healthy again")
    wait_for(lambda: "lag recovered" in hook.events(), 30, "the lag-recovered alert")
    assert "WATCHDOG=1" in received(sock, 2.0), "the pings come back"
    assert hook.events().count("lagging") == 1, hook.events()
    assert execute(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'")[0][0] == changes
    assert all("secret-token-1234" not in json.dumps(alert) for alert in hook.received)
    assert "secret-token-1234" not in service.logged()
    assert service.stop() == 0
    hook.server.shutdown()
    sock.close()


def _holder(target: Path) -> tuple[int, str] | None:
    import sqlite3

    conn = sqlite3.connect(target, timeout=30)
    try:
        row = conn.execute("SELECT pid, state FROM cdc_leases").fetchone()
    finally:
        conn.close()
    return None if row is None else (row[0], row[1])


def test_three_daemons_share_the_pairs_and_a_killed_ones_pairs_move_within_the_lease(ws, pg_url, services):
    """Three daemons on one shared state database: each pair runs in exactly one of them; SIGKILL the one
    holding a pair and another takes it within the lease time; nothing lost or doubled."""
    from conftest import LEDGER_SCHEMA

    names = ["a", "b", "c"]
    for name in names:
        ws.sql(ws.root / f"{name}-source.db", LEDGER_SCHEMA)
    connections = "".join(f"  {n}_src: sqlite:///{n}-source.db\n  {n}_dst: sqlite:///{n}-target.db\n" for n in names)
    pairs = "".join(f"  {n}:\n    source: {n}_src\n    target: {n}_dst\n    capture: trigger\n"
                    "    tables: [entries, parties]\n    batch_size: 20\n    poll_interval: 0.1\n"
                    "    claim_timeout: 3\n" for n in names)
    ws.config.write_text(f"connections:\n{connections}pairs:\n{pairs}daemon:\n  lease_seconds: 3\n  state: {pg_url}\n",
                         encoding="utf-8")
    cdc_ok(ws, "init")
    cdc_ok(ws, "install")
    for _ in range(3):
        services.append(Service(ws))
    targets = {n: ws.root / f"{n}-target.db" for n in names}
    pids = {s.process.pid for s in services}

    def settled() -> bool:
        holders = {n: _holder(t) for n, t in targets.items()}
        running = all(h is not None and h[1] == "running" and h[0] in pids for h in holders.values())
        # Each daemon that is to run a pair holds it, the others show it in standby.
        bodies = [s.health()[1] for s in services if s.process.poll() is None and s.up()]
        states = [p["state"] for body in bodies for p in body["pairs"]]
        # ... and every daemon sees all three (not three daemons each alone, which the claims would settle too).
        known = len(bodies) == 3 and all(len(body["daemons"]) == 3 for body in bodies)
        return running and known and states.count("standby") == 2 * len(names)

    wait_for(settled, 60, "every pair to run in exactly one daemon")

    def shown() -> dict:
        result = ws.cdc("status", "--json", str(ws.config))
        return {row["pair"]: row.get("daemon") for row in json.loads(result.stdout)}

    # `cdc status` names the daemon that runs each pair: the one whose process holds the pair's claim.
    wait_for(lambda: all(d and int(d.split(":")[1]) == _holder(targets[n])[0] for n, d in shown().items()), 30,
             "cdc status to name each pair's daemon")
    stop, counts = threading.Event(), {}

    def write(name: str) -> None:
        total, seed = 0, 100 + names.index(name)
        while not stop.is_set():
            total += workload.run(ws.root / f"{name}-source.db", 40, seed=seed, pause=0.01)
            seed += 3
        counts[name] = total

    writers = [threading.Thread(target=write, args=(n,)) for n in names]
    for writer in writers:
        writer.start()
    time.sleep(2)
    victim_pid = _holder(targets["a"])[0]
    victim = next(s for s in services if s.process.pid == victim_pid)
    victim.process.kill()
    victim.process.wait()
    killed = time.monotonic()
    wait_for(lambda: (h := _holder(targets["a"])) is not None and h[0] != victim_pid and h[1] == "running", 30,
             "another daemon to take pair a")
    moved = time.monotonic() - killed
    print(f"pair a moved {moved:.1f} s after its daemon was killed (lease 3 s)")
    assert moved < 3 + 2, f"pair a moved after {moved:.1f} s (lease 3 s; the margin is for opening the pair)"
    time.sleep(2)
    stop.set()
    for writer in writers:
        writer.join()
    for name in names:
        source, target = ws.root / f"{name}-source.db", targets[name]
        wait_for(lambda: ws.rows(source, "entries", "id") == ws.rows(target, "entries", "id") and
                 ws.rows(source, "parties", "code, region") == ws.rows(target, "parties", "code, region"),
                 60, f"pair {name} to catch up")
        positions = [p for (p,) in ws.query(target, "SELECT CAST(source_position AS INTEGER) FROM cdc_audit_log "
                                                    "WHERE op != 'snapshot' ORDER BY 1")]
        assert positions == list(range(1, counts[name] + 1)), f"pair {name}: each change audited exactly once"
    for service in services:
        if service.process.poll() is None:
            assert service.stop() == 0


def test_alerts_for_a_failing_pair_its_recovery_and_parked_changes_are_sent_once(ledger, services):
    """A row the target refuses under on_error stop: the pair fails and is started again with back-off
    (one `failed` alert, however many restarts); the cause removed, it recovers (one `recovered`); under
    on_error park a refused row sends `parked`. The webhook's token appears nowhere."""
    ws = ledger
    hook = _Webhook()
    ws.sql(ws.target, "CREATE TRIGGER refuse BEFORE INSERT ON entries WHEN NEW.amount > 1000000 "
                      "BEGIN SELECT RAISE(ABORT, 'amount over the limit'); END;")
    base = ws.config.read_text()

    def configure(on_error: str) -> None:
        ws.config.write_text(base.replace("    batch_size: 50\n", f"    batch_size: 50\n    poll_interval: 0.1\n"
                                                                  f"    on_error: {on_error}\n")
                             + f"daemon:\n  max_backoff: 1\nalerts:\n  - url: {hook.url}\n", encoding="utf-8")

    configure("stop")
    service = Service(ws)
    services.append(service)
    wait_for(lambda: service.up() and service.health()[1]["pairs"][0]["state"] == "idle", what="start-up")
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 1500, 2000000, 'NOK', 'stor', NULL);")
    wait_for(lambda: "failed" in hook.events(), 30, "the failed alert")
    wait_for(lambda: service.metric("cdc_restarts_total", pair="p") >= 2, 30, "restarts")
    code, body = service.health()
    assert code == 503 and "amount over the limit" in body["pairs"][0]["error"]
    assert hook.events().count("failed") == 1, hook.events()
    failed = next(a for a in hook.received if a["event"] == "failed")
    assert failed["pair"] == "p" and "amount over the limit" in failed["text"]
    ws.sql(ws.target, "DROP TRIGGER refuse;")
    wait_for(lambda: "recovered" in hook.events(), 30, "the recovered alert")
    wait_for(lambda: service.health()[0] == 200, 30, "healthy again")
    assert ws.rows(ws.source, "entries", "id") == ws.rows(ws.target, "entries", "id")
    # Parked changes: on_error park, reloaded by SIGHUP.
    ws.sql(ws.target, "CREATE TRIGGER refuse BEFORE INSERT ON entries WHEN NEW.amount > 1000000 "
                      "BEGIN SELECT RAISE(ABORT, 'amount over the limit'); END;")
    configure("park")
    service.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in service.logged(), 30, "the reload")
    ws.sql(ws.source, "INSERT INTO entries VALUES (2, 1500, 3000000, 'NOK', 'stor', NULL);")
    wait_for(lambda: "parked" in hook.events(), 30, "the parked alert")
    assert service.metric("cdc_changes_parked_total", pair="p") == 1
    assert service.stop() == 0
    assert hook.events().count("failed") == 1 and hook.events().count("recovered") == 1, hook.events()
    for text in (service.logged(), json.dumps(hook.received), ws.cdc("status", str(ws.config)).stdout):
        assert "secret-token-1234" not in text
    hook.server.shutdown()


def test_the_state_database_going_away_leaves_each_pair_running_once(ws, own_pg_server, services):
    """Two daemons share pairs through a state database that is then stopped: each keeps running what it
    runs (no pair twice, none dropped), says so in /healthz and /metrics, and picks up when it returns."""
    from conftest import LEDGER_SCHEMA

    state = own_pg_server.url()
    names = ["a", "b"]
    for name in names:
        ws.sql(ws.root / f"{name}-source.db", LEDGER_SCHEMA)
    connections = "".join(f"  {n}_src: sqlite:///{n}-source.db\n  {n}_dst: sqlite:///{n}-target.db\n" for n in names)
    pairs = "".join(f"  {n}:\n    source: {n}_src\n    target: {n}_dst\n    capture: trigger\n"
                    "    tables: [entries, parties]\n    poll_interval: 0.1\n    claim_timeout: 10\n" for n in names)
    # Lease and claim times with room for a loaded machine's stalls (a heartbeat late by a few seconds
    # moves a pair, which is safe but not what this test is about); the killed daemon's pairs move at once
    # all the same, since its process is seen gone on this host.
    ws.config.write_text(f"connections:\n{connections}pairs:\n{pairs}daemon:\n  lease_seconds: 10\n", encoding="utf-8")
    cdc_ok(ws, "init")
    cdc_ok(ws, "install")
    for _ in range(2):
        services.append(Service(ws, "--state", state))
    targets = {n: ws.root / f"{n}-target.db" for n in names}

    def holders() -> dict:
        return {n: _holder(t) for n, t in targets.items()}

    def settled() -> bool:  # each pair runs in the daemon it is assigned to, the other stands by
        bodies = [s.health()[1] for s in services if s.up()]
        states = [p["state"] for body in bodies for p in body["pairs"]]
        return all(h and h[1] == "running" for h in holders().values()) and states.count("standby") == len(names) \
            and len(bodies) == 2 and all(len(body["daemons"]) == 2 for body in bodies)

    wait_for(settled, 60, "both pairs to run where they are assigned")
    before = holders()
    own_pg_server.stop()
    wait_for(lambda: all(s.health()[1]["state_database_error"] for s in services), 30, "the state database error")
    assert all(s.metric("cdc_state_database_up") == 0 for s in services)
    counts = {n: workload.run(ws.root / f"{n}-source.db", 150, seed=20 + i) for i, n in enumerate(names)}
    for name in names:
        wait_for(lambda: ws.rows(ws.root / f"{name}-source.db", "entries", "id") == ws.rows(targets[name], "entries", "id"),
                 60, f"pair {name} to go on without the state database")
    assert holders() == before, "each pair stayed where it ran"
    assert all(s.health()[0] == 200 for s in services), "the pairs work: healthy"
    # A daemon dies while the state database is away: its pairs start in the other (the claims decide).
    victim = next(s for s in services if s.process.pid == before["a"][0])
    victim.kill()
    survivor = next(s for s in services if s is not victim)
    wait_for(lambda: all(h and h[0] == survivor.process.pid and h[1] == "running" for h in holders().values()), 30,
             "the dead daemon's pairs to run in the other one")
    more = workload.run(ws.root / "a-source.db", 50, seed=30)
    counts["a"] += more
    wait_for(lambda: ws.rows(ws.root / "a-source.db", "entries", "id") == ws.rows(targets["a"], "entries", "id"), 60,
             "pair a to catch up in the survivor")
    services.remove(victim)
    own_pg_server.start()
    wait_for(lambda: all(s.metric("cdc_state_database_up") == 1 for s in services), 30, "the state database back")
    for name in names:
        positions = [p for (p,) in ws.query(targets[name], "SELECT CAST(source_position AS INTEGER) FROM "
                                                           "cdc_audit_log WHERE op != 'snapshot' ORDER BY 1")]
        assert positions == list(range(1, counts[name] + 1))
    for service in services:
        assert service.stop() == 0


@pytest.mark.parametrize("section, message", [
    ("daemon:\n  stop_timout: 5\n", "daemon.stop_timout: unknown key 'stop_timout' (did you mean 'stop_timeout'?)"),
    ("daemon:\n  listen: localhost\n", "is not host:port (such as 127.0.0.1:9187) or off"),
    ("daemon:\n  state: junk\n", "daemon.state: 'junk' is not a database URL"),
    ("daemon:\n  listen: 0\n", "'0' is not host:port"),
    ("daemon:\n  state: sqlite:///state.db\n", "the state database shared by daemons must be a database server"),
    ("alerts:\n  - url: https://hooks.example/T0/secret-token-1234\n    on: [failed]\n",
     "`on:` is read as true by YAML: name the events with `events: [...]`"),
    ("alerts:\n  - url: https://hooks.example/T0/secret-token-1234\n    events: [failed, lagin]\n",
     "must be a list of failed, recovered, parked, lagging"),
    ("alerts:\n  - url: hooks.example/T0\n", "must be an http:// or https:// URL"),
])
def test_daemon_and_alert_settings_are_checked_with_file_and_line(ledger, section, message):
    ws = ledger
    ws.config.write_text(ws.config.read_text() + section, encoding="utf-8")
    for command in ("check", "daemon"):
        result = ws.cdc(command, str(ws.config))
        assert result.returncode == 2 and message in result.stderr and "config.yaml line" in result.stderr, \
            (command, result.stderr)
        assert "secret-token-1234" not in result.stderr and "Traceback" not in result.stderr


def test_a_port_in_use_is_a_clear_error(ledger):
    ws = ledger
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = ws.cdc("daemon", "--listen", f"127.0.0.1:{port}", str(ws.config))
    assert result.returncode == 2 and f"daemon.listen 127.0.0.1:{port}: cannot listen there" in result.stderr


@pytest.fixture(params=["postgresql", "mariadb"])
def read_only_target(request):
    """(target URL, read_only(on)) for a target the test may make refuse every write."""
    if request.param == "postgresql":
        import psycopg

        url = request.getfixturevalue("pg_url")
        database = url.rsplit("/", 1)[1]

        def read_only(on: bool) -> None:
            with psycopg.connect(url, autocommit=True, options="-c default_transaction_read_only=off") as conn:
                conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = {"on" if on else "off"}')
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                             "AND pid <> pg_backend_pid()", (database,))
        return url, read_only
    from test_mysql_source import mexec

    server = request.getfixturevalue("own_mysql_server")  # read_only is server-wide: a server of its own
    root = server.url()
    mexec(root, "CREATE DATABASE dst CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    for host in ("%", "localhost"):  # a user without SUPER, whom read_only stops
        mexec(root, f"CREATE USER cdc@'{host}' IDENTIFIED BY 'pw'")
        mexec(root, f"GRANT ALL ON dst.* TO cdc@'{host}'")
    return f"mysql://cdc:pw@127.0.0.1:{server.port}/dst", \
        lambda on: mexec(root, f"SET GLOBAL read_only = {'ON' if on else 'OFF'}")


def test_a_target_that_refuses_writes_is_a_failure_not_a_standby(ws, read_only_target, services):
    """A read-only target: the run cannot even release its claim there. The pair must show failed (503, one
    `failed` alert), never `standby` waiting for itself (200, a false `recovered`); once writable, it recovers."""
    from conftest import LEDGER_SCHEMA

    target, read_only = read_only_target
    hook = _Webhook()
    ws.sql(ws.source, LEDGER_SCHEMA)
    ws.config.write_text(f"connections:\n  src: sqlite:///source.db\n  dst: {target}\npairs:\n  p:\n    source: src\n"
                         "    target: dst\n    capture: trigger\n    tables: [entries, parties]\n    poll_interval: 0.1\n"
                         f"    claim_timeout: 3\ndaemon:\n  max_backoff: 1\nalerts:\n  - url: {hook.url}\n",
                         encoding="utf-8")
    cdc_ok(ws, "init")
    cdc_ok(ws, "install")
    service = Service(ws)
    services.append(service)
    wait_for(lambda: service.up() and service.health()[1]["pairs"][0]["state"] == "idle", what="start-up")
    read_only(True)
    changes = workload.run(ws.source, 30, seed=5)
    wait_for(lambda: service.health()[0] == 503, 30, "the failure to show")
    # The sessions the switch to read-only ends are a passing fault: a retry that then reconnects and
    # only reads may say `recovered` before the first write fails (failed, recovered, failed). From
    # here on the pair must stay failed: a claim left behind would expire within the claim timeout.
    failing = len(hook.events())
    seen = set()
    end = time.monotonic() + 8  # past the claim timeout, when a left claim would expire
    while time.monotonic() < end:
        code, body = service.health()
        seen.add((code, body["pairs"][0]["state"]))
        time.sleep(0.2)
    assert all(code == 503 and state in ("failed", "retrying") for code, state in seen), seen
    events = hook.events()
    assert events and events[-1] == "failed" and "recovered" not in events[failing:], events
    read_only(False)
    wait_for(lambda: service.health()[0] == 200, 60, "healthy once writable")
    from test_daemon_faults import query, table_rows

    wait_for(lambda: table_rows(str(ws.source), "entries", "id") == table_rows(target, "entries", "id"), 60, "catch-up")
    assert query(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'")[0][0] == changes
    assert hook.events()[len(events):].count("recovered") == 1, hook.events()
    assert service.stop() == 0
    hook.server.shutdown()
