"""The Python API behind every CLI command: one plain function per command."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from . import registry, schema, state
from .changes import dumps
from .config import Pair, load_config
from .errors import CdcError, ConfigError, RowError, SourceError, StateError, TargetError, first_line
from .mapping import TableMapping, identity_change
from .pipeline import (OLD_ROWS, PairRunner, RunResult, capture_gap, missing_targets, open_pair, open_source,
                       open_target, verify_checkpoint)

#: Allocations between two young-generation garbage collections while pairs run (CPython: 700).
GC_THRESHOLD = 50_000

logger = logging.getLogger(__name__)


@dataclass
class Report:
    """Lines of what a command found or did, per pair."""

    lines: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.lines.append(text)


def check(config_path: str, pair: str | None = None) -> Report:
    """Validate the config, connect to every database and check every mapped table; change nothing.

    Each mapping is checked against the source and (existing) target tables' columns and types.
    A database that connecting would create (a SQLite file) is not opened when it does not exist:
    `check` creates no file.
    """
    config = load_config(config_path)
    report = Report()
    for p in config.select(pair):
        report.add(f"pair {p.name}: source {p.source.masked} ({p.capture} capture), target {p.target.masked}")
        if _would_create(p.target.url):
            _check_without_target(p, report)
            continue
        source, target, mappings = open_pair(p)
        try:
            for name, mapping in mappings.items():
                exists = target.exists(mapping.target)
                report.add(f"  {_table_line(name, mapping)}"
                           f"{'' if exists else '  [target table missing: cdc init creates it]'}")
            with target.engine.connect() as conn:
                try:
                    state.ensure_current(conn)
                    report.add("  state tables: current")
                except StateError as exc:
                    report.add(f"  state tables: {exc}")
        finally:
            source.close()
            target.close()
    return report


def _would_create(url: str) -> bool:
    """Whether connecting to ``url`` would create a database that does not exist yet."""
    adapter = registry.adapter_for(url)
    return adapter.creates_database_on_connect and not adapter.database_exists(url)


def _check_without_target(p: Pair, report: Report) -> None:
    source, mappings = open_source(p)
    try:
        for name, mapping in mappings.items():
            report.add(f"  {_table_line(name, mapping)}  [target table missing: cdc init creates it]")
        report.add("  target database: does not exist yet: `cdc init CONFIG` creates it")
    finally:
        source.close()


def _table_line(name: str, mapping: TableMapping) -> str:
    shared = mapping.key_constants
    marks = f", shared ({', '.join(f'{c} = {v!r}' for c, v in shared.items())})" if shared else ""
    return f"{name} -> {mapping.target} key ({', '.join(mapping.source_key)}){marks}"


def doctor(config_path: str, pair: str | None = None) -> tuple[Report, bool]:
    """Check each source's settings for its capture mode; returns the report and whether all passed."""
    config = load_config(config_path)
    report, healthy = Report(), True
    for p in config.select(pair):
        source, _ = open_source(p)
        report.add(f"pair {p.name}: {p.capture} capture on {p.source.masked}, target {p.target.masked}")
        try:
            target = open_target(p.target)
        except TargetError as exc:  # the source's checks still run: they tell what else to fix
            target, findings = None, [("fail", str(exc))]
        else:
            findings = target.diagnose() if hasattr(target, "diagnose") else []
        try:
            for level, text in source.diagnose() + findings:
                healthy = healthy and level != "fail"
                report.add(f"  [{level.upper():>4}] {text}")
        finally:
            source.close()
            if target is not None:
                target.close()
    return report, healthy


def init(config_path: str, pair: str | None = None) -> Report:
    """Create or upgrade the state tables in each target and create missing target tables.

    All or nothing for the tables: every missing table of every selected pair is defined and
    checked against its target first (a type the target cannot declare stops `init` before it
    creates anything), then each target's tables, for all its pairs, are created together (see
    SqlTarget.create_tables).
    """
    config = load_config(config_path)
    report = Report()
    plans = [(p, _init_plan(p)) for p in config.select(pair)]
    for url in dict.fromkeys(p.target.url for p, _ in plans):
        pairs = [(p, tables) for p, tables in plans if p.target.url == url]
        target = open_target(pairs[0][0].target, create=True)
        try:
            before, after = target.init_state()
            verb = "already at" if before == after else ("created at" if before is None else f"upgraded {before} ->")
            report.add(f"{pairs[0][0].target.masked}: state tables {verb} version {after}")
            wanted = {t.name: t for _, tables in pairs for t, _ in tables.values() if t is not None}
            made = [t for t in wanted.values() if not target.exists(t.name)]
            for p, _ in pairs:
                _copy_again(p, target, {t.name for t in made}, report)
            target.create_tables(made)
            for _, tables in pairs:
                for name, (table, key) in tables.items():
                    created = any(table is t for t in made)
                    report.add(f"  {name}: created ({len(table.columns)} columns, key {key})" if created
                               else f"  {name}: exists, left as it is")
        finally:
            target.close()
    return report


