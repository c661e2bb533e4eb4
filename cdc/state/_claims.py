"""The per-pair claim: one process runs a pair at a time, and a process that lost it can commit nothing.

A claim is the pair's row in ``cdc_leases`` in the target. Taking it increments the row's
``token`` (a fencing token, as Kafka fences zombie producers by epoch); every checkpoint write
checks, in the same transaction, that the row still carries the writer's token, and refreshes
its heartbeat. A holder is gone when its heartbeat is older than the claim timeout, or at once
when it ran on this host and its process no longer exists (a SIGKILLed run). A paused process
that wakes up after another took the pair finds another token there and stops: the transaction
that would have committed its stale batch rolls back.

`cdc reconcile --repair` takes the same claim (state ``repairing``): a repair never writes while a
run streams the pair, since a row it read before the run applied a newer change would overwrite
that change for good. Its writes are fenced like a run's, and its end leaves the pair's row as it
found it (a failed pair stays failed, with its error).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..changes import dumps, loads
from ..errors import CdcError, StateError
from ._store import aware, db_now, now, server_clock
from ._tables import checkpoints, leases


class ClaimHeldError(CdcError):
    """The pair is running in another process; exit code 3."""

    exit_code = 3


#: The lease columns a repair's claim puts back as it found them when it ends.
_RESTORED = ("owner", "host", "pid", "since", "heartbeat_at", "expires_at", "state", "error", "error_at")


class ClaimLostError(StateError):
    """Another process took the pair (or the checkpoint moved under us): nothing was committed."""


@dataclass
class Holder:
    """Who holds (or last held) a pair, as recorded in cdc_leases."""

    pair: str
    token: int
    host: str | None
    pid: int | None
    owner: str | None
    since: dt.datetime | None
    heartbeat_at: dt.datetime | None
    state: str
    error: str | None
    error_at: dt.datetime | None

    def alive(self, timeout: float | None, now: dt.datetime) -> bool:
        """Whether the holder may still be running: state running (retrying, repairing), heartbeat fresh
        by the database's clock (not judged when ``timeout`` is None), and, when it ran where this
        process can see its process table (same host, boot and PID namespace), its process still there."""
        if self.state not in RUNNING or self.heartbeat_at is None:
            return False
        if timeout is not None and now - self.heartbeat_at > dt.timedelta(seconds=timeout):
            return False
        if self.owner and self.owner.startswith(_place() + "|"):
            return self.owner == _process_identity(self.pid)  # a dead or reused pid is not the holder
        return True  # another machine, container or boot: only its heartbeat tells

    @property
    def doing(self) -> str:
        """What the holder does to the pair, in words: running it, or the one-off command that holds it."""
        return _DOING.get(self.state, "running")

    def describe(self) -> str:
        since = self.since.isoformat(timespec="seconds") if self.since else "?"
        beat = self.heartbeat_at.isoformat(timespec="seconds") if self.heartbeat_at else "?"
        return f"host {self.host}, pid {self.pid}, since {since}, last heartbeat {beat}"


@dataclass
class Claim:
    """A claim this process holds: the fencing token and the checkpoints it may write over.

    ``accepted`` holds the (position, snapshot) texts of the checkpoint as this process last
    read or wrote it; a write whose outcome is unknown (connection lost at COMMIT) adds its own,
    since it may have committed. A checkpoint found at anything else was moved by someone else.
    ``restore``: for a repair, the pair's lease row as the repair found it (empty when it had none),
    put back when the repair ends.
    """

    pair: str
    token: int
    accepted: list[tuple[str | None, str | None]] = field(default_factory=list)
    lost: str | None = None
    restore: dict[str, Any] | None = None


#: The lease state of a process that holds its pair, per purpose: a run (``retrying`` while it retries
#: a fault), and the one-off commands that write to the target under the pair's claim.
STATES = {"run": "running", "repair": "repairing", "retry": "retrying letters", "discard": "discarding",
          "resolve": "resolving"}
#: Lease states of a process that holds its pair.
RUNNING = ("retrying", *STATES.values())
#: What a holder in each one-off command's state does to the pair, in words.
_DOING = {"repairing": "being repaired", "retrying letters": "having dead letters retried",
          "discarding": "having dead letters discarded", "resolving": "having a conflict resolved"}


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read().strip()
    except OSError:
        return "?"


def _place() -> str:
    """host|boot|pid-namespace of this process: where a recorded pid means this process table.

    Two containers on one host (or two clones of one VM) may share a host name and reuse pids;
    a pid is only looked up where host, boot and PID namespace are all this process's own.
    """
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}|{_read('/proc/sys/kernel/random/boot_id')}|{namespace}"


def _process_identity(pid: int | None) -> str:
    """place|pid|start-time of a process of this process table ('' when it does not exist)."""
    if pid is None:
        return ""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
            return ""
        started = fields[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ""
        except PermissionError:
            pass
        started = "?"
    return f"{_place()}|{pid}|{started}"


def read_holder(conn: sa.Connection, pair: str) -> Holder | None:
    """The pair's row in cdc_leases, or None when no process ever claimed it."""
    row = conn.execute(sa.select(leases).where(leases.c.pair == pair)).first()
    if row is None:
        return None
    return Holder(pair, row.token, row.host, row.pid, row.owner, aware(row.since), aware(row.heartbeat_at),
                  row.state, row.error, aware(row.error_at))


