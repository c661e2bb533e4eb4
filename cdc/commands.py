"""The Python API behind every CLI command: one plain function per command."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from . import registry, schema, state
from .config import Pair, load_config
from .errors import CdcError, ConfigError, StateError
from .pipeline import PairRunner, RunResult, open_pair, open_source

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
    """Validate the config, connect to every database and check every mapped table; change nothing."""
    config = load_config(config_path)
    report = Report()
    for p in config.select(pair):
        source, target, mappings = open_pair(p)
        try:
            report.add(f"pair {p.name}: source {p.source.masked} ({p.capture} capture), target {p.target.masked}")
            for name, mapping in mappings.items():
                exists = target.exists(mapping.target)
                report.add(f"  {name} -> {mapping.target} key ({', '.join(mapping.source_key)})"
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


def doctor(config_path: str, pair: str | None = None) -> tuple[Report, bool]:
    """Check each source's settings for its capture mode; returns the report and whether all passed."""
    config = load_config(config_path)
    report, healthy = Report(), True
    for p in config.select(pair):
        source, _ = open_source(p)
        target = registry.adapter_for(p.target.url).target(p.target.url)
        try:
            report.add(f"pair {p.name}: {p.capture} capture on {p.source.masked}, target {p.target.masked}")
            findings = source.diagnose() + (target.diagnose() if hasattr(target, "diagnose") else [])
            for level, text in findings:
                healthy = healthy and level != "fail"
                report.add(f"  [{level.upper():>4}] {text}")
        finally:
            source.close()
            target.close()
    return report, healthy


def init(config_path: str, pair: str | None = None) -> Report:
    """Create or upgrade the state tables in each target and create missing target tables."""
    config = load_config(config_path)
    report = Report()
    upgraded: set[str] = set()
    for p in config.select(pair):
        source, target, mappings = open_pair(p)
        try:
            if p.target.url not in upgraded:
                before, after = target.init_state()
                upgraded.add(p.target.url)
                verb = "already at" if before == after else ("created at" if before is None else f"upgraded {before} ->")
                report.add(f"{p.target.masked}: state tables {verb} version {after}")
            for name, mapping in mappings.items():
                if target.exists(mapping.target):
                    report.add(f"  {mapping.target}: exists, left as it is")
                    continue
                columns = schema.target_columns(mapping, source.describe(name).columns)
                target.create_table(mapping.target, columns, mapping.target_key, source.engine.dialect.name)
                report.add(f"  {mapping.target}: created ({len(columns)} columns, key {', '.join(mapping.target_key)})")
        finally:
            source.close()
            target.close()
    return report


def install(config_path: str, pair: str | None = None) -> Report:
    """Install capture (changelog + triggers, slot, ...) in each pair's source; idempotent."""
    return _each_source(config_path, pair, "installed", lambda source: source.prepare())


def uninstall(config_path: str, pair: str | None = None) -> Report:
    """Remove what `install` created for each pair, and nothing else."""
    return _each_source(config_path, pair, "removed", lambda source: source.unprepare())


def _each_source(config_path: str, pair: str | None, verb: str, action) -> Report:
    config = load_config(config_path)
    report = Report()
    for p in config.select(pair):
        source, _ = open_source(p)
        try:
            done = action(source)
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
        stop: threading.Event | None = None, resnapshot: bool = False) -> list[RunResult]:
    """Run the pairs: snapshot if needed, then stream. ``once``: drain what is pending and return.

    ``resnapshot`` forgets each pair's checkpoint first, so every table is copied again from the
    source's current position (after a lost slot or purged log). Rows deleted at the source while
    the log was lost stay in the target until reconciliation removes them.
    Without ``once`` each pair runs in its own thread until ``stop`` is set (SIGTERM/SIGINT
    set it when called from the main thread); the current batch always finishes first.
    """
    config = load_config(config_path)
    stop = stop or threading.Event()
    _tune_gc()
    runners = [PairRunner(p, progress=progress, stop=stop, max_attempts=10 if once else None)
               for p in config.select(pair)]
    try:
        if resnapshot:
            for r in runners:
                if r.target.forget_checkpoint(r.pair.name):
                    logger.warning("pair %s: checkpoint dropped; copying every table again", r.pair.name)
        if once:
            return [r.run(once=True) for r in runners]
        return _run_forever(runners, stop)
    finally:
        for r in runners:
            r.close()


