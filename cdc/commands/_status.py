"""`cdc status`: per pair, whether it runs, its phase per table, backlog, lag and health."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .. import registry, state
from ..apply._target_rows import hashed_whole
from ..changes import dumps
from ..config import Pair, load_config
from ..errors import CdcError, SourceError, TargetError, first_line
from ..mapping import TableMapping, identity_change
from ..pipeline import OLD_ROWS, capture_gap, missing_targets, open_pair, open_target, verify_checkpoint


def status(config_path: str, pair: str | None = None) -> list[dict]:
    """Per pair: whether it runs (where) or failed (why), phase, checkpoint, changes pending, lag in
    seconds, changes applied, last applied time, open dead letters (parked and held) and open
    conflicts, the source's warnings (rows capture cannot vouch for), and ``healthy``: False when the
    pair failed, has open dead letters or conflicts, its source cannot be read, or a warning says
    changes may be missing (level fail)."""
    config = load_config(config_path)
    rows = [_pair_status(p) for p in config.select(pair)]
    if config.daemon.state:
        _daemons(config.daemon.state, rows)
    return rows


def _daemons(url: str, rows: list[dict]) -> None:
    """Which of the daemons sharing the state database at ``url`` runs each pair (``daemon``)."""
    from ..daemon import list_daemons

    try:
        daemons = [d for d in list_daemons(url) if d["seconds_since_heartbeat"] <= 60]
    except sa.exc.SQLAlchemyError as exc:
        for row in rows:
            row["daemon"] = f"state database cannot be read: {first_line(getattr(exc, 'orig', None) or exc)}"
        return
    for row in rows:  # the daemon whose process holds the pair's claim (or that says it runs the pair)
        row["daemon"] = next((d["id"] for d in daemons if (d["host"], d["pid"]) == (row.get("holder_host"),
                                                                                   row.get("holder_pid"))),
                             next((d["id"] for d in daemons if row["pair"] in (d["pairs"] or "").split(",")), None))


def _pair_status(p: Pair) -> dict:
    row: dict[str, Any] = {"pair": p.name, "source": p.source.masked, "target": p.target.masked,
                           "capture": p.capture, "phase": "not started", "state": "not running", "holder": None,
                           "error": None, "checkpoint": None, "checkpoint_text": None, "pending": None,
                           "lag_seconds": None, "changes_applied": 0, "last_applied_at": None, "dead_letters": 0,
                           "conflicts": 0, "tables": {}, "warnings": []}
    checkpoint = _target_status(p, row)
    if checkpoint is not None:
        try:
            source, target, mappings = open_pair(p)
            try:
                row["checkpoint_text"] = source.format_position(checkpoint.position)
                _mark_remapped(row["tables"], checkpoint, mappings)
                gap = _capture_gap(p, source, row["tables"])
                problem = missing_targets(p.name, target, mappings) or _checkpoint_error(p, source, checkpoint) or gap
                if problem:  # `cdc run` would stop on it: no backlog to count from there
                    row["error"] = problem
                else:
                    row["pending"] = source.pending(checkpoint.position)
                row["warnings"] = [{"level": level, "text": text} for level, text in source.warnings()]
                row["warnings"] += [{"level": "warn", "text": _old_rows_text(p, mappings[t].target, t)}
                                    for t, phase in row["tables"].items() if phase.get("old_rows")]
                row["warnings"] += _unhashed(p, target, mappings, row["tables"])
            finally:
                source.close()
                target.close()
        except (CdcError, sa.exc.SQLAlchemyError) as exc:
            row["error"] = row["error"] or f"source cannot be read: {first_line(exc)}"
        if checkpoint.source_committed_at is not None:
            # Nothing pending (a count, or a backlog description such as "0 bytes of WAL behind"):
            # the time since the last change is not lag.
            caught_up = row["pending"] == 0 or str(row["pending"]).startswith("0 ")
            lag = 0.0 if caught_up else (state._store.now() - checkpoint.source_committed_at).total_seconds()
            row["lag_seconds"] = round(max(lag, 0.0), 3)
    row["healthy"] = (row["state"] not in ("failed", "retrying") and not row["dead_letters"] and not row["conflicts"]
                      and row["error"] is None
                      and all(w["level"] != "fail" for w in row["warnings"]))
    return row


def _target_status(p: Pair, row: dict) -> Any:
    """Fill ``row`` from the target's state tables; the checkpoint (None before the first commit)."""
    try:
        target = open_target(p.target)
    except TargetError as exc:
        row.update(phase="unknown", state="unknown", error=f"target cannot be read: {exc}", changes_applied=None,
                   dead_letters=None, conflicts=None)
        return None
    try:
        with target.reading() as conn:
            state.ensure_current(conn)
            checkpoint = state.read_checkpoint(conn, p.name)
            holder = state.read_holder(conn, p.name)
            clock = state._store.db_now(conn)
            row["dead_letters"], row["conflicts"] = state.open_counts(conn, p.name)
    except (CdcError, sa.exc.SQLAlchemyError) as exc:  # the pair's state is in there: not known (a run retries)
        row.update(phase="unknown", state="unknown", error=f"target cannot be read: {first_line(exc)}",
                   changes_applied=None, dead_letters=None, conflicts=None)
        return None
    finally:
        target.close()
    if checkpoint is not None:
        # "snapshot" is the first one; a table added later is copied while the others stream (see "tables").
        first_snapshot = checkpoint.snapshot is not None and not checkpoint.tables
        row.update(phase="snapshot" if first_snapshot else "streaming", checkpoint=checkpoint.position,
                   changes_applied=checkpoint.changes_applied, last_applied_at=checkpoint.updated_at.isoformat())
    row["tables"] = _table_phases(checkpoint, list(p.mapping.tables))
    if holder is not None:
        if holder.alive(p.claim_timeout, clock):
            row.update(state=holder.state, holder=holder.describe(), holder_host=holder.host, holder_pid=holder.pid)
            if holder.state == "retrying":  # a fault it keeps retrying: running, but not healthy
                row["error"] = holder.error
        elif holder.state == "failed":
            row.update(state="failed", error=holder.error)
        elif holder.state in state.claims.STATES.values():  # killed: its row still says what it was doing
            what = {v: k for k, v in state.claims.STATES.items()}[holder.state]
            row.update(state="not running", holder=f"last {what} ended without a word ({holder.describe()})")
        else:
            row.update(state="stopped")
    return checkpoint