#: The command of each purpose, as the user runs it (the --wait hint names it).
COMMANDS = {"run": "cdc run", "repair": "cdc reconcile --repair", "retry": "cdc dead-letters retry",
            "discard": "cdc dead-letters discard", "resolve": "cdc conflicts resolve"}


def held(pair: str, holder: Holder | None, purpose: str = "run", detail: str = "") -> ClaimHeldError:
    """The error for a claim refused because ``holder`` has the pair (``purpose``: see STATES)."""
    who = holder.describe() if holder is not None else "a process that claimed it at the same moment"
    doing = holder.doing if holder is not None else "running"
    if purpose == "run":
        outcome = "not started"
    elif purpose == "repair":
        outcome = "not repaired, since a repair must not write while the pair streams"
    else:
        outcome = "nothing changed, since it must not write while the pair streams"
    return ClaimHeldError(f"pair {pair} is {doing} elsewhere ({who}{detail}): {outcome}. Stop that process first, "
                          f"or wait for it with `{COMMANDS[purpose]} --wait`")


def held_by_another(holder: Holder | None) -> bool:
    """Whether ``holder`` may be another live process (its heartbeat not judged): not this process, not
    stopped or failed, and, where this process can see it, still there."""
    return holder is not None and holder.owner != _process_identity(os.getpid()) and holder.alive(None, now())


def take(conn: sa.Connection, pair: str, timeout: float, purpose: str = "run") -> Claim:
    """Claim the pair in the caller's transaction; ClaimHeldError when a live process holds it.

    ``purpose`` is ``run``, or one of the one-off commands that write under the claim (``repair``,
    ``retry``, ``discard``, ``resolve``: see STATES; the row is put back as found by ``release``). Compare-and-set on the token: of two processes claiming at once, one sees its
    UPDATE match no row and fails as if the other had held it all along.
    """
    holder = read_holder(conn, pair)
    moment = db_now(conn)
    # A run's claim of this very process is one it could not release (its target refused the write):
    # a new run takes it again, so that the pair fails on what the target refuses rather than wait for
    # itself. Two runs of one pair in one process (a daemon's reload past stop_timeout) are still fenced
    # by the token; a one-off command's claim is never taken so.
    mine = purpose == "run" and holder is not None and holder.state in ("running", "retrying") \
        and holder.owner == _process_identity(os.getpid())
    if holder is not None and holder.alive(timeout, moment) and not mine:
        raise held(pair, holder, purpose)
    values = {"owner": _process_identity(os.getpid()), "host": socket.gethostname(), "pid": os.getpid(),
              "since": moment, "heartbeat_at": moment, "expires_at": moment + dt.timedelta(seconds=timeout),
              "state": STATES[purpose], "error": None, "error_at": None}
    restore = None
    if holder is None:
        conn.execute(leases.insert().values(pair=pair, token=1, **values))
        token = 1
        restore = {}
    else:
        if purpose != "run":
            row = conn.execute(sa.select(*[leases.c[c] for c in _RESTORED]).where(leases.c.pair == pair)).one()
            restore = dict(row._mapping)
        token = holder.token + 1
        done = conn.execute(leases.update().where(leases.c.pair == pair, leases.c.token == holder.token)
                            .values(token=token, **values))
        if done.rowcount != 1:
            raise held(pair, None, purpose)
    row = conn.execute(sa.select(checkpoints.c.position, checkpoints.c.snapshot)
                       .where(checkpoints.c.pair == pair)).first()
    return Claim(pair, token, [(row.position, row.snapshot) if row is not None else (None, None)],
                 restore=restore if purpose != "run" else None)