def _copy_again(p: Pair, target: Any, made: set[str], report: Report) -> None:
    """Tables the pair's checkpoint streams (or is copying) whose target table `init` is about to
    make anew (it was dropped): the checkpoint forgets them first, under the pair's claim, so the
    next `cdc run` copies their rows into the new table rather than stream into an empty one."""
    checkpoint = target.checkpoint(p.name)
    if checkpoint is None:
        return
    recorded = {t: (identity or {}).get("target") for t, identity in checkpoint.tables.items()}
    recorded.update({t: (progress.get("mapping") or {}).get("target")
                     for t, progress in (checkpoint.snapshot or {}).get("tables", {}).items()})
    # Only a table copied into this very target table: one whose target changed is copied again anyway.
    tables = sorted(t for t, spec in p.mapping.tables.items()
                    if spec.target in made and t in recorded and recorded[t] in (None, spec.target))
    if not tables:
        return
    from . import reconcile as reconcile_module

    with reconcile_module.claimed(p) as holding:
        holding.forget_tables(p.name, tables)
    report.add(f"  pair {p.name}: the next `cdc run` copies {', '.join(tables)} again (its target table is new)")


def _init_plan(p: Pair) -> dict[str, tuple[sa.Table | None, str]]:
    """Per target table of one pair: the table `init` must create (defined and checked against the
    target, not created), or None when it exists; and its key as the report names it."""
    source, target, mappings = open_pair(p, create=True)
    try:
        tables: dict[str, tuple[sa.Table | None, str]] = {}
        for name, mapping in mappings.items():
            key = ", ".join(mapping.target_key)
            if target.exists(mapping.target):
                tables[mapping.target] = (None, key)
                continue
            columns = schema.target_columns(mapping, source.describe(name).columns)
            tables[mapping.target] = (target.table_definition(mapping.target, columns, mapping.target_key,
                                                              source.engine.dialect.name), key)
        return tables
    finally:
        source.close()
        target.close()


def install(config_path: str, pair: str | None = None) -> Report:
    """Install capture (changelog + triggers, slot, ...) in each pair's source; idempotent.

    Capture of a table taken out of the pair is taken down, unless the pair's checkpoint still
    streams it (no `cdc run` has started since, or one started before is still running): its
    changes until then would be lost if the table came back before a run forgot it."""
    return _each_source(config_path, pair, "installed", lambda source, p: source.prepare(keep=_still_streamed(p)))


def _still_streamed(p: Pair) -> list[str]:
    """Tables no longer in the pair's mapping that its checkpoint streams or is copying (none when
    the target cannot be read or has no checkpoint: then nothing of it streams)."""
    try:
        target = open_target(p.target)
    except TargetError:
        return []
    try:
        checkpoint = target.checkpoint(p.name)
    except (CdcError, sa.exc.SQLAlchemyError):
        return []
    finally:
        target.close()
    if checkpoint is None:
        return []
    streamed = set(checkpoint.tables) | set((checkpoint.snapshot or {}).get("tables", {}))
    return sorted(streamed - set(p.mapping.tables))


def uninstall(config_path: str, pair: str | None = None) -> Report:
    """Remove what `install` created for each pair, and nothing else."""
    return _each_source(config_path, pair, "removed", lambda source, p: source.unprepare())


def _each_source(config_path: str, pair: str | None, verb: str, action) -> Report:
    config = load_config(config_path)
    report = Report()
    for p in config.select(pair):
        source, _ = open_source(p)
        try:
            done = action(source, p)
            report.add(f"pair {p.name} ({p.capture}, {p.source.masked}): "
                       f"{verb} {', '.join(done) if done else 'nothing to do'}")
        finally:
            source.close()
    return report


def _tune_gc() -> None:
    """Collect cycles less often while streaming.

    A batch keeps hundreds of thousands of change objects alive (none in reference cycles);
    CPython's default threshold (a collection every 700 allocations, each walking the young
    objects and, every so often, all of them) cost a quarter of the streaming apply's time in
    bench/postgres_bench.py. Memory stays bounded: the change model holds no cycles.
    """
    if gc.get_threshold()[0] < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, 20, 100)