def _run_forever(runners: list[PairRunner], stop: threading.Event) -> list[RunResult]:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    results: dict[str, Any] = {}

    def work(runner: PairRunner) -> None:
        try:
            results[runner.pair.name] = runner.run(once=False)
        except BaseException as exc:  # reported by the caller; the other pairs go on
            results[runner.pair.name] = exc
            logger.error("pair %s stopped: %s", runner.pair.name, exc)

    threads = [threading.Thread(target=work, args=(r,), name=f"pair-{r.pair.name}") for r in runners]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.5)
    failures = [r for r in results.values() if isinstance(r, BaseException)]
    if failures:
        raise failures[0] if isinstance(failures[0], CdcError) else CdcError(str(failures[0]))
    return list(results.values())


def status(config_path: str, pair: str | None = None) -> list[dict]:
    """Per pair: phase, checkpoint, changes pending, changes applied, last applied time, dead letters."""
    config = load_config(config_path)
    return [_pair_status(p) for p in config.select(pair)]


def _pair_status(p: Pair) -> dict:
    source, target, _ = open_pair(p)
    try:
        checkpoint = target.checkpoint(p.name)
        with target.engine.connect() as conn:
            parked = conn.execute(sa.select(sa.func.count()).select_from(state.dead_letters).where(
                state.dead_letters.c.pair == p.name, state.dead_letters.c.status == "parked")).scalar()
        phase = "not started" if checkpoint is None else ("snapshot" if checkpoint.snapshot else "streaming")
        position = None if checkpoint is None else checkpoint.position
        return {
            "pair": p.name, "source": p.source.masked, "target": p.target.masked, "capture": p.capture,
            "phase": phase, "checkpoint": position,
            "checkpoint_text": None if position is None else source.format_position(position),
            "pending": source.pending(position) if checkpoint is not None else None,
            "changes_applied": 0 if checkpoint is None else checkpoint.changes_applied,
            "last_applied_at": None if checkpoint is None else checkpoint.updated_at.isoformat(),
            "dead_letters": parked,
        }
    finally:
        source.close()
        target.close()


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
              progress=None) :
    """Compare source (as mapped) and target; with ``repair`` make them equal (``dry_run``: only
    plan it). The run is recorded in the target's cdc_reconcile_runs."""
    from . import reconcile as reconcile_module

    chosen = _one_pair(config_path, pair)
    report = reconcile_module.reconcile(chosen, table=table, where=where, limit=limit, settle=settle,
                                        progress=progress)
    if repair and not report.equal:
        plan = reconcile_module.repair_plan(chosen, report)
        report.repair = {"dry_run": dry_run, "upserts": sum(op.op == "upsert" for op in plan),
                         "deletes": sum(op.op == "delete" for op in plan),
                         "plan": [f"{op.op} {op.table} ({', '.join(map(str, op.key))})" for op in plan[:limit]]}
        if not dry_run:
            report.repair["applied"] = reconcile_module.apply_repair(chosen, plan)
    report.run_id = reconcile_module.record(chosen, report)
    return report


def audit(config_path: str, pair: str | None = None, **filters):
    """The audit trail of the config's pairs (or one), from each target they write to."""
    from . import audit as audit_module

    config = load_config(config_path)
    chosen = config.select(pair)
    by_target: dict[str, list[str]] = {}
    for p in chosen:
        by_target.setdefault(p.target.url, []).append(p.name)
    trails = []
    for url, names in by_target.items():
        target = registry.adapter_for(url).target(url)
        try:
            trails.append(audit_module.trail(target.engine, pairs=names, **filters))
        finally:
            target.close()
    return audit_module.merged(trails)