def fence(conn: sa.Connection, claim: Claim, timeout: float | None = None) -> None:
    """In the caller's transaction: ClaimLostError unless the pair still carries this claim's token.

    The UPDATE also refreshes the heartbeat and holds the row's lock until the caller commits, so a
    process taking the pair over waits for this transaction and then fences it out for good.
    """
    values: dict[str, Any] = {"heartbeat_at": _clock(conn)}
    if timeout is not None:
        values["expires_at"] = db_now(conn) + dt.timedelta(seconds=timeout)
    done = conn.execute(leases.update().where(leases.c.pair == claim.pair, leases.c.token == claim.token)
                        .values(**values))
    if done.rowcount != 1:
        holder = read_holder(conn, claim.pair)
        who = holder.describe() if holder is not None else "nobody (the claim row is gone)"
        claim.lost = f"pair {claim.pair}: another process took the pair ({who}); this one committed nothing more"
        raise ClaimLostError(claim.lost)


def write_checkpoint(conn: sa.Connection, claim: Claim, position: Any, snapshot: dict | None, applied: int, *,
                     committed_at: dt.datetime | None = None,
                     tables: dict[str, dict | None] | None = None) -> tuple[str, str | None]:
    """Fence, then move the checkpoint, but only from a checkpoint this claim read or wrote.

    Must run in the same transaction as the rows it covers. ``committed_at``: the source commit
    time of the last change applied (kept when None). ``tables``: the source tables the pair
    streams, their copy complete, each with the mapping identity it was copied under (kept when None).

    Returns the (position, snapshot) texts written: the caller records them with
    ``committed`` once the transaction commits (or ``uncertain`` when the commit's outcome is unknown).
    """
    fence(conn, claim)
    texts = (dumps(position), None if snapshot is None else dumps(snapshot))
    values: dict[str, Any] = {"position": texts[0], "snapshot": texts[1], "updated_at": _clock(conn),
                              "fence": claim.token}
    if committed_at is not None:
        values["source_committed_at"] = committed_at
    if tables is not None:
        values["tables"] = dumps(dict(sorted(tables.items())))
    existing = [a for a in claim.accepted if a != (None, None)]
    if existing:
        matches = sa.or_(*[sa.and_(checkpoints.c.position == p,
                                   checkpoints.c.snapshot.is_(None) if s is None else checkpoints.c.snapshot == s)
                           for p, s in existing])
        done = conn.execute(checkpoints.update().where(checkpoints.c.pair == claim.pair, matches)
                            .values(changes_applied=checkpoints.c.changes_applied + applied, **values))
        if done.rowcount == 1:
            return texts
    if (None, None) in claim.accepted:
        exists = conn.execute(sa.select(sa.func.count()).select_from(checkpoints)
                              .where(checkpoints.c.pair == claim.pair)).scalar()
        if not exists:
            conn.execute(checkpoints.insert().values(pair=claim.pair, changes_applied=applied, **values))
            return texts
    found = conn.execute(sa.select(checkpoints.c.position, checkpoints.c.snapshot)
                         .where(checkpoints.c.pair == claim.pair)).first()
    claim.lost = (f"pair {claim.pair}: the checkpoint moved under this process (it is at "
                  f"{found.position if found else 'nothing'}, not where this run left it): another process or a "
                  "hand edit changed it; nothing of this batch was committed")
    raise ClaimLostError(claim.lost)


def set_state(conn: sa.Connection, claim: Claim, retrying: str | None) -> None:
    """Say in the claim's row whether the run is retrying a fault (``retrying``: the error, shown by
    `cdc status` as unhealthy) or running normally again (None)."""
    values: dict[str, Any] = {"state": "retrying" if retrying else "running", "error": retrying and retrying[:4000],
                              "error_at": db_now(conn) if retrying else None}
    conn.execute(leases.update().where(leases.c.pair == claim.pair, leases.c.token == claim.token).values(**values))


def _clock(conn: sa.Connection) -> Any:
    """The database's current time as an SQL expression (no extra round trip), or this machine's
    for a database without a server (SQLite)."""
    clock = server_clock(conn)
    return now() if clock is None else clock


def committed(claim: Claim, texts: tuple[str, str | None]) -> None:
    """The transaction that wrote ``texts`` committed: only that checkpoint may be written over now."""
    claim.accepted = [texts]