def run(config_path: str, pair: str | None = None, *, once: bool = False, progress: bool = False,
        stop: threading.Event | None = None, resnapshot: bool = False, wait: bool = False) -> list[RunResult]:
    """Run the pairs: snapshot if needed, then stream. ``once``: drain what is pending and return.

    Each pair is claimed first (one process per pair; ``wait``: wait for the holder to stop
    instead of refusing). ``resnapshot`` forgets each pair's checkpoint first, so every table is
    copied again from the source's current position (after a lost slot or purged log). Rows deleted
    at the source while the log was lost stay in the target until reconciliation removes them.
    Without ``once`` each pair runs in its own thread until ``stop`` is set (SIGTERM/SIGINT set it
    when called from the main thread); the current batch always finishes first. A pair that fails
    records its error in the target (for `cdc status`) while the others go on; when every pair has
    stopped, the first failure is raised, so the process exits non-zero.
    """
    config = load_config(config_path)
    stop = stop or threading.Event()
    _tune_gc()
    chosen = config.select(pair)

    def one(p: Pair) -> RunResult:
        try:
            runner = PairRunner(p, progress=progress, stop=stop, max_attempts=10 if once else None)
        except BaseException as exc:
            _record_failure(p, exc)
            raise
        try:
            return runner.run(once=once, resnapshot=resnapshot, wait=wait)
        finally:
            runner.close()

    if not once and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    outcomes = _each_pair(chosen, one, concurrently=not once)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise failures[0] if isinstance(failures[0], CdcError) else CdcError(str(failures[0]))
    return outcomes


def _each_pair(pairs: list[Pair], work, *, concurrently: bool) -> list[Any]:
    """``work(pair)`` for every pair (one thread each when ``concurrently``); a pair's failure is
    logged and returned in its place, and the other pairs go on."""
    outcomes: dict[str, Any] = {}

    def guarded(p: Pair) -> None:
        try:
            outcomes[p.name] = work(p)
        except BaseException as exc:  # reported by the caller
            outcomes[p.name] = exc
            if len(pairs) > 1:
                logger.error("pair %s stopped: %s", p.name, exc.describe() if isinstance(exc, RowError) else exc)

    if not concurrently:
        for p in pairs:
            guarded(p)
    else:
        threads = [threading.Thread(target=guarded, args=(p,), name=f"pair-{p.name}") for p in pairs]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.5)
    return [outcomes[p.name] for p in pairs]


def _record_failure(p: Pair, exc: BaseException) -> None:
    """A pair that could not even start: say so in its target's state tables where they exist."""
    try:
        target = open_target(p.target)
        try:
            target.record_failure(p.name, first_line(exc))
        finally:
            target.close()
    except (CdcError, sa.exc.SQLAlchemyError) as error:
        logger.debug("pair %s: failure not recorded in the target: %s", p.name, error)


def status(config_path: str, pair: str | None = None) -> list[dict]:
    """Per pair: whether it runs (where) or failed (why), phase, checkpoint, changes pending, lag in
    seconds, changes applied, last applied time, parked dead letters, the source's warnings (rows
    capture cannot vouch for), and ``healthy``: False when the pair failed, has parked changes, its
    source cannot be read, or a warning says changes may be missing (level fail)."""
    config = load_config(config_path)
    return [_pair_status(p) for p in config.select(pair)]


def _pair_status(p: Pair) -> dict:
    row: dict[str, Any] = {"pair": p.name, "source": p.source.masked, "target": p.target.masked,
                           "capture": p.capture, "phase": "not started", "state": "not running", "holder": None,
                           "error": None, "checkpoint": None, "checkpoint_text": None, "pending": None,
                           "lag_seconds": None, "changes_applied": 0, "last_applied_at": None, "dead_letters": 0,
                           "tables": {}, "warnings": []}
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
    row["healthy"] = (row["state"] not in ("failed", "retrying") and not row["dead_letters"] and row["error"] is None
                      and all(w["level"] != "fail" for w in row["warnings"]))
    return row