def _checkpoint_error(p: Pair, source: Any, checkpoint: state.Checkpoint) -> str | None:
    """Why `cdc run` would refuse the checkpoint (another capture installation, ahead of the source,
    behind what it released). A checkpoint that moved since it was read belongs to a running pair
    that committed and acknowledged meanwhile (the source then looks past the old checkpoint): that
    pair verified its checkpoint when it started, so nothing is reported."""
    try:
        verify_checkpoint(p.name, source, checkpoint)
    except SourceError as exc:
        return None if _moved_since(p, checkpoint) else str(exc)
    return None


def _moved_since(p: Pair, checkpoint: state.Checkpoint) -> bool:
    target = registry.adapter_for(p.target.url).target(p.target.url)
    try:
        now = target.checkpoint(p.name)
    finally:
        target.close()
    return now is not None and dumps(now.position) != dumps(checkpoint.position)


def _mark_remapped(phases: dict[str, dict], checkpoint: state.Checkpoint, mappings: dict[str, TableMapping]) -> None:
    """A table copied under another mapping identity than the mapping's now (its target, columns,
    transforms, filter or key changed) is ``not copied yet``, with the ``reason``: the next `cdc run`
    copies it again (see PairRunner._plan_tables)."""
    progress = (checkpoint.snapshot or {}).get("tables", {})
    for table, mapping in mappings.items():
        if table in checkpoint.tables or table in progress:
            was = checkpoint.tables[table] if table in checkpoint.tables else progress[table].get("mapping")
            why = identity_change(was, mapping.identity())
            if why:
                phases[table] = {"phase": "not copied yet", "reason": why}


def _capture_gap(p: Pair, source: Any, phases: dict[str, dict]) -> str | None:
    """Why changes of one of the pair's tables would be lost, or a table cannot be copied: capture
    does not cover it (see pipeline.capture_gap). A table to copy that capture does not cover gets
    that as (part of) its ``reason``."""
    missing = source.uncaptured(list(phases))
    streamed = [t for t in missing if phases[t]["phase"] == "streaming"]
    for table in missing:
        if phases[table]["phase"] != "streaming":
            why = [phases[table].get("reason"), "capture does not cover it yet: run `cdc install CONFIG` first"]
            phases[table] = {"phase": "not copied yet", "reason": "; ".join(w for w in why if w)}
    return capture_gap(p, missing, streamed)


def _old_rows_text(p: Pair, target: str, table: str) -> str:
    return (f"{table}: target table {target} had rows before its copy, which updates and adds rows but removes "
            f"none: rows the source deleted meanwhile may still be there. Check with `cdc reconcile CONFIG --pair "
            f"{p.name} --table {table}`; `--repair` removes them (and this warning)")


def _unhashed(p: Pair, target: Any, mappings: dict[str, TableMapping], tables: dict[str, dict]) -> list[dict]:
    """A warning per streamed table whose conflicts are found by row hash but whose copy stored none
    (copied with detection off, under REPLICA IDENTITY FULL, or by an earlier version): an edit of a
    row the pair has not written since is not found."""
    hashed = [t for t, phase in tables.items() if phase["phase"] == "streaming" and mappings[t].spec.row_hashes]
    if not hashed:
        return []
    with target.reading() as conn:
        whole = hashed_whole(conn, p.name, [mappings[t].target for t in hashed])
    return [{"level": "warn", "text": f"table {t}: conflicts are found by row hash, but its copy stored none (copied "
             "with detection off, under REPLICA IDENTITY FULL or by an earlier version): a person's edit of a row "
             f"the pair has not written since is overwritten unaudited; copy it again: `cdc run --resnapshot "
             f"CONFIG`"} for t in hashed if mappings[t].target not in whole]


def _table_phases(checkpoint: state.Checkpoint | None, tables: list[str]) -> dict[str, dict]:
    """Per source table of the pair's mapping (tables removed from it are not listed): its phase,
    ``streaming``, ``snapshotting`` (with ``rows_copied`` so far, None when not recorded),
    ``copied`` (its first-snapshot copy is done; it streams once every table is) or ``not copied
    yet`` (the next `cdc run` copies it; with a ``reason`` when its mapping changed since its copy,
    set by _mark_remapped)."""
    streamed = set(checkpoint.tables) if checkpoint is not None else set()
    progress = ((checkpoint.snapshot or {}) if checkpoint is not None else {}).get("tables", {})
    phases = {}
    for table in tables:
        if table in streamed:
            phases[table] = {"phase": "streaming"}
            if (checkpoint.tables[table] or {}).get(OLD_ROWS):
                phases[table]["old_rows"] = True
        elif table in progress:
            phases[table] = {"phase": "copied" if progress[table]["done"] else "snapshotting",
                             "rows_copied": progress[table].get("rows")}
        else:
            phases[table] = {"phase": "not copied yet"}
    return phases