def uncertain(claim: Claim, texts: tuple[str, str | None]) -> None:
    """The transaction that wrote ``texts`` may or may not have committed: accept both."""
    if texts not in claim.accepted:
        claim.accepted.append(texts)


def forget_checkpoint(conn: sa.Connection, claim: Claim) -> bool:
    """Delete the pair's checkpoint so the next run snapshots again (the audit log stays); True if
    there was one. The next write creates it afresh."""
    fence(conn, claim)
    gone = conn.execute(checkpoints.delete().where(checkpoints.c.pair == claim.pair)).rowcount > 0
    claim.accepted = [(None, None)]
    return gone


def forget_old_rows(conn: sa.Connection, claim: Claim, tables: list[str], mark: str) -> None:
    """Take ``mark`` off these tables' entries in the checkpoint's streamed tables (a repair made
    them equal to the source); fenced, so only the claim's holder changes the checkpoint."""
    fence(conn, claim)
    text = conn.execute(sa.select(checkpoints.c.tables).where(checkpoints.c.pair == claim.pair)).scalar()
    if not text:
        return
    streamed = loads(text)
    if not isinstance(streamed, dict) or not any((streamed.get(t) or {}).get(mark) for t in tables):
        return
    for table in tables:
        if streamed.get(table):
            streamed[table].pop(mark, None)
    conn.execute(checkpoints.update().where(checkpoints.c.pair == claim.pair).values(tables=dumps(streamed)))


def forget_tables(conn: sa.Connection, claim: Claim, tables: list[str]) -> None:
    """Take these source tables out of the checkpoint's streamed tables and snapshot progress, so the
    next run copies them as added tables (their target table was made anew); fenced."""
    fence(conn, claim)
    row = conn.execute(sa.select(checkpoints.c.tables, checkpoints.c.snapshot, checkpoints.c.position)
                       .where(checkpoints.c.pair == claim.pair)).first()
    if row is None:
        return
    values: dict[str, Any] = {}
    streamed = loads(row.tables) if row.tables else None
    if isinstance(streamed, dict) and any(t in streamed for t in tables):
        values["tables"] = dumps({t: v for t, v in streamed.items() if t not in tables})
    snapshot = loads(row.snapshot) if row.snapshot else None
    if snapshot and any(t in snapshot.get("tables", {}) for t in tables):
        left = {t: v for t, v in snapshot["tables"].items() if t not in tables}
        values["snapshot"] = dumps({**snapshot, "tables": left}) if left else None
    if values:
        conn.execute(checkpoints.update().where(checkpoints.c.pair == claim.pair).values(**values))
        claim.accepted = [(row.position, values.get("snapshot", row.snapshot))]


def heartbeat(conn: sa.Connection, claim: Claim, timeout: float) -> bool:
    """Refresh the claim's heartbeat; False if another process holds the pair now."""
    moment = db_now(conn)
    done = conn.execute(leases.update().where(leases.c.pair == claim.pair, leases.c.token == claim.token)
                        .values(heartbeat_at=moment, expires_at=moment + dt.timedelta(seconds=timeout)))
    return done.rowcount == 1


def release(conn: sa.Connection, claim: Claim, error: str | None = None) -> None:
    """End the claim: state stopped, or failed with the error (kept until the next run starts).

    A repair's claim puts the row back as the repair found it instead: a repair neither starts nor
    stops the pair, so a pair that had failed still shows its error (the repair's own outcome is
    the reconcile command's)."""
    moment = db_now(conn)
    if claim.restore is not None:
        values: dict[str, Any] = dict(claim.restore) or {"state": "stopped", "heartbeat_at": moment}
    else:
        values = {"state": "failed" if error else "stopped", "heartbeat_at": moment}
        if error:
            values.update(error=error[:4000], error_at=moment)
    conn.execute(leases.update().where(leases.c.pair == claim.pair, leases.c.token == claim.token).values(**values))


def record_failure(conn: sa.Connection, pair: str, error: str) -> None:
    """A pair that failed before it could claim (bad mapping, source down): its row says so."""
    moment = db_now(conn)
    values = {"state": "failed", "error": error[:4000], "error_at": moment}
    holder = read_holder(conn, pair)
    if holder is None:
        conn.execute(leases.insert().values(pair=pair, token=0, owner="", expires_at=moment, **values))
    elif not holder.alive(None, moment) or holder.owner == _process_identity(os.getpid()):
        conn.execute(leases.update().where(leases.c.pair == pair, leases.c.token == holder.token).values(**values))