def _target_status(p: Pair, row: dict) -> Any:
    """Fill ``row`` from the target's state tables; the checkpoint (None before the first commit)."""
    try:
        target = open_target(p.target)
    except TargetError as exc:
        row.update(state="failed", error=f"target cannot be read: {exc}")
        return None
    try:
        with target.engine.connect() as conn:
            state.ensure_current(conn)
            checkpoint = state.read_checkpoint(conn, p.name)
            holder = state.read_holder(conn, p.name)
            clock = state._store.db_now(conn)
            row["dead_letters"] = conn.execute(sa.select(sa.func.count()).select_from(state.dead_letters).where(
                state.dead_letters.c.pair == p.name, state.dead_letters.c.status == "parked")).scalar()
    except (CdcError, sa.exc.SQLAlchemyError) as exc:
        row.update(state="failed", error=f"target cannot be read: {first_line(exc)}")
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
            row.update(state=holder.state, holder=holder.describe())
            if holder.state == "retrying":  # a fault it keeps retrying: running, but not healthy
                row["error"] = holder.error
        elif holder.state == "failed":
            row.update(state="failed", error=holder.error)
        elif holder.state in ("running", "repairing"):  # killed: its row still says what it was doing
            what = "repair" if holder.state == "repairing" else "run"
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


def _one_pair(config_path: str, pair: str | None) -> Pair:
    config = load_config(config_path)
    if pair is None:
        if len(config.pairs) != 1:
            raise ConfigError(f"{config_path} has {len(config.pairs)} pairs ({', '.join(config.pairs)}): "
                             "name one with --pair")
        return next(iter(config.pairs.values()))
    return config.select(pair)[0]


def reconcile(config_path: str, pair: str | None = None, *, table: str | None = None, where: str | None = None,
              limit: int = 100, settle: float = 3.0, repair: bool = False, dry_run: bool = False,
              wait: bool = False, progress=None):
    """Compare source (as mapped) and target; with ``repair`` make them equal (``dry_run``: only
    plan it). The report carries its provenance; the run is recorded in the target's
    cdc_reconcile_runs.

    A repair (not a dry run) holds the pair's claim from before the comparison to its last write,
    as `cdc run` does: ClaimHeldError (exit code 3) while a run holds the pair, or with ``wait``
    it waits for the run to stop. So no run writes between the repair's reads and its writes.
    """
    from . import reconcile as reconcile_module

    chosen = _one_pair(config_path, pair)
    holding = reconcile_module.claimed(chosen, wait=wait) if repair and not dry_run else contextlib.nullcontext()
    with holding as claim_target:
        report = _compare(config_path, chosen, table=table, where=where, limit=limit, settle=settle,
                          repair=repair, dry_run=dry_run, progress=progress)
        if repair and not report.equal:
            plan = reconcile_module.repair_plan(chosen, report)
            report.repair = {"dry_run": dry_run, "upserts": sum(op.op == "upsert" for op in plan.ops),
                             "deletes": sum(op.op == "delete" for op in plan.ops), "kept": plan.kept[:limit],
                             "plan": plan.describe(limit)}
            if not dry_run:
                report.repair["applied"] = reconcile_module.apply_repair(chosen, plan, claim_target)
        if repair and not dry_run and where is None:  # whole tables compared and made equal
            claim_target.forget_old_rows(chosen.name, [t.source_table for t in report.tables], OLD_ROWS)
    report.run_id = reconcile_module.record(chosen, report)
    return report


def _compare(config_path: str, chosen: Pair, *, table: str | None, where: str | None, limit: int, settle: float,
             repair: bool, dry_run: bool, progress) -> Any:
    """The comparison of ``chosen`` with its provenance (the reconcile report, before any repair)."""
    from . import provenance
    from . import reconcile as reconcile_module

    report = reconcile_module.reconcile(chosen, table=table, where=where, limit=limit, settle=settle,
                                        progress=progress)
    report.provenance = provenance.collect(
        config_path, [chosen], as_of={chosen.name: {"checkpoint": report.checkpoint, "pending": report.pending}},
        filters={"table": table, "where": where, "limit": limit, "settle": settle, "repair": repair,
                 "dry_run": dry_run}, generated_at=report.started_at)
    return report


def audit(config_path: str, pair: str | None = None, **filters):
    """The audit trail of the config's pairs (or one), from each target they write to, with its
    provenance (as of each pair's checkpoint)."""
    from . import audit as audit_module
    from . import provenance

    config = load_config(config_path)
    chosen = config.select(pair)
    by_target: dict[str, list[Pair]] = {}
    for p in chosen:
        by_target.setdefault(p.target.url, []).append(p)
    trails, as_of = [], {}
    for pairs in by_target.values():
        names = [p.name for p in pairs]
        target = open_target(pairs[0].target)
        try:
            trails.append(audit_module.trail(target.engine, pairs=names, **filters))
            as_of.update(audit_module.checkpoints(target.engine, names))
        finally:
            target.close()
    found = audit_module.merged(trails)
    found.provenance = provenance.collect(config_path, chosen, as_of=as_of, filters=filters)
    return found
